"""Get a dataset ready on this machine without importing torch: find (or download) its
files, decode them once into the node's cache, check the cached arrays.

:func:`cached_arrays` is what :func:`toynet.data.load_dataset` builds its tensors on;
:func:`prepare_dataset` is what grid.py runs before Ray starts, so that missing or bad
data fails there and every trial then maps a ready cache entry. Only a cache miss
decodes, and only decoding imports torch (:mod:`toynet.data.sources`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from toynet.data import cache, layouts
from toynet.data.checks import ARRAY_NAMES, check_named
from toynet.errors import ConfigError, DataError
from toynet.spec import DATASETS

logger = logging.getLogger(__name__)

# Part of every cache key: bump when decoding changes so old entries are not reused.
DECODE_VERSION = 1
HOW_TO_POINT = "point --data-dir or TOYNET_DATA at a directory holding one, or set download: true"


@dataclass(frozen=True)
class Prepared:
    """A dataset ready on this machine: its full split sizes and where it comes from."""

    name: str
    train: int
    val: int
    origin: str


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$TOYNET_DATA``, else the user cache dir."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("TOYNET_DATA")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_cache_path("toynet")


def default_cache_dir() -> Path:
    """Where decoded arrays are cached: ``$TOYNET_CACHE``, else ``<user cache dir>/toynet/arrays``."""
    env = os.environ.get("TOYNET_CACHE")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_cache_path("toynet") / "arrays"


def check_dataset_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is one of ``spec.DATASETS``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def prepare_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                    cache_dir: str | Path | None = None) -> Prepared:
    """Make ``name`` loadable on this machine (decoded and cached once); torch-free.

    Raises ConfigError for an unknown name and DataError for missing or bad data, with
    the messages :func:`toynet.data.load_dataset` would give.
    """
    check_dataset_name(name)
    if name == "digits":
        labels = layouts.read_digits_csv()[:, 64]
        train, val = layouts.digits_split_sizes(labels)
        return Prepared(name, train, val, "scikit-learn's digits.csv.gz")
    named, _ = cached_arrays(name, data_dir, download=download, cache_dir=cache_dir)
    return Prepared(name, len(named["train_y"]), len(named["val_y"]), str(resolve_data_dir(data_dir)))


def cached_arrays(name: str, data_dir: str | Path | None, *, download: bool,
                  cache_dir: str | Path | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """``name``'s (mnist or cifar10) checked arrays, memory-mapped from this machine's
    cache, and its class names; decodes and caches them on first use.

    Safe to call from several processes at once: the source is downloaded and decoded
    once, the others wait, then map the cached arrays (shared page cache).
    """
    root = resolve_data_dir(data_dir)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source = _find_or_download(name, root, download, cache_root)
    digest = cache.fingerprint(source.files, source.root, cache_root / "fingerprints")
    entry = cache_root / f"{name}-{source.kind}-v{DECODE_VERSION}-{digest[:20]}"

    def build() -> cache.Built:
        from toynet.data import sources  # imports torch: only a cache miss decodes

        start = time.perf_counter()
        arrays = sources.decode(source)
        named = {k: getattr(arrays, k).numpy() for k in ARRAY_NAMES}
        check_named(name, named, arrays.classes, str(source.root))
        logger.info("decoded %s from %s in %.1f s", name, source.root, time.perf_counter() - start)
        return named, {"classes": list(arrays.classes), "source": str(source.root), "kind": source.kind}

    named, info = cache.load_or_build(entry, ARRAY_NAMES, build)
    classes = tuple(info["classes"])
    check_named(name, named, classes, f"cache entry {entry}")
    return named, classes


def _find_or_download(name: str, root: Path, download: bool, cache_root: Path) -> layouts.Source:
    """The first layout of ``name`` present under ``root``; downloads first if allowed."""
    source = layouts.find_source(name, root)
    if source is None and download:
        layouts.download(name, root, cache_root / "downloads")
        source = layouts.find_source(name, root)
    if source is None:
        raise DataError(f"{name}: no data in {root} (looked for {layouts.LAYOUTS[name]}); {HOW_TO_POINT}")
    return source
