from dataclasses import dataclass
from typing import Literal

import pytest

from kdsearch.config import apply_overrides, parse_assignments, to_dict
from kdsearch.errors import UserError


@dataclass
class Example:
    k: int = 8
    lr: float = 1e-4
    name: str = "wide_resnet50_2"
    flag: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[float, ...] = ()
    mode: Literal["cos", "mse"] = "cos"
    root: str | None = None


def test_parse_assignments_reads_yaml_scalars():
    assert parse_assignments(["k=4", "lr=1e-3", "flag=false", "betas=[0.5, 0.999]", "name=resnet18"]) == {
        "k": 4, "lr": 1e-3, "flag": False, "betas": [0.5, 0.999], "name": "resnet18"}


def test_parse_assignments_rejects_missing_equals():
    with pytest.raises(UserError, match="key=value"):
        parse_assignments(["k4"])


def test_apply_overrides_coerces_and_drops_none():
    cfg = apply_overrides(Example(), {"k": 4.0, "lr": 1, "betas": [0.5, 0.9], "milestones": [0.8, 0.9], "mode": "mse", "root": None})
    assert (cfg.k, cfg.lr, cfg.betas, cfg.milestones, cfg.mode, cfg.root) == (4, 1.0, (0.5, 0.9), (0.8, 0.9), "mse", None)
    assert isinstance(cfg.lr, float) and isinstance(cfg.k, int)
    assert to_dict(cfg)["betas"] == [0.5, 0.9]


@pytest.mark.parametrize("overrides, message", [
    ({"patch": 3}, "unknown config field 'patch'"),
    ({"k": 2.5}, "k must be an integer"),
    ({"flag": "yes"}, "flag must be true or false"),
    ({"mode": "l1"}, "mode must be one of cos, mse"),
    ({"betas": [0.5]}, "betas needs 2 values"),
    ({"lr": "fast"}, "lr must be a number"),
])
def test_apply_overrides_rejects_bad_values(overrides, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(Example(), overrides)
