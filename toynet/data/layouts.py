"""Where each dataset's files are: find them, or download them. Never imports torch.

- ``digits``: the ``digits.csv.gz`` that scikit-learn ships, read without importing it.
- ``mnist``: ``<root>/MNIST/raw/*-ubyte`` (torchvision's layout).
- ``cifar10``, first layout found: ``<root>/cifar-10-batches-py`` (torchvision's
  pickles); an image folder ``train/<class>/*`` + ``test/<class>/*`` in ``<root>``,
  ``<root>/cifar10`` or ``<root>/cifar10-folder``; ``<root>/cifar10-jpeg.tar.gz``
  holding that layout.

A :class:`Source` is what was found; :func:`toynet.data.sources.decode` turns it into
arrays. Keeping the finding torch-free lets grid.py check and cache a grid's data
before Ray starts without importing torch (~1.7 s, and ~0.5 s more at exit).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock

from toynet.errors import DataError
from toynet.spec import NUM_CLASSES

logger = logging.getLogger(__name__)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_PICKLES = "cifar-10-batches-py"
CIFAR_FOLDERS = (".", "cifar10", "cifar10-folder")
CIFAR_TARBALL = "cifar10-jpeg.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# What find_source looks for, for the "no data" message.
LAYOUTS = {
    "mnist": "MNIST/raw/*-ubyte IDX files",
    "cifar10": f"{CIFAR_PICKLES}/, train/+test/ class folders (also under cifar10/ or cifar10-folder/), "
               f"{CIFAR_TARBALL}",
}
DIGIT_CLASSES = tuple(str(k) for k in range(NUM_CLASSES))
DIGITS_VAL_FRACTION = 0.2  # of each class, rounded: toynet.data.sources.load_digits' split


@dataclass(frozen=True)
class Source:
    """A dataset's files on disk; ``kind`` ("idx", "pickle", "folder", "tar") says how
    to decode them, and with their content keys the cache.

    ``root`` is the base of the relative names hashed into the cache key; ``listing``
    holds a folder layout's ``(class, path)`` items per split, sorted.
    """

    kind: str
    root: Path
    files: tuple[str | Path, ...]
    listing: dict[str, list[tuple[str, str]]] = field(default_factory=dict, compare=False)


def find_source(name: str, root: Path) -> Source | None:
    """The first layout of ``name`` ("mnist" or "cifar10") under ``root``, or None."""
    return _find_mnist(root) if name == "mnist" else _find_cifar10(root)


def download(name: str, root: Path, lock_dir: Path) -> None:
    """Download ``name`` with torchvision into ``root``, one process at a time per ``root``."""
    from torchvision.datasets import CIFAR10, MNIST  # imports torch: only when downloading

    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{name}-{tag}.lock")):
            logger.info("downloading %s into %s", name, root)
            # A no-op when a previous holder of the lock already downloaded it.
            (MNIST if name == "mnist" else CIFAR10)(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 -- network and archive errors come in many types
        raise DataError(f"{name}: download into {root} failed ({one_line(exc)}); "
                        f"on an offline machine point --data-dir or TOYNET_DATA at a copy") from exc


def read_digits_csv() -> np.ndarray:
    """The data file of ``sklearn.datasets.load_digits`` as (1797, 65) float32: 64 pixels
    in 0..16, then the label. Read without importing scikit-learn.

    Importing scikit-learn 1.9 imports pandas and pyarrow (~1 s, and toynet promises
    never to import pyarrow); the 1,797 digits are one small CSV it ships.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataError(f"digits: scikit-learn's digits.csv.gz not found (looked in {path}); "
                        f"install scikit-learn>=1.3, which ships it")
    try:
        flat = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({one_line(exc)}); expected 1797 rows of 65 numbers") from exc
    if flat.shape != (1797, 65):
        raise DataError(f"{path}: shape {flat.shape}; expected 1797 rows of 65 numbers")
    return flat


def digits_split_sizes(labels: np.ndarray) -> tuple[int, int]:
    """(train, val) sizes of the digits split: ``DIGITS_VAL_FRACTION`` of each class,
    rounded as :func:`round` does, goes to validation."""
    n_val = sum(round(DIGITS_VAL_FRACTION * int(n)) for n in np.bincount(labels.astype(np.int64)) if n)
    return len(labels) - n_val, n_val


def _find_mnist(root: Path) -> Source | None:
    raw = root / "MNIST" / "raw"
    files = tuple(raw / f for pair in MNIST_FILES.values() for f in pair)
    if not all(f.is_file() for f in files):
        return None
    return Source("idx", raw, files)


def _find_cifar10(root: Path) -> Source | None:
    pickles = root / CIFAR_PICKLES
    if pickles.is_dir():
        return Source("pickle", pickles, tuple(p for p in pickles.iterdir() if p.is_file()))
    for sub in CIFAR_FOLDERS:
        base = root / sub
        if (base / "train").is_dir() and (base / "test").is_dir():
            listing = {split: _list_folder(base / split) for split in ("train", "test")}
            files = tuple(path for items in listing.values() for _, path in items)
            return Source("folder", base, files, listing)
    tarball = root / CIFAR_TARBALL
    if tarball.is_file():
        return Source("tar", root, (tarball,))
    return None


def _list_folder(split_dir: Path) -> list[tuple[str, str]]:
    """(class, path) of every image under ``split_dir/<class>/``, sorted."""
    # os.scandir and str paths: pathlib costs ~2 s per 60,000 files on Python 3.11,
    # and this listing runs on every load (it feeds the cache key).
    items = []
    class_dirs = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    for cls in class_dirs:
        class_dir = os.path.join(split_dir, cls)
        names = sorted(e.name for e in os.scandir(class_dir)
                       if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES))
        items += [(cls, os.path.join(class_dir, name)) for name in names]
    return items


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (parsers often add multi-line detail)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
