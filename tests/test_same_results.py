"""Refactoring guard: the same settings keep the same trial keys and the same numbers.

``tests/golden/smoke_trials/<paper>.json`` holds, for one paper's search space, the trial key
of every smoke trial of every axis (a search axis: the trial at its probe value) and, for the
smoke trials it names under ``trained`` (one each for RD4AD, MRKD: NSA synthesis, ADPS:
DRAEM synthesis and patches, DMDD: two training phases), the epoch losses and test metrics
trained in this process in fp32. On the machine that recorded them (CPU model and vector
units, threads, torch) they must come back exactly; on any other machine within
:data:`LOSS_RTOL` and :data:`METRIC_ATOL`: other vector units round the last bits
differently, which moves a loss by about 1e-6 and a metric by a few ranks, while a change a
refactor would make (a random draw moved, an op reordered or dropped) moves them far more.

One file per paper, so a new method's paper adds its own record and leaves the others
untouched: ``python tests/test_same_results.py toy`` writes ``toy.json`` only (its first
axis's first row trained). A change that moves a key or a number must say so: regenerate
the papers it moves with ``python tests/test_same_results.py [paper ...]`` (no paper: every
paper, each keeping the trials its file names) and document the migration.
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

GOLDEN = Path(__file__).parent / "golden" / "smoke_trials"
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad")
#: Off the recording machine: a loss may move by this share, a metric by this much. Other
#: convolution kernels (channels-last here, as another CPU's would be) moved the losses by
#: up to 1.5e-5 and the metrics by up to 0.006 (one image pair's rank in 160); the same trial
#: with its seed moved by one moves its loss by far more than 1e-3.
LOSS_RTOL = 1e-3
METRIC_ATOL = 0.02


def golden(paper: str) -> dict:
    """A paper's record; a paper without one fails, saying how to record it."""
    path = GOLDEN / f"{paper}.json"
    if not path.exists():
        pytest.fail(f"no golden record for paper {paper!r}: record it with `python tests/test_same_results.py {paper}`")
    return json.loads(path.read_text())


def smoke_keys(paper: str, results_dir: Path) -> dict[str, list[str]]:
    keys = {}
    for name in load_search_space(paper).axes:
        job = plan(paper, name, profile="smoke", results_dir=results_dir)
        # Every row's key: a grid job runs only the first row of each training.
        keys[f"{paper}/{name}"] = list(job.planned_keys) if job.is_grid else [
            s.trial(job.space, job.axis, probe_value(job.axis)).trial_key for s in job.studies]
    return keys


def trained_metrics(paper: str, trained: list, results_dir: Path) -> dict[str, dict[str, float]]:
    """``trained``: ``[axis, row]`` pairs of the paper (row None: the axis's first row)."""
    from kdsearch.loop import fit_and_evaluate

    out = {}
    for axis, value in trained:
        job = plan(paper, axis, profile="smoke", values=value, results_dir=results_dir)
        spec = job.trainings[0]
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


@pytest.mark.parametrize("paper", list_papers())
def test_every_smoke_trial_keeps_its_key(paper: str, tmp_path) -> None:
    assert smoke_keys(paper, tmp_path) == golden(paper)["keys"]


def test_every_golden_record_is_a_papers_own() -> None:
    """No record of a paper that is gone, and each holds its own paper's keys and trained trials only."""
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == list_papers()
    for paper in list_papers():
        record = golden(paper)
        assert record.keys() == {"machine", "keys", "metrics", "trained"}
        assert all(name.split("/")[0] == paper for name in record["keys"])
        assert len(record["metrics"]) == len(record["trained"])
        assert set(record["metrics"]) <= {key for keys in record["keys"].values() for key in keys}


def _tolerance(name: str, value: float, same_machine: bool) -> dict[str, float]:
    if same_machine:
        return {"abs": 1e-6}
    return {"rel": LOSS_RTOL} if "loss" in name else {"abs": METRIC_ATOL}


@pytest.mark.parametrize("paper", list_papers())
def test_the_trained_smoke_trials_keep_their_losses_and_metrics(paper: str, tmp_path) -> None:
    record = golden(paper)
    if not record["trained"]:
        pytest.skip(f"{paper}'s record trains no trial")
    same_machine = record["machine"] == _machine()
    measured = trained_metrics(paper, record["trained"], tmp_path)
    assert measured.keys() == record["metrics"].keys()
    for key, numbers in record["metrics"].items():
        assert measured[key].keys() == numbers.keys(), key
        for name, value in numbers.items():
            assert measured[key][name] == pytest.approx(value, **_tolerance(name, value, same_machine)), \
                (key, name, "recorded on" if same_machine else "off", record["machine"])


def test_the_tolerance_catches_a_moved_random_draw(tmp_path) -> None:
    """What the guard must catch off its machine: the RD4AD trial with its seed moved by one."""
    from kdsearch.loop import fit_and_evaluate

    job = plan("rd4ad", "backbone", profile="smoke", values="resnet18", results_dir=tmp_path)
    spec = job.trainings[0]
    train = dataclasses.replace(spec.trial.train, device="cpu", precision="fp32", memory_format="contiguous",
                                seed=spec.trial.train.seed + 1)
    outcome = fit_and_evaluate(dataclasses.replace(spec.trial, train=train), progress=False)
    recorded = golden("rd4ad")["metrics"][spec.trial_key]
    moved = {"epoch1_loss": outcome.epoch_records[0]["loss"], **outcome.metrics}
    caught = [name for name, value in moved.items() if name in recorded
              and value != pytest.approx(recorded[name], **_tolerance(name, recorded[name], False))]
    assert "epoch1_loss" in caught and caught


def record(paper: str, results_dir: Path) -> dict:
    """A paper's record measured here: the trials its file names trained (a new paper: its first
    axis's first row)."""
    path = GOLDEN / f"{paper}.json"
    trained = json.loads(path.read_text())["trained"] if path.exists() else [
        [next(iter(load_search_space(paper).axes)), None]]
    return {"machine": _machine(), "keys": smoke_keys(paper, results_dir),
            "metrics": trained_metrics(paper, trained, results_dir), "trained": trained}


if __name__ == "__main__":
    papers = sys.argv[1:] or list_papers()
    unknown = sorted(set(papers) - set(list_papers()))
    if unknown:
        print(f"error: no search space for {', '.join(unknown)}; choose from: {', '.join(list_papers())}", file=sys.stderr)
        sys.exit(2)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for paper in papers:
        with tempfile.TemporaryDirectory() as folder:
            made = record(paper, Path(folder))
        (GOLDEN / f"{paper}.json").write_text(json.dumps(made, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN / paper}.json: {sum(map(len, made['keys'].values()))} keys, "
              f"{len(made['metrics'])} trained trials", file=sys.stderr)
