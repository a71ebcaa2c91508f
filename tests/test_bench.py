import json
import subprocess
import sys

import pytest

from kdsearch.bench import bench_metrics, main
from kdsearch.numerics import cpu_has_bf16_units


def _rows(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def test_bench_json_carries_medians_spreads_ratio_synthesis_and_metrics(capsys):
    assert main(["--methods", "mrkd", "--profile", "smoke", "--steps", "2", "--repeats", "2",
                 "--batch-size", "4", "--json"]) == 0
    rows = _rows(capsys)
    row, synthesis, per_core, metrics = rows[0], rows[1]["synthesis"], rows[2]["synthesis_per_core"], rows[3]["metrics"]
    assert row["method"] == "mrkd" and row["image_size"] == 64 and row["batch_size"] == 4
    assert row["synthesis"] == "nsa" and row["device"].startswith("cpu")
    assert row["precision"] == ("bf16" if cpu_has_bf16_units() else "fp32")
    for name in ("pipeline", "bare"):
        low, high = row[f"{name}_spread"]
        assert 0 < low <= row[f"{name}_images_per_s"] <= high
    assert row["ratio"] == pytest.approx(row["pipeline_images_per_s"] / row["bare_images_per_s"], rel=1e-12)
    assert row["synthesis_images_per_s"] > 0
    assert synthesis["image_size"] == 256
    for kind in ("draem", "fas", "nsa", "nsa_torch"):
        low, high = synthesis[f"{kind}_spread"]
        assert 0 < low <= synthesis[f"{kind}_images_per_s"] <= high
    assert synthesis["grabcut_images_per_s"] > 0
    # MRKD's paper-profile synthesis (the authors' swap) runs per image on a host core under CUDA.
    assert per_core["threads"] == 1 and set(per_core) == {"device", "threads", "mrkd"}
    mrkd = per_core["mrkd"]
    assert (mrkd["synthesis"], mrkd["on_cuda"], mrkd["image_size"], mrkd["batch_size"]) == ("nsa_swap", "host", 256, 16)
    low, high = mrkd["cpu_spread"]
    assert 0 < low <= mrkd["images_per_cpu_s"] <= high and mrkd["images_per_s"] > 0
    assert metrics["maps"] == 120 and metrics["seconds"] > 0 and metrics["au_pro_seconds"] > 0
    assert 0.0 <= metrics["au_pro"] <= 1.0


def test_bench_without_synthesis_has_no_synthesis_row_and_no_rate_for_methods_without_it(capsys):
    assert main(["--methods", "rd4ad", "--profile", "smoke", "--steps", "2", "--repeats", "1",
                 "--batch-size", "4", "--no-synthesis", "--json"]) == 0
    rows = _rows(capsys)
    assert len(rows) == 2 and "synthesis_images_per_s" not in rows[0] and "metrics" in rows[1]


@pytest.mark.parametrize(("method", "levels"), [("rd4ad", 3), pytest.param("dmdd", 4, marks=pytest.mark.slow)])
def test_bench_cache_times_the_pipeline_with_the_teacher_cache_against_the_bare_step(capsys, method, levels):
    # DMDD: the cache serves the normal half of its teacher's cat[normal, anomalous] call.
    assert main(["--methods", method, "--profile", "smoke", "--steps", "2", "--repeats", "1",
                 "--batch-size", "4", "--no-synthesis", "--cache", "--json"]) == 0
    row = _rows(capsys)[0]
    low, high = row["cached_spread"]
    assert 0 < low <= row["cached_images_per_s"] <= high
    assert row["cached_ratio"] == pytest.approx(row["cached_images_per_s"] / row["bare_images_per_s"], rel=1e-12)
    # Served for real: every timed image came from the cache, which the fill had computed.
    assert row["cache_hits"] > 0 and row["cache_misses"] == 0
    # resnet18 layers 1-3 (DMDD: 1-4) at 64², bf16 or fp32.
    values = sum(c * (64 // r) ** 2 for c, r in list(zip((64, 128, 256, 512), (4, 8, 16, 32)))[:levels])
    assert row["cache_mb_per_image"] == pytest.approx(values * (2 if row["precision"] == "bf16" else 4) / 1e6)


def test_bench_rejects_a_budget_below_two_steps():
    from kdsearch.errors import UserError
    with pytest.raises(UserError, match="--steps"):
        main(["--methods", "rd4ad", "--steps", "1"])


@pytest.mark.parametrize("method, label, placement", [
    ("adps", "draem", "device"), ("dmdd", "fas", "device"), ("mrkd", "nsa_swap", "host"),
    ("dskd", "none", "none"), ("rd4ad", "none", "none"),
])
def test_each_methods_paper_synthesis_and_where_it_runs_on_cuda(method, label, placement):
    from kdsearch.bench import _synthesis_label, synthesis_placement
    from kdsearch.settings import single_trial

    spec = single_trial(method, "paper", {"pretrained": "none"}).synthesis
    assert (_synthesis_label(spec), synthesis_placement(spec)) == (label, placement)


def test_bench_metrics_small():
    result = bench_metrics(num_maps=8, size=32)
    assert result["maps"] == 8 and result["seconds"] > 0 and result["au_pro_seconds"] > 0
    # Half the maps carry a defect lifted by 0.5 over uniform noise: most of each region
    # ranks above the noise, so AU-PRO is high, and no other seed gives the same value.
    assert 0.5 < result["au_pro"] < 1.0
    assert bench_metrics(num_maps=8, size=32, seed=1)["au_pro"] != result["au_pro"]


def test_bench_and_train_import_without_ray_optuna_or_the_tracking_module():
    # A fresh interpreter: this session may have imported any of them already. (wandb itself
    # comes in through timm, which imports it when installed.)
    code = ("import sys, kdsearch.bench, kdsearch.train; print(sorted({m for m in sys.modules "
            "if m.split('.')[0] in ('ray', 'optuna') or m.startswith(('kdsearch.tracking', 'kdsearch.distributed'))}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
