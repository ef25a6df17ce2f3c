"""Sanity checks of a dataset's arrays against ``toynet.spec``, in numpy terms (no torch).

Run on freshly decoded data and on every cache hit (cheap: it reads labels only).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from toynet.errors import DataError
from toynet.spec import INPUT_SHAPES, NUM_CLASSES

ARRAY_NAMES = ("train_x", "train_y", "val_x", "val_y")  # a dataset's arrays, in this order


def check_named(name: str, named: Mapping[str, np.ndarray], classes: Sequence[str], where: str) -> None:
    """Check ``train_x/train_y/val_x/val_y`` of dataset ``name``; ``where`` names the source.

    Images must be uint8 ``(N>0, C, H, W)`` of the dataset's shape, labels int64 ``(N,)``
    in ``0..len(classes)-1``, and there must be ``NUM_CLASSES`` classes. Raises DataError.
    """
    shape = INPUT_SHAPES[name]
    for split in ("train", "val"):
        x, y = named[f"{split}_x"], named[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != shape or len(x) == 0:
            raise DataError(f"{where}: {name} {split} images are {x.dtype} {tuple(x.shape)}; "
                            f"expected uint8 (N>0, {', '.join(map(str, shape))})")
        if y.dtype != np.int64 or y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{where}: {name} {split} labels are {y.dtype} {tuple(y.shape)}; "
                            f"expected int64 ({len(x)},), one per image")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(classes):
            raise DataError(f"{where}: {name} {split} labels span {low}..{high}; expected 0..{len(classes) - 1}")
    if len(classes) != NUM_CLASSES:
        raise DataError(f"{where}: {name} has {len(classes)} classes {list(classes)}; expected {NUM_CLASSES}")
