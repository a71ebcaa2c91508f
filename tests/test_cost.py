"""Sweep cost before it runs: saved and reference throughput, estimates."""
from __future__ import annotations

import json

import pytest

from kdsearch import cost


def test_saved_figures_win_over_the_reference_table(tmp_path):
    path = tmp_path / "throughput.json"
    rows = [{"device": "cpu (2 threads)", "profile": "quick", "method": "rd4ad", "pipeline_images_per_s": 50.0}]
    assert cost.save_throughput(rows, path) == path
    saved = cost.throughput("rd4ad", "quick", "cpu", "cpu (2 threads)", path)
    assert saved.images_per_second == 50.0 and saved.source.startswith("bench --save on cpu (2 threads)")
    reference = cost.throughput("rd4ad", "quick", "cpu", "cpu (8 threads)", path)
    assert reference.images_per_second == 36.6 and "2-core Intel Xeon" in reference.source
    assert cost.throughput("rd4ad", "smoke", "cpu", "cpu (8 threads)", path) is None
    # A later save merges with, and updates, what is there.
    cost.save_throughput([{**rows[0], "method": "adps", "pipeline_images_per_s": 20.0}], path)
    table = json.loads(path.read_text())
    assert set(table["cpu (2 threads)"]["quick"]) == {"rd4ad", "adps"}


def test_estimate_counts_images_and_hours(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path))
    estimate = cost.estimate("mrkd", "paper", [(200, 209), (200, 300)], "cuda", "NVIDIA H100")
    assert estimate.trainings == 2 and estimate.images == 200 * 509
    assert estimate.hours == pytest.approx(200 * 509 / 124.0 / 3600)
    assert "reference: NVIDIA H200" in estimate.text()
    unknown = cost.estimate("mrkd", "paper", [(200, None)], "cuda", "NVIDIA H100")
    assert unknown.images is None and unknown.hours is None and "?" in unknown.text()
    none = cost.estimate("mrkd", "smoke", [(1, 16)], "cuda", "NVIDIA H100")
    assert none.hours is None and none.text() == ("1 training(s), 16 training images processed; mrkd/smoke on NVIDIA "
                                                  "H100: hours unknown until `python -m kdsearch.bench --methods mrkd "
                                                  "--profile smoke --save`")
    assert none.short() == "1 trainings, 16 images, hours unknown"


def test_a_cpu_training_is_costed_from_the_reference_of_its_numerics_and_vector_units(tmp_path, monkeypatch):
    from kdsearch import numerics
    from kdsearch.cost import job_cost
    from kdsearch.plan import plan

    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path))
    job = plan("adps", "k", profile="quick", results_dir=tmp_path)
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    amx = job_cost(job, "cpu", "cpu (2 threads)")
    assert "with AMX (bf16" in amx.source and amx.hours == pytest.approx(5_120 / 36.6 / 3600)
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    plain = job_cost(job, "cpu", "cpu (2 threads)")
    assert "Intel Xeon CPU (fp32;" in plain.source and plain.hours == pytest.approx(5_120 / 22.1 / 3600)
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"avx", "avx2"}))
    avx2 = job_cost(job, "cpu", "cpu (2 threads)")
    assert "AVX2, no AVX-512" in avx2.source and avx2.hours == pytest.approx(5_120 / 11.1 / 3600)
    # A CPU whose flags cannot be read (or another architecture) keeps the general fp32 reference.
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset())
    assert job_cost(job, "cpu", "cpu (2 threads)").source == plain.source
    # fp32 asked for on a CPU with bf16 units is costed as fp32.
    forced = plan("adps", "k", profile="quick", results_dir=tmp_path, extra={"precision": "fp32"})
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    assert "Intel Xeon CPU (fp32;" in job_cost(forced, "cpu", "cpu (2 threads)").source


@pytest.mark.parametrize("bf16, flags, kind", [
    (True, {"avx2"}, "cpu-bf16"), (False, {"avx2", "avx512f"}, "cpu"), (False, {"avx", "avx2"}, "cpu-avx2"),
    (False, {"avx"}, "cpu"), (False, set(), "cpu"),
])
def test_cpu_kind_reads_the_numerics_then_the_vector_units(bf16, flags, kind):
    assert cost.cpu_kind(bf16, frozenset(flags)) == kind
