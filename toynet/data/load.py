"""Public entry points: where data and caches live, and :func:`load_dataset`."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import platformdirs
import torch

from toynet.data import cache, sources
from toynet.data.arrays import DataArrays, check_arrays, subset_balanced
from toynet.errors import ConfigError, DataError
from toynet.spec import DATASETS

logger = logging.getLogger(__name__)

# Part of every cache key: bump when decoding changes so old entries are not reused.
DECODE_VERSION = 1
ARRAY_NAMES = ("train_x", "train_y", "val_x", "val_y")
HOW_TO_POINT = "point --data-dir or TOYNET_DATA at a directory holding one, or set download: true"


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
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    for label, limit in (("train_limit", train_limit), ("val_limit", val_limit)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise ConfigError(f"{label} must be a positive integer or null, got {limit!r}")
    if name == "digits":
        # 50 ms to build from the CSV scikit-learn ships: not worth a cache entry.
        arrays = sources.load_digits()
        check_arrays(arrays, "scikit-learn digits")
    else:
        root = resolve_data_dir(data_dir)
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        arrays = _load_cached(name, _find_or_download(name, root, download, cache_root), cache_root)
    if train_limit is None and val_limit is None:
        return arrays
    train_x, train_y = _limit(arrays.train_x, arrays.train_y, train_limit)
    val_x, val_y = _limit(arrays.val_x, arrays.val_y, val_limit)
    return DataArrays(name, train_x, train_y, val_x, val_y, arrays.classes)


def _limit(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if limit is None else subset_balanced(x, y, limit)


def _find_or_download(name: str, root: Path, download: bool, cache_root: Path) -> sources.Source:
    """The first layout of ``name`` present under ``root``; downloads first if allowed."""
    source = sources.find_source(name, root)
    if source is None and download:
        sources.download(name, root, cache_root / "downloads")
        source = sources.find_source(name, root)
    if source is None:
        raise DataError(f"{name}: no data in {root} (looked for {sources.LAYOUTS[name]}); {HOW_TO_POINT}")
    return source


def _load_cached(name: str, source: sources.Source, cache_root: Path) -> DataArrays:
    """Decode ``source`` once into the cache entry for its content; return the mapped arrays."""
    digest = cache.fingerprint(source.files, source.root, cache_root / "fingerprints")
    entry = cache_root / f"{name}-{source.kind}-v{DECODE_VERSION}-{digest[:20]}"

    def build() -> cache.Built:
        start = time.perf_counter()
        arrays = source.decode()
        check_arrays(arrays, str(source.root))
        logger.info("decoded %s from %s in %.1f s", name, source.root, time.perf_counter() - start)
        named = {k: getattr(arrays, k).numpy() for k in ARRAY_NAMES}
        return named, {"classes": list(arrays.classes), "source": str(source.root), "kind": source.kind}

    named, info = cache.load_or_build(entry, ARRAY_NAMES, build)
    arrays = DataArrays(name, classes=tuple(info["classes"]), **{k: torch.from_numpy(named[k]) for k in ARRAY_NAMES})
    check_arrays(arrays, f"cache entry {entry}")
    return arrays
