"""Synthesis and training data as the papers describe them (textures, foregrounds, hold-out)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kdsearch.config import parse_assignments
from kdsearch.plan import plan
from kdsearch.batches import VALIDATION_SEED, make_validation_set
from kdsearch.errors import UserError
from kdsearch.synthesis import AnomalySynthesizer, SynthesisConfig, TextureBank
from kdsearch.synthesis.painted import paint_defects
from kdsearch.loop import fit_and_evaluate
from kdsearch.texture_source import textures_setting
from kdsearch.train import main
from kdsearch.settings import single_trial


def _dtd_tree(root: Path, seed: int = 0) -> Path:
    """A tiny tree in DTD's published layout: images/<class>/<class>_<n>.jpg plus labels/."""
    rng = np.random.default_rng(seed)
    for name in ("banded", "dotted", "zigzagged"):
        (root / "images" / name).mkdir(parents=True)
        for index in range(2):
            image = rng.integers(0, 256, (48 + 8 * index, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "images" / name / f"{name}_{index + 1:04d}.jpg"), image)
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\n")
    return root / "images"


# ---------------------------------------------------------------- DTD textures

def test_textures_option_reads_a_dtd_tree_into_the_draem_bank(tmp_path) -> None:
    images = _dtd_tree(tmp_path / "dtd")
    settings = textures_setting("dmdd", str(images))
    assert settings == {"texture_root": str(images.resolve())}
    spec = single_trial("dmdd", "smoke", settings).synthesis
    bank = AnomalySynthesizer(spec).textures((64, 64), "cpu")
    assert len(bank) == 6 and bank.size == (64, 64)
    direct = TextureBank.from_directory(images, 64)
    assert torch.equal(bank.textures, direct.textures)


def test_textures_option_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="mrkd makes no DRAEM anomalies.*adps, dmdd"):
        textures_setting("mrkd", str(tmp_path))
    with pytest.raises(UserError, match="no such folder"):
        textures_setting("adps", str(tmp_path / "missing"))


def test_trial_key_follows_the_textures_not_their_path(tmp_path) -> None:
    first = _dtd_tree(tmp_path / "a" / "dtd")
    copy = tmp_path / "b" / "images"
    shutil.copytree(first, copy)
    rows = [plan("adps", "main", profile="smoke", results_dir=tmp_path, textures=textures_setting("adps", str(p)))
            .trainings[0] for p in (first, copy)]
    keys = [row.trial_key for row in rows]
    assert keys[0] == keys[1]
    assert rows[0].trial.settings.source_of("texture_root") == "--textures"  # its own layer, not --set's
    cv2.imwrite(str(copy / "banded" / "banded_0001.jpg"), np.zeros((8, 8, 3), np.uint8))
    changed = plan("adps", "main", profile="smoke", results_dir=tmp_path,
                   textures=textures_setting("adps", str(copy))).trainings[0]
    assert changed.trial_key != keys[0] and changed.identity["texture_root"].startswith("textures:")


