"""Refactoring guard: the same settings keep the same trial keys and the same numbers.

``tests/golden/smoke_trials.json`` holds the trial key of every smoke trial of every axis
of every paper (a search axis: the trial at its probe value), and, for one smoke trial of
each of RD4AD, MRKD (NSA synthesis), ADPS (DRAEM synthesis, patches) and DMDD (two
training phases), the epoch losses and test metrics trained in this process in fp32.
On the machine that recorded them (CPU model and vector units, threads, torch) they must
come back exactly; on any other machine within :data:`LOSS_RTOL` and
:data:`METRIC_ATOL`: other vector units round the last bits differently, which moves a
loss by about 1e-6 and a metric by a few ranks, while a change a refactor would make (a
random draw moved, an op reordered or dropped) moves them far more.
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

from kdsearch.plan import plan
from kdsearch.search_axis import probe_value
from kdsearch.spaces import list_papers, load_search_space

GOLDEN = Path(__file__).parent / "golden" / "smoke_trials.json"
# (paper, axis, row); None: the axis's first row.
TRAINED = (("rd4ad", "backbone", "resnet18"), ("mrkd", "alpha", None), ("adps", "k", "4"), ("dmdd", "msn", "w/ MSN"))
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad")
#: Off the recording machine: a loss may move by this share, a metric by this much. Other
#: convolution kernels (channels-last here, as another CPU's would be) moved the losses by
#: up to 1.5e-5 and the metrics by up to 0.006 (one image pair's rank in 160); the same trial
#: with its seed moved by one moves its loss by far more than 1e-3.
LOSS_RTOL = 1e-3
METRIC_ATOL = 0.02


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
        losses = {f"epoch{r['epoch']}_{k}": v for r in outcome.epoch_records for k, v in r.items()
                  if k.startswith(("loss", "msn_loss"))}
        out[spec.trial_key] = {**{m: outcome.metrics[m] for m in METRICS}, **losses}
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


def _tolerance(name: str, value: float, same_machine: bool) -> dict[str, float]:
    if same_machine:
        return {"abs": 1e-6}
    return {"rel": LOSS_RTOL} if "loss" in name else {"abs": METRIC_ATOL}


def test_four_smoke_trials_keep_their_losses_and_metrics(tmp_path) -> None:
    golden = json.loads(GOLDEN.read_text())
    same_machine = golden["machine"] == _machine()
    measured = trained_metrics(tmp_path)
    assert measured.keys() == golden["metrics"].keys()
    for key, numbers in golden["metrics"].items():
        assert measured[key].keys() == numbers.keys(), key
        for name, value in numbers.items():
            assert measured[key][name] == pytest.approx(value, **_tolerance(name, value, same_machine)), \
                (key, name, "recorded on" if same_machine else "off", golden["machine"])


def test_the_tolerance_catches_a_moved_random_draw(tmp_path) -> None:
    """What the guard must catch off its machine: the RD4AD trial with its seed moved by one."""
    golden = json.loads(GOLDEN.read_text())
    from kdsearch.loop import fit_and_evaluate

    job = plan("rd4ad", "backbone", profile="smoke", values="resnet18", results_dir=tmp_path)
    spec = job.trials[0]
    train = dataclasses.replace(spec.trial.train, device="cpu", precision="fp32", memory_format="contiguous",
                                seed=spec.trial.train.seed + 1)
    outcome = fit_and_evaluate(dataclasses.replace(spec.trial, train=train), progress=False)
    recorded = golden["metrics"][spec.trial_key]
    moved = {"epoch1_loss": outcome.epoch_records[0]["loss"], **outcome.metrics}
    caught = [name for name, value in moved.items() if name in recorded
              and value != pytest.approx(recorded[name], **_tolerance(name, recorded[name], False))]
    assert "epoch1_loss" in caught and caught


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        record = {"machine": _machine(), "keys": smoke_keys(Path(folder)), "metrics": trained_metrics(Path(folder))}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {sum(map(len, record['keys'].values()))} keys, {len(record['metrics'])} trained trials",
          file=sys.stderr)
