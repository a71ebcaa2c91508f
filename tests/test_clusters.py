"""clusters/aws.yaml passes Ray's own cluster-config validator, offline and without credentials."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "clusters" / "aws.yaml"


def _load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _validate(config: dict) -> dict:
    # validate_config alone misses the defaults prepare_config fills in (cluster_synced_files, ...).
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_is_valid_for_ray():
    prepared = _validate(_load())
    types = prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws" and prepared["head_node_type"] == "head_cpu"
    assert types["head_cpu"]["resources"] == {"CPU": 0}  # trials never land on the head
    gpus = {name: t["resources"].get("GPU", 0) for name, t in types.items() if name != "head_cpu"}
    assert gpus == {"gpu_a10g_x4": 4, "gpu_a100_x8": 8}
    for name in gpus:
        assert 0 == types[name]["min_workers"] < types[name]["max_workers"] <= prepared["max_workers"]
    setup = "\n".join(prepared["setup_commands"])
    assert "pip install" in setup and "/home/ubuntu/kdsearch[aws]" in setup
    assert prepared["file_mounts"] == {"/home/ubuntu/kdsearch": "."}


@pytest.mark.parametrize("breakage, message", [
    ("typo", "'min_worker' was unexpected"),
    ("unknown_head", "`head_node_type` must be one of `available_node_types`"),
    ("bad_type", "'two' is not of type 'integer'"),
])
def test_validator_catches_broken_configs(breakage, message):
    from jsonschema import ValidationError

    config = _load()
    if breakage == "typo":
        config["available_node_types"]["gpu_a10g_x4"]["min_worker"] = 0
    elif breakage == "unknown_head":
        config["head_node_type"] = "head_gpu"
    else:
        config["available_node_types"]["gpu_a100_x8"]["max_workers"] = "two"
    with pytest.raises((ValidationError, ValueError), match=message):  # jsonschema's, or Ray's own check
        _validate(config)


# ------------------------------------------------- a cluster run never trains on CPUs by accident


def test_the_aws_clusters_gpu_node_types_are_seen_though_none_is_up():
    from kdsearch.distributed.options import gpu_node_types

    assert gpu_node_types(_load()) == {"gpu_a10g_x4": 4.0, "gpu_a100_x8": 8.0}
    no_gpu = _load()
    for node_type in no_gpu["available_node_types"].values():
        node_type["resources"].pop("GPU", None)
    assert gpu_node_types(no_gpu) == {}


def test_a_sweep_without_gpus_per_trial_on_a_gpu_cluster_is_refused():
    from kdsearch.distributed.options import RunOptions, check_gpu_request
    from kdsearch.errors import UserError

    offered = {"gpu_a10g_x4": 4.0, "gpu_a100_x8": 8.0}
    # The autoscaling cluster with no GPU node up: ray.cluster_resources() shows 0 GPUs.
    with pytest.raises(UserError, match=r"can add nodes with GPUs \(gpu_a10g_x4 \(4 GPUs\), gpu_a100_x8 \(8 GPUs\)\) "
                                        r".*pass --gpus-per-trial 1"):
        check_gpu_request(RunOptions(results_dir="r"), 0.0, offered, wants_cuda=False)
    check_gpu_request(RunOptions(results_dir="r", gpus_per_trial=1), 0.0, offered, wants_cuda=True)
    check_gpu_request(RunOptions(results_dir="r", gpus_per_trial=0), 0.0, offered, wants_cuda=False)  # CPUs, asked
    check_gpu_request(RunOptions(results_dir="r"), 4.0, offered, wants_cuda=True)  # GPUs up: each trial asks for one
    check_gpu_request(RunOptions(results_dir="r"), 0.0, {}, wants_cuda=False)  # a CPU cluster
    with pytest.raises(UserError, match="device=cuda is set but this sweep gives its trials no GPU.*--gpus-per-trial 1"):
        check_gpu_request(RunOptions(results_dir="r"), 0.0, {}, wants_cuda=True)


def test_the_driver_refuses_before_any_trial_runs_on_a_gpu_cluster_without_gpus_per_trial(tmp_path, monkeypatch):
    from kdsearch import plan as plan_lib
    from kdsearch import recording
    from kdsearch.distributed import driver
    from kdsearch.distributed.options import RunOptions
    from kdsearch.errors import UserError

    # The cluster as Ray shows it on the CPU head node of clusters/aws.yaml: no GPU up yet.
    monkeypatch.setattr(driver, "start_ray", lambda *args, **kwargs: False)
    monkeypatch.setattr(driver.ray, "cluster_resources", lambda: {"CPU": 0.0})
    monkeypatch.setattr(driver, "offered_gpu_node_types", lambda: {"gpu_a10g_x4": 4.0})

    def no_training(*args, **kwargs):
        raise AssertionError("a trial started")

    monkeypatch.setattr(driver, "_fit", no_training)
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", results_dir=tmp_path)
    writer = recording.ResultWriter(tmp_path, quiet=True)
    with pytest.raises(UserError, match="--gpus-per-trial"):
        driver.run_job(job, RunOptions(results_dir=str(tmp_path), address="head:6379", wandb="disabled"), writer)
    assert not writer.rows


def test_device_cuda_is_checked_where_the_trial_runs_not_where_it_is_planned(tmp_path):
    import torch

    from kdsearch import plan as plan_lib
    from kdsearch.errors import UserError
    from kdsearch.runtime import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    # The CPU head node plans a sweep for GPU workers (it used to refuse device=cuda here).
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", extra={"device": "cuda"},
                        results_dir=tmp_path)
    assert job.trainings[0].trial.train.device == "cuda"
    with pytest.raises(UserError, match="device=cuda was asked for but .* where this trial runs, has no CUDA device"):
        resolve_device("cuda")


def test_joining_a_cluster_without_its_auth_token_is_one_error_line(monkeypatch):
    """A head with token auth joined without the token: Ray raises AuthenticationError, a
    RayError; it used to reach the user as a 30-line traceback and exit 1."""
    import ray
    from ray.exceptions import AuthenticationError

    from kdsearch.distributed import session
    from kdsearch.errors import UserError

    def refused(*args, **kwargs):
        raise AuthenticationError("Token authentication is enabled but no authentication token was found.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session, "check_reachable", lambda address: None)
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(UserError, match=r"cannot join the Ray cluster at '127.0.0.2:6379': .*no authentication token"
                                        r".*RAY_AUTH_TOKEN"):
        session.start_ray("127.0.0.2:6379")
