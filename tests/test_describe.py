"""``python -m kdsearch.describe``: parameter counts, FLOPs and the paper's complexity table."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdsearch import describe as describe_mod
from kdsearch.describe import anomaly_map_flops, count_parameters, describe, paper_complexity
from kdsearch.errors import run_cli
from kdsearch.methods import AnomalyMethod, MethodConfig


class _OneConv(AnomalyMethod):
    """A 3→4 channel 3×3 conv with a frozen 1×1 head: FLOPs and parameters by hand."""

    def __init__(self) -> None:
        super().__init__(MethodConfig(), 32)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.head = nn.Conv2d(4, 1, 1, bias=False).requires_grad_(False)

    def anomaly_map(self, images):
        return self.head(self.conv(images)).squeeze(1)


def test_counts_match_hand_calculation():
    method = _OneConv()
    assert count_parameters(method) == (3 * 4 * 9 + 4, 3 * 4 * 9)
    # 2 FLOPs per multiply-add: (3·9·4 + 4·1) MACs per pixel on a 32×32 map.
    assert anomaly_map_flops(method, 32) == 2 * (3 * 9 * 4 + 4) * 32 * 32
    assert method.training  # restored after counting


def test_dskd_smoke_profile_counts():
    result = describe("dskd", "smoke")
    assert result.image_size == 64
    model = describe_mod.create_method("dskd", 64, {})
    teacher = sum(p.numel() for p in model.teacher.parameters())
    assert result.parameters == result.trainable_parameters + teacher
    # ResNet18 up to conv4_x: 2,782,784 parameters, frozen teacher and trained encoder alike.
    assert teacher == 2_782_784
    assert sum(p.numel() for p in model.encoder.parameters()) == 2_782_784
    # Every counted op is a conv/matmul whose cost scales with the pixel count: 128² = 4 × 64².
    larger = describe("dskd", "smoke", {"image_size": 128})
    assert larger.forward_flops == 4 * result.forward_flops > 0


@pytest.mark.slow
def test_dskd_paper_profile_is_close_to_table_6():
    result = describe("dskd", "paper")
    paper = paper_complexity("dskd")
    # Table 6's "FLOPs" are multiply-adds: 6.17 G against 6.16 GMACs measured.
    assert result.forward_gmacs == pytest.approx(paper.gflops, rel=0.01)
    assert result.parameters == 20_948_736


def test_cli_json_and_errors(capsys):
    assert run_cli(describe_mod.main, ["--method", "dskd", "--profile", "smoke", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "dskd" and report["image_size"] == 64
    assert report["paper"]["params_m"] == 39.3 and report["paper"]["gflops"] == 6.17
    assert report["forward_gmacs"] == pytest.approx(report["forward_flops"] / 2e9)
    assert run_cli(describe_mod.main, ["--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert run_cli(describe_mod.main, ["--method", "dskd", "--profile", "smoke", "--set", "lambda=1"]) == 2
    assert "unknown setting 'lambda'" in capsys.readouterr().err
    assert run_cli(describe_mod.main, ["--method", "mrkd", "--profile", "smoke", "--set", "flm=false",
                                       "--set", "mask_ratio=0.3"]) == 2
    assert "mask_ratio is set but nothing uses it" in capsys.readouterr().err


def test_cli_prints_the_settings_the_profile_resolves(capsys):
    # The paper's defaults live in the config dataclass only; describe is where they are read.
    assert run_cli(describe_mod.main, ["--method", "dskd", "--profile", "smoke", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["settings"]
    assert settings["backbone"] == "resnet18" and settings["lr"] == 1e-3 and settings["lambda_l2"] == 0.1
    assert run_cli(describe_mod.main, ["--method", "adps", "--profile", "smoke", "--set", "patch_k=4"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    # Each setting with the layer it comes from: --set beats the default, the profile its dataclass default.
    assert ["adps:"] in lines and ["patch_k", "=", "4", "←", "--set"] in lines
    assert ["backbone", "=", "resnet18", "←", "profile", "smoke"] in lines
    assert ["fusion", "=", "wmb", "←", "default", "(ADPSConfig)"] in lines


def test_cli_text_prints_paper_numbers_beside(capsys):
    assert run_cli(describe_mod.main, ["--method", "dskd", "--profile", "smoke"]) == 0
    text = capsys.readouterr().out
    assert "DSKD Table 6" in text and "39.3 M" in text and "6.17 G" in text
    assert run_cli(describe_mod.main, ["--method", "rd4ad", "--profile", "smoke"]) == 0
    assert "Table 6" not in capsys.readouterr().out


def test_flop_counter_sees_no_gradient_tracking():
    method = _OneConv()
    anomaly_map_flops(method, 16)
    assert all(p.grad is None for p in method.parameters())
    assert torch.is_grad_enabled()


def test_the_papers_complexity_is_read_from_its_reference_file(tmp_path, monkeypatch):
    """One place for the printed numbers: the paper's reference YAML, not a copy in describe."""
    assert paper_complexity("dskd") == describe_mod.PaperComplexity(
        source="DSKD Table 6", params_m=39.3, gflops=6.17, inference_s=0.217, memory_mb=105.0)
    assert paper_complexity("rd4ad") is None  # RD4AD prints no complexity table
    package = tmp_path / "other_reference"
    (package / "reference").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reference" / "dskd.yaml").write_text(
        "main_results: {label: DSKD}\n"
        "complexity: {source: Table 9, rows: {MKD: {gflops: 1}, DSKD: {gflops: 2.5, params_millions: 7}}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(describe_mod, "REFERENCE_PACKAGE", "other_reference")
    paper_complexity.cache_clear()
    try:
        assert paper_complexity("dskd") == describe_mod.PaperComplexity(source="DSKD Table 9", params_m=7.0, gflops=2.5)
    finally:
        paper_complexity.cache_clear()
