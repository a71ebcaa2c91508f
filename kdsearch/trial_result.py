"""What one trial produced, as every layer records it: the loop's outcome, the report a Ray
worker sends, ``train --json``, the Parquet row and the W&B summary all read and write
one :class:`TrialResult`. Its fields generate the result schema's metric and timing
columns (:mod:`kdsearch.results`). Torch-free.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdsearch.vocabulary import TEST_METRICS, Status

__all__ = ["TrialResult"]

_TIMING = {"timing": True}


@dataclass
class TrialResult:
    """A finished trial: status, test metrics, epochs trained, timings and where it ran.

    Attributes:
        status: how it ended (:class:`~kdsearch.vocabulary.Status`).
        metrics: the test metrics (:data:`~kdsearch.vocabulary.TEST_METRICS`); a missing one
            is undefined, NaN in a summary and a row.
        epochs: epochs trained.
        train_seconds, eval_seconds, train_images_per_second, peak_memory_mb: timings
            (NaN where not measured: a failed or pruned trial).
        restarts: restarts from a checkpoint (``None`` where unknown).
        device: what it ran on (``None`` where unknown).
        precision: what it computed in, resolved (``bf16`` or ``fp32``; ``None`` where unknown).
        memory_format: ``channels_last`` or ``contiguous`` (``None`` where unknown).
        device_model: the GPU's name or the CPU's model (``None`` where unknown).
        torch_version: the torch it ran with (``None`` where unknown).
        error: one sentence saying what went wrong, for a trial that is not ``ok``.
    """

    status: str = Status.FAILED
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    train_seconds: float = field(default=math.nan, metadata=_TIMING)
    eval_seconds: float = field(default=math.nan, metadata=_TIMING)
    train_images_per_second: float = field(default=math.nan, metadata=_TIMING)
    peak_memory_mb: float = field(default=math.nan, metadata=_TIMING)
    restarts: int | None = None
    device: str | None = None
    precision: str | None = None
    memory_format: str | None = None
    device_model: str | None = None
    torch_version: str | None = None
    error: str | None = None

    @classmethod
    def numerics_fields(cls) -> tuple[str, ...]:
        """The fields that say how its numbers were computed, in the schema's column order."""
        return "precision", "memory_format", "device_model", "torch_version"

    @classmethod
    def timing_fields(cls) -> tuple[str, ...]:
        """The timing fields, in the schema's column order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("timing"))

    def summary(self) -> dict[str, Any]:
        """One flat JSON-friendly dict: what ``train --json`` prints and a worker reports."""
        return {"status": str(self.status), **{name: self.metrics.get(name, math.nan) for name in TEST_METRICS},
                "epochs": self.epochs, **{name: getattr(self, name) for name in self.timing_fields()},
                "restarts": self.restarts, "device": self.device,
                **{name: getattr(self, name) for name in self.numerics_fields()}, "error": self.error}

    @classmethod
    def from_summary(cls, flat: Mapping[str, Any]) -> TrialResult:
        """The result a flat dict describes (:meth:`summary`'s, a worker's report, a stored row).

        Other keys are ignored; a value that is no number, or NaN (an undefined metric, or a
        null as pandas reads it), counts as missing.
        """
        return cls(status=str(flat.get("status") or Status.FAILED),
                   metrics={name: float(flat[name]) for name in TEST_METRICS if _number(flat.get(name))},
                   epochs=int(flat["epochs"]) if _number(flat.get("epochs")) else 0,
                   **{name: float(flat[name]) if _number(flat.get(name)) else math.nan for name in cls.timing_fields()},
                   restarts=int(flat["restarts"]) if _number(flat.get("restarts")) else None,
                   device=_text(flat.get("device")),
                   **{name: _text(flat.get(name)) for name in cls.numerics_fields()}, error=_text(flat.get("error")))


def _real(value: Any) -> bool:
    # numbers.Real: also numpy's scalars, as a row read back through pandas holds them.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return _real(value) and not math.isnan(value)


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None
