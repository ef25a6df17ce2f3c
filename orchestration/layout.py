"""Where things live in the store: the root, safe names, and attempt directories.

A root is a local directory (made absolute) or any ``pyarrow.fs`` URI; it is kept in
a form another node can open. Experiment and run names become single directory
names, so they are checked here before any path is built from them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from orchestration.records import StoreError
from orchestration.tables import one_line

ENV_ROOT = "TOYNET_ARTIFACTS"
MARKER = "_COMMITTED"
RUN_FILE, EPOCHS_FILE = "run.parquet", "epochs.parquet"
# The same rule as orchestration.config's experiment names: one path component, no
# leading dot (so ".ray", probes and temporary names never look like experiments).
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
STALE_UNCOMMITTED = dt.timedelta(hours=24)  # crashed writers' leftovers older than this go


def default_root() -> str:
    """``$TOYNET_ARTIFACTS`` or ``./artifacts``."""
    return os.environ.get(ENV_ROOT) or "artifacts"


def check_name(name: str, kind: str) -> str:
    """Accept a single safe path component; reject ``../``, absolute paths, empty and odd names."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise StoreError(
            f"invalid {kind} name {name!r}: expected 1-128 letters, digits, '.', '_' or '-', "
            "not starting with '.' (one directory name inside the store root)"
        )
    return name


def open_root(root: str | os.PathLike[str], filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str, str, str]:
    """(filesystem, base path inside it, root as given to other nodes, prefix shown to users)."""
    text = os.fspath(root)
    if not text:
        raise StoreError("artifacts root is empty; expected a directory or a URI such as s3://bucket/prefix")
    if filesystem is not None:
        base = text.rstrip("/")
        if isinstance(filesystem, pafs.LocalFileSystem):
            base = str(Path(base).expanduser().resolve())
            return filesystem, base, base, base
        uri = f"{filesystem.type_name}://{base}" if filesystem.type_name in ("s3", "gcs") else base
        uri = uri.replace("gcs://", "gs://", 1)
        return filesystem, base, uri, uri
    if "://" not in text:
        base = str(Path(text).expanduser().resolve())
        return pafs.LocalFileSystem(), base, base, base
    try:
        fs, base = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(f"artifacts root {text!r} is not a usable URI: {one_line(exc)}") from None
    return fs, base.rstrip("/"), text, text.split("?", 1)[0].rstrip("/")


def put_whole(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole file so readers see all of it or nothing.

    Local: temporary name, then rename. Object stores publish an object only when its
    upload completes, so a direct write is already atomic there.
    """
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    with fs.open_output_stream(target) as out:
        out.write(data)
    if local:
        fs.move(target, path)


def new_attempt() -> str:
    """A name that sorts by start time and never collides: 20250101T120000123456Z-1a2b3c4d."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def attempt_time(attempt: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(attempt.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
