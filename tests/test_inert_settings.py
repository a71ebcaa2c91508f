"""A setting that changes nothing is refused; one that only some rows ignore is a warning."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from kdsearch.plan import plan
from kdsearch.errors import UserError
from kdsearch.methods import build_config, list_methods
from kdsearch.settings import settings_for
from kdsearch.trial import check_explicit_settings, resolve
from kdsearch.settings import single_trial
from kdsearch.spaces import list_papers, load_search_space


def test_inert_fields_name_real_fields_for_every_row_of_every_axis() -> None:
    for paper in list_papers():
        space = load_search_space(paper)
        fields = {f.name for f in dataclasses.fields(build_config(space.method))}
        for axis in space.axes.values():
            for label in axis.rows:
                config = build_config(space.method, axis.overrides(label))
                assert set(config.inert_fields()) <= fields, (paper, axis.name, label)


# The dataclasses' own defaults have no learning-rate milestones (the YAMLs set ADPS's), so
# lr_gamma is inert there.
@pytest.mark.parametrize("method, settings, inert", [
    ("mrkd", {"flm": False}, {"mask_ratio", "flm_at_test", "lr_gamma"}),
    ("mrkd", {"ilm": False}, {"alpha", "ilm_foreground", "lr_gamma"}),
    ("mrkd", {"alpha": 0.0}, {"ilm_foreground", "lr_gamma"}),
    # Without the MSN, msn_synthesis still decides whether FAS shapes the distillation.
    ("dmdd", {"msn": False}, {"pu", "mm", "msn_lr", "msn_prior", "msn_attention_reduction", "msn_spatial_kernel", "lr_gamma"}),
    ("dmdd", {"msn": False, "fas": False},
     {"pu", "mm", "msn_lr", "msn_prior", "msn_attention_reduction", "msn_spatial_kernel", "lr_gamma", "msn_synthesis"}),
    ("dmdd", {"msn": False, "msn_synthesis": "own"},
     {"pu", "mm", "msn_lr", "msn_prior", "msn_attention_reduction", "msn_spatial_kernel", "lr_gamma", "fas"}),
    ("dmdd", {"normality_branch": False}, {"normality_inner", "normality_outer", "gaussian_sigma", "lr_gamma"}),
    ("dmdd", {"lr_milestones": [0.5]}, {"gaussian_sigma"}),
    ("adps", {"fusion": "concat"}, {"mask_measure"}),
    ("adps", {"structure": "wo_s"}, {"mask_measure", "distill_loss", "patch_k", "asym_stage"}),
    ("adps", {"structure": "wo_t"}, {"mask_measure", "distill_loss", "pretrained"}),
    ("adps", {"patch_k": 1}, {"asym_stage"}),
    ("adps", {"lr_milestones": []}, {"lr_gamma"}),
    # λ rescales the l2 loss, which changes Adam's steps: not inert (tests/test_declared_fields.py).
    ("dskd", {}, {"lr_gamma"}),
    ("dskd", {"structure": "t_e"}, {"dfe", "dfe_blocks", "lr_gamma"}),
    ("rd4ad", {}, {"lr_gamma"}),
])
def test_each_method_names_what_its_switches_make_inert(method: str, settings: dict, inert: set) -> None:
    assert set(build_config(method, settings).inert_fields()) == inert


def test_every_method_names_only_its_own_fields_with_a_reason() -> None:
    for method in list_methods():
        config = build_config(method)
        names = {f.name for f in dataclasses.fields(config)}
        for name, reason in config.inert_fields().items():
            assert name in names, (method, name)
            # The reason names the setting that makes the field inert, as the error prints it.
            assert reason and reason.split()[0].rstrip(",") in names, (method, name, reason)


def test_a_setting_no_row_uses_is_an_error_naming_what_makes_it_inert() -> None:
    rows = [("a", resolve(settings_for("mrkd", user={"flm": False, "mask_ratio": 0.3})), {"flm", "mask_ratio"})]
    with pytest.raises(UserError, match=r"mask_ratio is set but nothing uses it: flm is false"):
        check_explicit_settings(rows)


@pytest.mark.parametrize("profile", [None, "smoke"])
def test_resolve_by_itself_refuses_a_setting_that_changes_nothing(profile: str | None) -> None:
    with pytest.raises(UserError, match=r"mask_ratio is set but nothing uses it: flm is false"):
        single_trial("mrkd", profile, {"mask_ratio": 0.3, "flm": False})
    with pytest.raises(UserError, match=r"synthesis.perlin_threshold is set but nothing uses it"):
        single_trial("rd4ad", profile, {"synthesis.perlin_threshold": 0.3})
    # Defaults and profile values are nobody's request: flm off leaves mask_ratio's default silent.
    assert single_trial("mrkd", profile, {"flm": False}).method_config.mask_ratio == 0.2


def test_resolve_reads_the_space_it_is_given_and_refuses_another_methods() -> None:
    from kdsearch.spaces import load_search_space

    mrkd = load_search_space("mrkd")
    assert single_trial("mrkd", "paper", {"category": "capsule", "pretrained": "none"}, space=mrkd).train.epochs == 200
    renamed = dataclasses.replace(mrkd, profiles={**mrkd.profiles, "paper": {**mrkd.profiles["paper"], "epochs": 7}})
    assert single_trial("mrkd", "paper", {"category": "capsule", "pretrained": "none"}, space=renamed).train.epochs == 7
    with pytest.raises(UserError, match=r"mrkd.yaml is for method 'mrkd', not 'rd4ad'"):
        single_trial("rd4ad", "smoke", {}, space=mrkd)


def test_nsa_overlap_share_without_a_foreground_is_refused_and_with_one_accepted() -> None:
    settings = {"synthesis.nsa_min_overlap_fraction": 0.5}
    with pytest.raises(UserError, match=r"nsa_min_overlap_fraction is set but nothing uses it: the foreground is "
                                        r"'none'"):
        single_trial("mrkd", "quick", settings)
    threshold = single_trial("mrkd", "quick", {**settings, "ilm_foreground": "threshold"})
    assert check_explicit_settings([("a", threshold, set(settings))]) == []


def test_a_setting_some_rows_ignore_is_one_warning_naming_them() -> None:
    rows = [("Baseline", resolve(settings_for("mrkd", user={"ilm": False, "flm": False, "mask_ratio": 0.3})),
             {"ilm", "flm", "mask_ratio"}),
            ("ILM", resolve(settings_for("mrkd", user={"flm": False, "mask_ratio": 0.3})), {"flm", "mask_ratio"}),
            ("FLM", single_trial("mrkd", None, {"ilm": False, "mask_ratio": 0.3}), {"ilm", "mask_ratio"})]
    notes = check_explicit_settings(rows)
    assert notes == ["mask_ratio is ignored by rows Baseline, ILM: flm is false (no feature masking)"]


def test_an_inert_default_stays_silent() -> None:
    # mask_ratio keeps its default while flm is off: nobody asked for it.
    assert check_explicit_settings([("Baseline", single_trial("mrkd", None, {"flm": False}), {"flm"})]) == []


def test_plan_refuses_a_set_value_the_axis_never_uses_and_warns_for_some_rows(tmp_path) -> None:
    with pytest.raises(UserError, match="mask_ratio is set but nothing uses it"):
        plan("mrkd", "alpha", profile="smoke", extra={"flm": False, "mask_ratio": 0.3}, results_dir=tmp_path)
    job = plan("mrkd", "modules", profile="smoke", extra={"mask_ratio": 0.3}, results_dir=tmp_path)
    assert list(job.warnings) == ["mask_ratio is ignored by rows Baseline, ILM: flm is false (no feature masking)"]
    assert plan("mrkd", "modules", profile="smoke", results_dir=tmp_path).warnings == ()


def test_plan_refuses_a_search_over_an_inert_field(tmp_path) -> None:
    with pytest.raises(UserError, match="mask_ratio is set but nothing uses it: flm is false"):
        plan("mrkd", "mask_ratio_search", profile="smoke", extra={"flm": False}, results_dir=tmp_path)


def test_papers_axes_plan_without_errors_and_warn_only_where_expected(tmp_path) -> None:
    warned = {}
    for paper in list_papers():
        for name in load_search_space(paper).axes:
            job = plan(paper, name, profile="smoke", results_dir=tmp_path)
            if job.warnings:
                warned[(paper, name)] = list(job.warnings)
    # Table IV runs at k = 4 (the baseline of Tables IV-VII); W/O S has no student to cut into patches.
    # Smoke's one category is the texture weave, where DMDD's "-FAS" row changes nothing.
    assert warned == {("adps", "structure"): ["patch_k is ignored by row W/O S: structure is wo_s (no student)"],
                      ("dmdd", "msn"): ["fas changes nothing on weave: a texture has no background: FAS covers "
                                        "the whole image, as full-image synthesis; rows that differ only in it "
                                        "share one training there"]}


def test_train_cli_refuses_an_inert_setting_with_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "kdsearch.train", "--method", "dskd", "--profile", "smoke",
                           "--set", "lr_gamma=0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: lr_gamma is set but nothing uses it: lr_milestones is empty")


def test_a_texture_makes_the_foreground_switches_inert_and_shares_their_training(tmp_path) -> None:
    job = plan("dmdd", "msn", profile="smoke", categories="weave,washer", values="w/ MSN,-FAS", results_dir=tmp_path)
    assert list(job.warnings) == ["fas changes nothing on weave: a texture has no background: FAS covers the whole image, "
                            "as full-image synthesis; rows that differ only in it share one training there"]
    rows = {(t.value, t.category): t for t in [*job.trainings, *(f for v in job.followers.values() for f in v)]}
    assert rows["w/ MSN", "weave"].training_key == rows["-FAS", "weave"].training_key
    assert rows["w/ MSN", "washer"].training_key != rows["-FAS", "washer"].training_key
    mrkd = single_trial("mrkd", "smoke", {"category": "weave", "ilm_foreground": "threshold"})
    assert "ilm_foreground" in mrkd.category_inert_settings
    assert mrkd.training_identity == single_trial("mrkd", "smoke", {"category": "weave"}).training_identity
