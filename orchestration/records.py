"""What a run leaves behind: the :class:`RunRecord` and the declared Parquet schemas.

The schemas are declared once here, with :data:`SCHEMA_VERSION`; the store writes
one ``run.parquet`` row per run and one ``epochs.parquet`` row per run × epoch, and
the experiment-level tables are concatenations of those files. Bump the version
when a column changes meaning or disappears; adding a nullable column does not
need a bump, because readers project onto the schema they know.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from toynet.errors import ToyNetError
from toynet.spec import RunSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES: tuple[str, ...] = ("complete", "failed")
METRICS: tuple[str, ...] = ("loss", "acc", "val_loss", "val_acc")
CURVE_FIELDS: tuple[str, ...] = ("epoch", *METRICS, "lr", "seconds")


class StoreError(ToyNetError):
    """The artifacts store, a stored file or a name given to it is unusable."""


_SPEC_FIELDS: list[pa.Field] = [
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("bn", pa.bool_(), nullable=False),
    pa.field("batch_size", pa.int64(), nullable=False),
    pa.field("transforms", pa.string(), nullable=False),
    pa.field("epochs", pa.int64(), nullable=False),
    pa.field("lr", pa.float64(), nullable=False),
    pa.field("momentum", pa.float64(), nullable=False),
    pa.field("weight_decay", pa.float64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("train_limit", pa.int64()),
    pa.field("val_limit", pa.int64()),
]
SPEC_COLUMNS: tuple[str, ...] = tuple(f.name for f in _SPEC_FIELDS)
_META = {b"toynet.schema_version": str(SCHEMA_VERSION).encode()}

# One row per run. Final metrics are the last epoch's (the seed reports the last
# epoch because of the cosine schedule); best_* are for convenience only.
RUN_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        *_SPEC_FIELDS,
        pa.field("epochs_done", pa.int64(), nullable=False),
        *[pa.field(m, pa.float64()) for m in METRICS],
        pa.field("best_val_acc", pa.float64()),
        pa.field("best_epoch", pa.int64()),
        pa.field("wall_seconds", pa.float64(), nullable=False),
        pa.field("train_images_per_s", pa.float64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("num_workers", pa.int64(), nullable=False),
        pa.field("versions", pa.string(), nullable=False),  # JSON object: CSV-exportable
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("weights_file", pa.string()),
        pa.field("weights_sha256", pa.string()),
        pa.field("weights_bytes", pa.int64()),
        pa.field("num_parameters", pa.int64()),
        # JSON object of the execution options that can change numerics (TrainOptions.numerics);
        # null for runs stored before the column existed (they ran with the defaults).
        pa.field("train_options", pa.string()),
    ],
    metadata=_META,
)

# One row per run × epoch.
EPOCH_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int64(), nullable=False),
        *[pa.field(name, pa.float64(), nullable=False) for name in CURVE_FIELDS[1:]],
    ],
    metadata=_META,
)


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunRecord:
    """Everything a finished (or failed) run reports; the store adds the weights.

    ``curve`` holds one dict per epoch with the keys of :data:`CURVE_FIELDS`,
    epochs numbered 1, 2, ... A complete run's curve covers all ``spec.epochs``;
    a failed run keeps whatever epochs it finished and its ``error``.
    """

    experiment: str
    spec: RunSpec
    status: str
    curve: list[dict[str, float]]
    wall_seconds: float
    train_images_per_s: float
    device: str
    num_workers: int
    versions: dict[str, str]
    error: str | None = None
    finished_at: str = field(default_factory=_utc_now)
    train_options: dict[str, Any] = field(default_factory=dict)  # TrainOptions.numerics()

    def __post_init__(self) -> None:
        _check_record(self)

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def final(self) -> dict[str, float | None]:
        """The last epoch's loss, acc, val_loss, val_acc (None for an empty curve)."""
        last = self.curve[-1] if self.curve else {}
        return {m: (float(last[m]) if m in last else None) for m in METRICS}


@dataclass(frozen=True)
class StoredRun(RunRecord):
    """A :class:`RunRecord` read back from the store, with where its weights live."""

    weights_path: str | None = None
    weights_sha256: str | None = None
    weights_bytes: int | None = None
    num_parameters: int | None = None
    attempt: str = ""


