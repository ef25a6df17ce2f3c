"""The in-memory dataset type, its sanity checks, and fixed class-balanced subsets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toynet.data.checks import ARRAY_NAMES, check_named
from toynet.errors import ConfigError


@dataclass(frozen=True)
class DataArrays:
    """One dataset, fully in memory (or memory-mapped from the cache).

    ``val_*`` is the dataset's test split. Images are uint8 ``(N, C, H, W)``, labels
    int64 ``(N,)`` in ``0..num_classes-1`` indexing ``classes``. Arrays loaded from the
    cache are copy-on-write maps: writing into them never changes the cache file.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_arrays(a: DataArrays, where: str) -> None:
    """:func:`toynet.data.checks.check_named` on ``a``'s (CPU) tensors; raises DataError."""
    check_named(a.name, {k: getattr(a, k).numpy() for k in ARRAY_NAMES}, a.classes, where)


def subset_balanced(x: torch.Tensor, y: torch.Tensor, limit: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed class-balanced subset of ``limit`` samples, kept in the original order.

    Each class gets ``limit // K`` samples and the lowest labels one more until
    ``limit`` is reached; a class with too few samples gives all it has and the rest
    is shared among the others. The same (data, limit, seed) always gives the same
    subset, and a smaller limit gives a subset of a larger one. ``limit >= len(y)``
    returns the inputs themselves (no copy).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    if limit >= len(y):
        return x, y
    classes = torch.unique(y)  # sorted
    members = [torch.nonzero(y == c).flatten() for c in classes]
    quotas = _class_quotas([len(m) for m in members], limit)
    gen = torch.Generator().manual_seed(seed)
    # One permutation per class, drawn whatever the limit: subsets are nested.
    chosen = [m[torch.randperm(len(m), generator=gen)[:q]] for m, q in zip(members, quotas)]
    index = torch.cat(chosen).sort().values
    return x[index], y[index]


def _class_quotas(counts: list[int], limit: int) -> list[int]:
    """Water-filling: equal shares capped at each class's count, extras to low labels."""
    quotas = [0] * len(counts)
    remaining = min(limit, sum(counts))
    open_classes = [k for k, n in enumerate(counts) if n > 0]
    while remaining > 0:
        share, extra = divmod(remaining, len(open_classes))
        for i, k in enumerate(open_classes):
            give = min(counts[k] - quotas[k], share + (i < extra))
            quotas[k] += give
            remaining -= give
        open_classes = [k for k in open_classes if quotas[k] < counts[k]]
    return quotas
