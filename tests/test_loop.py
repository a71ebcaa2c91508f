"""The loop runs every training phase alike: autocast, divergence check, DDP, checkpoint."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdsearch import loop, runtime
from kdsearch.checkpoint import load_checkpoint
from kdsearch.methods import TrainingPhase
from kdsearch.settings import single_trial


def test_a_nan_in_a_later_phase_stops_the_trial_as_diverged(monkeypatch) -> None:
    build = runtime.create_method

    def with_a_nan_phase(name, image_size, config):
        method = build(name, image_size, config)
        method.head = torch.nn.Linear(1, 1)
        phases = method.training_phases

        def training_phases(epochs):
            optimizer = torch.optim.SGD(method.head.parameters(), lr=0.1)
            nan = TrainingPhase("head", method.head, lambda net, batch: {"loss": net(torch.ones(1, 1)).sum() * torch.nan},
                                optimizer)
            return [*phases(epochs), nan]

        method.training_phases = training_phases
        return method

    monkeypatch.setattr(runtime, "create_method", with_a_nan_phase)
    outcome = loop.fit_and_evaluate(single_trial("rd4ad", "smoke", {"epochs": 2, "device": "cpu"}), progress=False)
    assert outcome.status == "diverged" and outcome.epochs == 0
    assert outcome.error.startswith("head_loss became nan at epoch 1/2 head, step 1")


def test_dmdd_checkpoints_both_phases_and_resumes_to_the_same_numbers(tmp_path, capsys) -> None:
    from kdsearch.train import main

    base = ["--method", "dmdd", "--profile", "smoke", "--json", "--set", "device=cpu"]
    assert main([*base, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    assert set(state["optimizers"]) == {"main", "msn"} and state["optimizers"]["msn"]["state"]
    assert all("msn_loss" in record for record in state["epoch_records"])
    assert main([*base, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    assert main([*base, "--epochs", "2", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro"):
        assert resumed[key] == full[key], key


def test_mrkd_trains_with_the_batched_torch_blend_cuda_uses() -> None:
    trial = single_trial("mrkd", "smoke", {"device": "cpu", "synthesis.nsa_blend": "torch"})
    assert trial.identity["synthesis"]["nsa_blend"] == "torch"
    outcome = loop.fit_and_evaluate(trial, progress=False)
    assert outcome.status == "ok" and 0.0 <= outcome.metrics["pixel_auroc"] <= 1.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_rank(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trial = single_trial("dmdd", "smoke", {"device": "cpu", "epochs": 1, "precision": "fp32"})
        states = []
        outcome = loop.fit_and_evaluate(trial, on_epoch=lambda record, state: states.append(state()), progress=False)
        torch.save({"status": str(outcome.status), "model": states[-1]["model"], "records": outcome.epoch_records},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_keeps_every_phase_identical_across_ranks(tmp_path) -> None:
    """Each rank synthesises its own anomalies, so only averaged gradients keep the copies equal."""
    mp.spawn(_train_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["status"] for r in ranks] == ["ok", "ok"]
    first, second = (r["model"] for r in ranks)
    assert first.keys() == second.keys()
    assert any(k.startswith("msn.") for k in first) and any(k.startswith("student.") for k in first)
    # Parameters, not batch-norm statistics: DDP keeps those per rank (rank 0's are saved).
    for key in (k for k in first if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))):
        assert torch.allclose(first[key], second[key], atol=1e-6), key
    # Each rank trained on half of the epoch's images (8 each of 16), and the MSN learned.
    assert ranks[0]["records"][0]["images"] == 16 and ranks[0]["records"][0]["msn_loss"] > 0


def test_validating_less_often_leaves_the_training_and_the_test_metrics_unchanged() -> None:
    every = single_trial("rd4ad", "smoke", {"epochs": 3, "device": "cpu"})
    sparse = single_trial("rd4ad", "smoke", {"epochs": 3, "device": "cpu", "val_every": 2})
    assert sparse.identity == every.identity  # a speed switch: not in the trial key
    full = loop.fit_and_evaluate(every, progress=False)
    some = loop.fit_and_evaluate(sparse, progress=False)
    assert ["val_image_auroc" in r for r in full.epoch_records] == [True, True, True]
    assert ["val_image_auroc" in r for r in some.epoch_records] == [False, True, True]  # every 2nd, and the last
    assert [r["loss"] for r in some.epoch_records] == [r["loss"] for r in full.epoch_records]
    assert some.metrics == full.metrics
    assert some.epoch_records[-1]["val_image_auroc"] == full.epoch_records[-1]["val_image_auroc"]