def _check_record(rec: RunRecord) -> None:
    """Reject records that would make the tables lie (wrong status, gaps in the curve)."""
    where = f"run record {rec.experiment}/{rec.spec.run_id}"
    if rec.status not in STATUSES:
        raise StoreError(f"{where}: status {rec.status!r}; expected one of {list(STATUSES)}")
    for i, row in enumerate(rec.curve, start=1):
        missing = [k for k in CURVE_FIELDS if k not in row]
        if missing:
            raise StoreError(f"{where}: curve row {i} lacks {missing}; expected keys {list(CURVE_FIELDS)}")
        if int(row["epoch"]) != i:
            raise StoreError(f"{where}: curve row {i} has epoch {row['epoch']}; expected epochs 1, 2, ... in order")
    if rec.status == "complete" and len(rec.curve) != rec.spec.epochs:
        raise StoreError(
            f"{where}: status complete with {len(rec.curve)} curve rows; expected {rec.spec.epochs} (spec.epochs)"
        )
    if rec.status == "failed" and not rec.error:
        raise StoreError(f"{where}: status failed needs an error message")
    try:
        dt.datetime.fromisoformat(rec.finished_at)
    except (TypeError, ValueError):
        raise StoreError(f"{where}: finished_at {rec.finished_at!r} is not an ISO timestamp") from None


def run_row(rec: RunRecord, weights: dict[str, Any] | None) -> pa.Table:
    """The one-row ``run.parquet`` table of a record; ``weights`` has file, sha256, bytes, params."""
    best_epoch, best = None, None
    for row in rec.curve:
        if best is None or float(row["val_acc"]) > best:
            best_epoch, best = int(row["epoch"]), float(row["val_acc"])
    weights = weights or {}
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": rec.experiment,
        "run_id": rec.run_id,
        "status": rec.status,
        "error": rec.error,
        **rec.spec.to_dict(),
        "epochs_done": len(rec.curve),
        **rec.final,
        "best_val_acc": best,
        "best_epoch": best_epoch,
        "wall_seconds": float(rec.wall_seconds),
        "train_images_per_s": float(rec.train_images_per_s),
        "device": rec.device,
        "num_workers": int(rec.num_workers),
        "versions": json.dumps(rec.versions, sort_keys=True),
        "finished_at": _parse_time(rec.finished_at),
        "weights_file": weights.get("file"),
        "weights_sha256": weights.get("sha256"),
        "weights_bytes": weights.get("bytes"),
        "num_parameters": weights.get("num_parameters"),
        "train_options": json.dumps(rec.train_options, sort_keys=True),
    }
    return pa.Table.from_pylist([row], schema=RUN_SCHEMA)


def epoch_rows(rec: RunRecord) -> pa.Table:
    """The ``epochs.parquet`` table of a record: one row per finished epoch."""
    rows = [
        {"experiment": rec.experiment, "run_id": rec.run_id, "epoch": int(r["epoch"]),
         **{k: float(r[k]) for k in CURVE_FIELDS[1:]}}
        for r in rec.curve
    ]
    return pa.Table.from_pylist(rows, schema=EPOCH_SCHEMA)


def record_from_rows(run: dict[str, Any], curve: list[dict[str, Any]], **stored: Any) -> StoredRun:
    """Rebuild a :class:`StoredRun` from a ``run.parquet`` row and its epoch rows."""
    spec = RunSpec.from_dict({k: run[k] for k in SPEC_COLUMNS}, where=f"stored run {run['run_id']}")
    finished = run["finished_at"]
    return StoredRun(
        experiment=run["experiment"],
        spec=spec,
        status=run["status"],
        curve=[{"epoch": int(r["epoch"]), **{k: float(r[k]) for k in CURVE_FIELDS[1:]}} for r in curve],
        wall_seconds=run["wall_seconds"],
        train_images_per_s=run["train_images_per_s"],
        device=run["device"],
        num_workers=run["num_workers"],
        versions=json.loads(run["versions"]),
        error=run["error"],
        finished_at=finished.isoformat() if isinstance(finished, dt.datetime) else str(finished),
        weights_sha256=run["weights_sha256"],
        weights_bytes=run["weights_bytes"],
        num_parameters=run["num_parameters"],
        train_options=json.loads(run["train_options"]) if run.get("train_options") else {},
        **stored,
    )


def check_schema_version(table: pa.Table, where: str) -> None:
    """Refuse files written by a newer, unknown schema instead of misreading them."""
    raw = (table.schema.metadata or {}).get(b"toynet.schema_version", b"0")
    version = int(raw)
    if version > SCHEMA_VERSION or version < 1:
        raise StoreError(
            f"{where}: schema version {version}; this toynet-grid reads versions 1..{SCHEMA_VERSION}"
        )


def _parse_time(text: str) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def collect_versions() -> dict[str, str]:
    """Installed versions of torch, torchvision, ray, python and this package, plus the git commit.

    Reads package metadata only (never imports ray). ``TOYNET_GIT_COMMIT`` overrides the
    commit, for job copies of the code that carry no ``.git``.
    """
    import platform

    versions = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "ray", "toynet-grid"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    commit = os.environ.get("TOYNET_GIT_COMMIT") or _git_commit(Path(__file__).resolve().parent)
    if commit:
        versions["git_commit"] = commit
    return versions


def _git_commit(where: Path) -> str | None:
    """HEAD of the repository holding this package, with ``-dirty`` for uncommitted changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40", "--match=NO-TAGS"],
            cwd=where, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None
