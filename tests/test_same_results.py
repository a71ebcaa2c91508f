"""Refactoring guard: the same settings keep the same trial keys and the same numbers.

``tests/golden/smoke_trials.json`` holds the trial key of every smoke trial of every axis
of every paper (a search axis: the trial at its probe value), and the metrics of two smoke
trials trained in this process (RD4AD; MRKD, whose NSA synthesis is the most involved).
A change that moves a key or a number must say so: regenerate the file with
``python tests/test_same_results.py`` and document the migration.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from kdsearch.plan import plan, probe_value
from kdsearch.spaces import list_papers, load_search_space

GOLDEN = Path(__file__).parent / "golden" / "smoke_trials.json"
TRAINED = (("rd4ad", "backbone", "resnet18"), ("mrkd", "alpha", None))  # None: the axis's first row
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad")


def smoke_keys(results_dir: Path) -> dict[str, list[str]]:
    keys = {}
    for paper in list_papers():
        for name in load_search_space(paper).axes:
            job = plan(paper, name, profile="smoke", results_dir=results_dir)
            # Every row's key: a grid job runs only the first row of each training.
            keys[f"{paper}/{name}"] = list(job.planned_keys) if job.is_grid else [
                s.trial(job.space, job.axis, probe_value(job.axis)).trial_key for s in job.studies]
    return keys


def trained_metrics(results_dir: Path) -> dict[str, dict[str, float]]:
    from kdsearch.loop import fit_and_evaluate

    out = {}
    for paper, axis, value in TRAINED:
        job = plan(paper, axis, profile="smoke", values=value, results_dir=results_dir)
        spec = job.trials[0]
        # fp32 and contiguous whatever ``auto`` picks here: the guard is about the code, not the numerics default.
        train = dataclasses.replace(spec.trial.train, device="cpu", precision="fp32", memory_format="contiguous")
        outcome = fit_and_evaluate(dataclasses.replace(spec.trial, train=train), progress=False)
        out[spec.trial_key] = {m: outcome.metrics[m] for m in METRICS}
    return out


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
        # The vector units decide which kernels run, and so the last bits of a float.
        return f"{model} [{' '.join(sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma'))))}]"
    except OSError:
        return platform.processor() or platform.machine()


def _machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": _cpu_model(), "threads": str(torch.get_num_threads())}


def test_every_smoke_trial_keeps_its_key(tmp_path) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert smoke_keys(tmp_path) == golden["keys"]


def test_two_smoke_trials_keep_their_numbers(tmp_path) -> None:
    golden = json.loads(GOLDEN.read_text())
    if golden["machine"] != _machine():
        pytest.skip(f"numbers recorded on {golden['machine']}, this is {_machine()}: float results may differ")
    measured = trained_metrics(tmp_path)
    assert measured.keys() == golden["metrics"].keys()
    for key, metrics in golden["metrics"].items():
        for name, value in metrics.items():
            assert measured[key][name] == pytest.approx(value, abs=1e-6), (key, name)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        record = {"machine": _machine(), "keys": smoke_keys(Path(folder)), "metrics": trained_metrics(Path(folder))}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(map(len, record['keys'].values()))} keys, {len(record['metrics'])} trained trials",
          file=sys.stderr)
