"""Datasets as uint8 tensors: digits (offline), MNIST and CIFAR-10, decoded once per machine.

:func:`load_dataset` returns a :class:`DataArrays` holding a whole train and
validation split as uint8 ``(N, C, H, W)`` images and int64 labels. Training code
slices batches from these tensors and normalises/augments them batched on its device.
The validation split is each dataset's test split.

Modules; the first three lines never import torch, so grid.py checks and caches a
grid's data without it (:func:`prepare_dataset`):

- :mod:`toynet.data.prepare`: directories, and a dataset decoded once into the cache
  and checked.
- :mod:`toynet.data.layouts`: finds each dataset's files (or downloads them).
- :mod:`toynet.data.cache`: the per-machine, content-keyed, lock-protected,
  memory-mapped cache of decoded arrays; :mod:`toynet.data.checks` its sanity checks.
- :mod:`toynet.data.load`: :func:`load_dataset`, tensors with limits applied.
- :mod:`toynet.data.sources`: decodes the files (scikit-learn digits, torchvision's
  MNIST IDX parsers, CIFAR-10 pickles, image folders and the JPEG tarball).
- :mod:`toynet.data.arrays`: :class:`DataArrays`, balanced subsets.

Directories: data ``--data-dir`` > ``$TOYNET_DATA`` > the user cache dir (``toynet``);
decoded arrays ``cache_dir`` > ``$TOYNET_CACHE`` > ``<user cache dir>/toynet/arrays``.
Every data problem raises :class:`~toynet.errors.DataError` with a one-line message
that names the file or directory and what was expected.
"""

import importlib
from typing import Any

# Names resolved on first use (PEP 562), so that importing a torch-free submodule does
# not import torch through this package.
_EXPORTS = {
    "DataArrays": "toynet.data.arrays",
    "subset_balanced": "toynet.data.arrays",
    "load_dataset": "toynet.data.load",
    "Prepared": "toynet.data.prepare",
    "default_cache_dir": "toynet.data.prepare",
    "prepare_dataset": "toynet.data.prepare",
    "resolve_data_dir": "toynet.data.prepare",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
