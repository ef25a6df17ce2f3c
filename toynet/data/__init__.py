"""Datasets as uint8 tensors: digits (offline), MNIST and CIFAR-10, decoded once per machine.

:func:`load_dataset` returns a :class:`DataArrays` holding a whole train and
validation split as uint8 ``(N, C, H, W)`` images and int64 labels. Training code
slices batches from these tensors and normalises/augments them batched on its device.
The validation split is each dataset's test split.

Modules, dependencies flowing downwards:

- :mod:`toynet.data.load`: the public entry points; resolves directories, applies limits.
- :mod:`toynet.data.sources`: finds each dataset's files and decodes them
  (scikit-learn digits, torchvision's MNIST IDX parsers, CIFAR-10 pickles, image
  folders and the JPEG tarball).
- :mod:`toynet.data.cache`: the per-machine, content-keyed, lock-protected,
  memory-mapped cache of decoded arrays.
- :mod:`toynet.data.arrays`: :class:`DataArrays`, sanity checks, balanced subsets.

Directories: data ``--data-dir`` > ``$TOYNET_DATA`` > the user cache dir (``toynet``);
decoded arrays ``cache_dir`` > ``$TOYNET_CACHE`` > ``<user cache dir>/toynet/arrays``.
Every data problem raises :class:`~toynet.errors.DataError` with a one-line message
that names the file or directory and what was expected.
"""

from toynet.data.arrays import DataArrays, subset_balanced
from toynet.data.load import default_cache_dir, load_dataset, resolve_data_dir

__all__ = ["DataArrays", "default_cache_dir", "load_dataset", "resolve_data_dir", "subset_balanced"]
