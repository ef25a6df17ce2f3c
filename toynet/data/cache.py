"""Per-machine cache of decoded datasets: content-keyed, lock-protected, memory-mapped.

A cache entry is a directory ``<cache_dir>/<key>/`` holding one ``.npy`` file per
array plus ``meta.json``, written last. The key names the source kind and a hash of
the source files' bytes, so changed sources never hit a stale entry.

Contracts:

- :func:`load_or_build` returns arrays memory-mapped copy-on-write
  (``np.load(mmap_mode="c")``): processes on one node share the page cache instead of
  each holding a private copy, and a caller that writes into an array only changes
  its own pages, never the file.
- Concurrent callers with the same key build at most once: a :class:`filelock.FileLock`
  serialises building; each file is written under a temporary name in the entry
  directory and moved into place with ``os.replace``; ``meta.json`` comes last, and a
  reader trusts an entry only when every file matches it (size, shape, dtype). A
  partial or corrupt entry is rebuilt.
- Files of an entry are only ever replaced, never rewritten in place: a process that
  maps a file that shrinks under it dies with SIGBUS. To clear the cache, delete
  entry directories (open maps keep their data until released).
- :func:`fingerprint` hashes file contents once per file state: the content hash is
  memoised under a key of ``(path, size, mtime_ns, ctime_ns, inode)``, so a warm
  cache costs a few ``stat`` calls, not a re-read of the sources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from filelock import FileLock, Timeout

from toynet.errors import DataError

logger = logging.getLogger(__name__)

META_NAME = "meta.json"
# Bump when the meta layout changes; older entries are then rebuilt.
META_FORMAT = 1

Arrays = dict[str, np.ndarray]
Built = tuple[Arrays, dict[str, Any]]


def fingerprint(files: Iterable[str | os.PathLike[str]], root: Path, memo_dir: Path) -> str:
    """sha256 over the relative names and bytes of ``files`` (paths under ``root``).

    The result depends only on content and relative names, so the same data in two
    places shares one cache entry. Memoised in ``memo_dir`` by a stat key.
    """
    # Plain strings and os.stat: pathlib costs ~2 s per 60,000 files on Python 3.11.
    paths = sorted(os.fspath(f) for f in files)
    try:
        stats = [(p, *_stat_tuple(p)) for p in paths]
    except OSError as exc:
        raise DataError(f"{exc.filename}: cannot read source file ({exc.strerror})") from exc
    stat_key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    memo = memo_dir / f"{stat_key}.sha256"
    try:
        cached = memo.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass  # not memoised yet (or unreadable): hash the content
    digest = _content_hash(paths, os.fspath(root))
    try:
        _write_atomic(memo, digest.encode())
    except OSError as exc:
        # The memo only saves time; an unwritable memo dir must not fail the load.
        logger.warning("cannot memoise the source hash in %s: %s", memo_dir, exc)
    return digest


def _stat_tuple(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _content_hash(paths: list[str], root: str) -> str:
    h = hashlib.sha256()
    for path in paths:
        rel = Path(os.path.relpath(path, root)).as_posix()
        h.update(f"{rel}\0{os.stat(path).st_size}\0".encode())
        try:
            with open(path, "rb") as f:
                # 1 MiB chunks: large IDX/tar files never sit in memory twice.
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise DataError(f"{path}: cannot read source file ({exc.strerror})") from exc
    return h.hexdigest()


def load_or_build(entry_dir: Path, names: Iterable[str], build: Callable[[], Built]) -> Built:
    """Return ``(arrays, info)`` from the entry at ``entry_dir``, building it if needed.

    ``build`` returns the arrays (exactly ``names`` -> ndarray) and a JSON-able ``info``
    dict (e.g. class names) stored in the metadata. It runs at most once across all
    processes sharing the cache directory, while holding the entry's lock.
    """
    expected = sorted(names)
    entry = _read_entry(entry_dir, expected)
    if entry is not None:
        logger.info("loaded %s from cache", entry_dir)
        return entry
    lock = _entry_lock(entry_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        # Another process is building this entry; wait for it rather than decode twice.
        logger.info("waiting for %s (another process is building it)", lock.lock_file)
        lock.acquire()
    try:
        entry = _read_entry(entry_dir, expected, log_invalid=True)
        if entry is not None:
            logger.info("loaded %s from cache (built by another process)", entry_dir)
            return entry
        arrays, info = build()
        if sorted(arrays) != expected:
            raise ValueError(f"build returned arrays {sorted(arrays)}, expected {expected}")
        _write_entry(entry_dir, arrays, info)
    finally:
        lock.release()
    entry = _read_entry(entry_dir, expected, log_invalid=True)
    if entry is None:
        raise DataError(f"{entry_dir}: cache entry is invalid right after writing it; is the disk full?")
    return entry


def _entry_lock(entry_dir: Path) -> FileLock:
    try:
        entry_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{entry_dir.parent}: cannot create the cache directory ({exc.strerror})") from exc
    return FileLock(str(entry_dir.parent / f"{entry_dir.name}.lock"))


def _read_entry(entry_dir: Path, names: list[str], log_invalid: bool = False) -> Built | None:
    """The entry's arrays memory-mapped, or None if missing, partial or corrupt."""
    meta_path = entry_dir / META_NAME
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != META_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {META_FORMAT}")
        if sorted(meta["arrays"]) != names:
            raise ValueError(f"arrays {sorted(meta['arrays'])}, expected {names}")
        arrays = {name: _open_array(entry_dir, name, spec) for name, spec in meta["arrays"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if log_invalid:
            logger.warning("cache entry %s is corrupt (%s); rebuilding it", entry_dir, exc)
        return None
    return arrays, meta["info"]


def _open_array(entry_dir: Path, name: str, spec: dict[str, Any]) -> np.ndarray:
    path = entry_dir / f"{name}.npy"
    size = path.stat().st_size
    if size != spec["bytes"]:
        raise ValueError(f"{path.name} has {size} bytes, metadata says {spec['bytes']}")
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
        found, meta = f"{array.dtype}{list(array.shape)}", f"{spec['dtype']}{spec['shape']}"
        raise ValueError(f"{path.name} is {found}, metadata says {meta}")
    return array


def _write_entry(entry_dir: Path, arrays: Arrays, info: dict[str, Any]) -> None:
    """Write arrays then metadata; caller holds the entry lock."""
    try:
        # Drop a stale meta first so lock-free readers stop trusting the old files.
        (entry_dir / META_NAME).unlink(missing_ok=True)
        entry_dir.mkdir(parents=True, exist_ok=True)
        specs = {}
        for name, array in arrays.items():
            path = entry_dir / f"{name}.npy"
            _save_npy(path, array)
            specs[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": path.stat().st_size}
        meta = {"format": META_FORMAT, "arrays": specs, "info": info}
        _write_atomic(entry_dir / META_NAME, json.dumps(meta, indent=1).encode())
    except OSError as exc:
        raise DataError(f"{entry_dir}: cannot write the dataset cache ({exc.strerror}); "
                        f"set TOYNET_CACHE or cache_dir to a writable directory") from exc
    logger.info("cached arrays in %s", entry_dir)


def _tmp_name(path: Path) -> Path:
    """A temporary sibling of ``path``, unique per process and call (same filesystem)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Save via a temporary name so a crash never leaves a half-written ``path``."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