def test_paper_profile_without_textures_warns_once(tmp_path) -> None:
    job = plan("adps", "k", profile="paper", results_dir=tmp_path)
    assert sum("not comparable with the paper's" in w for w in job.warnings) == 1
    textures = _dtd_tree(tmp_path / "dtd")
    job = plan("adps", "k", profile="paper", results_dir=tmp_path, textures=textures_setting("adps", str(textures)))
    assert not any("not comparable" in w for w in job.warnings)
    assert not any("not comparable" in w for w in plan("adps", "k", profile="quick", results_dir=tmp_path).warnings)
    assert not any("not comparable" in w for w in plan("mrkd", "alpha", profile="paper", results_dir=tmp_path).warnings)
    proc = subprocess.run([sys.executable, "-m", "kdsearch.train", "--method", "adps", "--profile", "paper"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("not comparable with the paper's") == 1


# ---------------------------------------------------------------- DRAEM's rotation of normal images

def test_normal_rotation_is_a_synthesis_setting_each_paper_profile_sets(tmp_path) -> None:
    # ADPS follows DRAEM's train_DRAEM.py, whose loader rotates 30 % of the normal images;
    # DMDD excludes augmentation; every other profile and method leaves it at 0.
    assert single_trial("adps", "paper").synthesis.normal_rotation == 0.3
    assert single_trial("dmdd", "paper").synthesis.normal_rotation == 0.0
    assert single_trial("adps", "quick").synthesis.normal_rotation == 0.0
    assert single_trial("mrkd", "paper").synthesis.normal_rotation == 0.0
    settings = parse_assignments(["synthesis.normal_rotation=0.3"])
    rotated = single_trial("adps", "smoke", settings)
    assert rotated.synthesis.normal_rotation == 0.3 and rotated.identity["synthesis"]["normal_rotation"] == 0.3
    # The key holds the value, whether set or the method's own (0).
    keys = {value: plan("adps", "main", profile="smoke", results_dir=tmp_path,
                        extra={} if value is None else {"synthesis.normal_rotation": value}).trainings[0].trial_key
            for value in (None, 0.0, 0.3)}
    assert keys[None] == keys[0.0] != keys[0.3]
    assert single_trial("adps", "smoke").identity["synthesis"]["normal_rotation"] == 0.0
    with pytest.raises(UserError, match="normal_rotation must be in"):
        single_trial("adps", "smoke", {"synthesis.normal_rotation": 1.5})


# ---------------------------------------------------------------- foregrounds

def test_foreground_restriction_applies_to_objects_only() -> None:
    fas = SynthesisConfig(kind="draem", foreground="grabcut")
    assert fas.for_category("texture").foreground == "none"
    assert fas.for_category("object").foreground == "grabcut"
    assert fas.for_category(None) is fas
    nsa = SynthesisConfig(kind="nsa", foreground="threshold")
    assert nsa.for_category("texture").foreground == "none" and nsa.for_category("object") is nsa


def test_mrkd_paper_profile_pastes_nsa_in_the_foreground(tmp_path) -> None:
    paper = plan("mrkd", "main", profile="paper", results_dir=tmp_path).trainings[0]
    assert paper.trial.method_config.ilm_foreground == "threshold" and paper.trial.synthesis.foreground == "threshold"
    quick = plan("mrkd", "main", profile="quick", results_dir=tmp_path).trainings[0]
    assert quick.trial.method_config.ilm_foreground == "none"


# ---------------------------------------------------------------- training data

def test_paper_grid_trains_on_every_image_and_searches_hold_out(tmp_path) -> None:
    grid = plan("dskd", "structure", profile="paper", results_dir=tmp_path)
    assert {t.trial.train.val_fraction for t in grid.trainings} == {0.0}
    search = plan("dskd", "lr", profile="paper", results_dir=tmp_path)
    probe = search.studies[0].trial(search.space, search.axis, 1e-3)
    assert probe.trial.train.val_fraction == 0.1
    with pytest.raises(UserError, match="needs val_fraction > 0"):
        plan("dskd", "lr", profile="paper", results_dir=tmp_path, extra={"val_fraction": 0.0})


def test_val_fraction_zero_trains_on_all_images_without_a_validation_curve() -> None:
    every = {"max_train_images": None, "device": "cpu"}
    outcome = fit_and_evaluate(single_trial("rd4ad", "smoke", {**every, "val_fraction": 0.0}), progress=False)
    assert outcome.status == "ok" and "val_image_auroc" not in outcome.epoch_records[0]
    assert outcome.epoch_records[0]["images"] == 80  # every normal training image of the category
    held = fit_and_evaluate(single_trial("rd4ad", "smoke", every), progress=False)
    assert held.epoch_records[0]["images"] == 72 and "val_image_auroc" in held.epoch_records[0]


def test_train_cli_accepts_val_fraction_zero(capsys) -> None:
    assert main(["--method", "rd4ad", "--profile", "smoke", "--set", "val_fraction=0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "ok"


# ---------------------------------------------------------------- validation anomalies

@pytest.mark.parametrize("size", [64, 256])
def test_painted_defects_change_the_masked_pixels_only_and_repeat(size: int) -> None:
    images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    anomalous, masks = paint_defects(images, torch.Generator().manual_seed(3))
    inside = masks.bool().expand_as(images)
    assert masks.shape == (8, 1, size, size) and bool((masks.flatten(1).sum(1) > 0).all())
    assert torch.equal(anomalous[~inside], images[~inside])
    assert float((anomalous - images)[inside].abs().mean()) > 0.05  # a visible defect, not a relabelled patch
    again, again_masks = paint_defects(images, torch.Generator().manual_seed(3))
    assert torch.equal(anomalous, again) and torch.equal(masks, again_masks)


def test_validation_defects_share_no_kind_and_no_code_with_the_built_in_test_defects() -> None:
    # Validation selects models; drawn by the painters of the built-in dataset's test defects,
    # it would select on the test's own defect family.
    import ast
    import inspect

    import kdsearch.synthesis.painted as validation
    from kdsearch.data.synthetic_defects import PAINTERS as TEST_PAINTERS

    assert set(validation.VALIDATION_PAINTERS).isdisjoint(TEST_PAINTERS)
    assert set(validation.VALIDATION_PAINTERS.values()).isdisjoint(TEST_PAINTERS.values())
    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(validation)))
                if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("kdsearch.data")}, imported


@pytest.mark.parametrize("kind", ["smear", "stripe", "speckles", "worn"])
def test_each_validation_defect_is_visible_and_inside_its_mask(kind: str) -> None:
    from kdsearch.synthesis.painted import VALIDATION_PAINTERS

    image = np.random.default_rng(0).uniform(60, 200, (128, 128, 3)).astype(np.float32)
    painted, region = VALIDATION_PAINTERS[kind](image, np.random.default_rng(1))
    assert painted.shape == image.shape and region.shape == (128, 128) and 10 <= region.sum() < 0.5 * 128 * 128
    assert np.array_equal(painted[~region], image[~region])
    assert float(np.abs(painted - image)[region].mean()) > 10.0


def test_validation_anomalies_are_painted_defects_fixed_for_every_trial() -> None:
    normal = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    first, second = make_validation_set(normal, "cpu"), make_validation_set(normal, "cpu")
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert first.images.shape == (12, 3, 64, 64) and first.labels.tolist() == [0] * 6 + [1] * 6
    _, painted = paint_defects(normal.float() / 255.0, torch.Generator().manual_seed(VALIDATION_SEED))
    assert torch.equal(first.masks[6:], painted[:, 0] > 0.5) and not first.masks[:6].any()
    assert make_validation_set(normal[:0], "cpu") is None
