"""The bounds of a sweep's run options, checked before anything is planned.

Standard library and :class:`~kdsearch.errors.UserError` only: ``python -m kdsearch.ablate``
refuses an impossible ``--workers-per-trial`` or a negative ``--max-failures`` from the
arguments alone, before torch or Ray is imported (:class:`kdsearch.distributed.RunOptions`
itself lives in the package that imports Ray).
"""
from __future__ import annotations

from kdsearch.errors import UserError

__all__ = ["check_run_bounds"]


def check_run_bounds(*, workers_per_trial: int, gpus_per_trial: float | None, cpus_per_trial: float | None,
                     checkpoint_every: float | None, max_failures: int | None, max_concurrent: int | None) -> None:
    """Refuse the first option out of its bounds as ``--option must be >= N, got V``.

    At least one worker per trial and one trial at once; no negative GPUs, CPUs, checkpoint
    interval or restarts. ``None`` is an option left to its default.
    """
    if workers_per_trial < 1:
        raise UserError(f"--workers-per-trial must be >= 1, got {workers_per_trial}")
    for name, value in (("gpus-per-trial", gpus_per_trial), ("cpus-per-trial", cpus_per_trial),
                        ("checkpoint-every", checkpoint_every), ("max-failures", max_failures)):
        if value is not None and value < 0:
            raise UserError(f"--{name} must be >= 0, got {value}")
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1, got {max_concurrent}")
