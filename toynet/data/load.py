"""The public entry point :func:`load_dataset`: a dataset as tensors, limits applied."""

from __future__ import annotations

from pathlib import Path

import torch

from toynet.data import sources
from toynet.data.arrays import DataArrays, check_arrays, subset_balanced
from toynet.data.checks import ARRAY_NAMES
from toynet.data.prepare import cached_arrays, check_dataset_name
from toynet.errors import ConfigError


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    train_limit: int | None = None,
    val_limit: int | None = None,
    cache_dir: str | Path | None = None,
) -> DataArrays:
    """Load ``name`` (one of ``spec.DATASETS``), decoding and caching it on first use.

    Safe to call from several processes at once: the source is downloaded and decoded
    once, the others wait, then map the cached arrays (shared page cache). Call it in
    each worker rather than shipping the tensors: pickling copies them. Limits select
    a fixed class-balanced subset (:func:`subset_balanced`); ``None`` keeps all.
    Raises ConfigError for bad arguments and DataError for missing or bad data.
    """
    check_dataset_name(name)
    for label, limit in (("train_limit", train_limit), ("val_limit", val_limit)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise ConfigError(f"{label} must be a positive integer or null, got {limit!r}")
    if name == "digits":
        # 50 ms to build from the CSV scikit-learn ships: not worth a cache entry.
        arrays = sources.load_digits()
        check_arrays(arrays, "scikit-learn digits")
    else:
        named, classes = cached_arrays(name, data_dir, download=download, cache_dir=cache_dir)
        arrays = DataArrays(name, classes=classes, **{k: torch.from_numpy(named[k]) for k in ARRAY_NAMES})
    if train_limit is None and val_limit is None:
        return arrays
    train_x, train_y = _limit(arrays.train_x, arrays.train_y, train_limit)
    val_x, val_y = _limit(arrays.val_x, arrays.val_y, val_limit)
    return DataArrays(name, train_x, train_y, val_x, val_y, arrays.classes)


def _limit(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if limit is None else subset_balanced(x, y, limit)
