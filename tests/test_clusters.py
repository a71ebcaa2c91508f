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
