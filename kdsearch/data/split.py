"""The seeded hold-out of normal training images for validation."""
from __future__ import annotations

import torch

from kdsearch.errors import UserError


def validation_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` normal images to hold out.

    ``round(val_fraction * n)``, but at least 1 when ``val_fraction > 0`` and ``n >= 2``,
    and always leaving at least one training image. ``val_fraction == 0`` holds out none.

    Raises:
        UserError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 2 or val_fraction == 0.0:
        return 0
    return min(max(1, round(val_fraction * n)), n - 1)


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and the held-out validation images among ``n``.

    The held-out images are the first of a permutation drawn from a torch generator
    seeded with ``seed``; both index lists are returned sorted (file order), disjoint,
    and together cover ``range(n)``. The same arguments always give the same split.

    Returns:
        ``(train_indices, val_indices)``, int64.
    """
    n_val = validation_count(n, val_fraction)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    return order[n_val:].sort().values, order[:n_val].sort().values
