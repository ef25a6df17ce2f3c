"""The artifacts store: every run's record, curve and weights, readable without Ray.

Layout under the root (a local directory or any ``pyarrow.fs`` URI)::

    <root>/<experiment>/runs/<run_id>/<attempt>/run.parquet      one row (records.RUN_SCHEMA)
                                               /epochs.parquet   one row per epoch
                                               /weights.pt       plain state_dict
                                               /events.out.tfevents.*   TensorBoard
                                               /_COMMITTED       JSON marker, written last

Each write goes into a fresh ``<attempt>`` directory (UTC time + random suffix, so
names sort by start time) and becomes visible only when its ``_COMMITTED`` marker
exists. Object stores have no atomic rename, but a marker written last works on
both local disk and S3: readers only ever open committed attempts, so a
half-written run is never seen, and concurrent writers never touch each other's
files. For each run id the newest committed attempt wins; older ones are deleted
after a commit, so rewriting a run replaces it. Experiment-level tables are
concatenations of the per-run files, rebuilt on every read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from orchestration import records
from orchestration import weights as weights_io
from orchestration.layout import (EPOCHS_FILE, ENV_ROOT, MARKER, NAME, RUN_FILE, STALE_UNCOMMITTED, attempt_time,
                                  check_name, default_root, new_attempt, open_root, put_whole)
from orchestration.records import RunRecord, StoredRun, StoreError, collect_versions
from orchestration.tables import closest, concat, one_line, parquet_bytes, read_parquet, sha256, where_mask
from orchestration.weights import WEIGHTS_FILE
from toynet.errors import WeightsError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ExperimentInfo:
    """One line of ``list``: run counts by status and the newest finish time."""

    name: str
    runs: int
    complete: int
    failed: int
    last_finished: str | None


class ArtifactStore:
    """Read and write run artifacts under ``root`` (local path or ``pyarrow.fs`` URI).

    ``root`` is kept in an absolute or URI form (``self.root``) that another node can
    use to open the same store. Pass ``filesystem`` to use a ready ``pyarrow.fs``
    filesystem; ``root`` is then a path inside it (for S3: ``bucket/prefix``).
    """

    def __init__(self, root: str | os.PathLike[str], *, filesystem: pafs.FileSystem | None = None,
                 tensorboard: bool = True) -> None:
        self._fs, self._base, self.root, self._display_base = open_root(root, filesystem)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self.tensorboard = tensorboard

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # ---- writing ------------------------------------------------------------------

    def check_writable(self) -> None:
        """Write and delete a probe file; raise a one-line :class:`StoreError` if that fails.

        Call before any training starts, so a bad root costs seconds, not a grid.
        """
        probe = self._path(f".probe-{uuid.uuid4().hex}")
        try:
            self._fs.create_dir(self._base, recursive=True)
            self._put(probe, b"probe")
            self._fs.delete_file(probe)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"artifacts root {self.root} is not writable: {one_line(exc)}") from None

    def write_run(self, record: RunRecord, weights: dict[str, torch.Tensor] | weights_io.Encoded | None) -> None:
        """Store one run atomically; a later write of the same (experiment, run id) replaces it.

        A complete run needs its weights: a ``state_dict``, or one already encoded by
        :func:`orchestration.weights.encode` (so this process need not import torch).
        A failed run is stored without weights. Safe to call from many processes or
        nodes at once, also for the same run id.
        """
        exp, run_id = check_name(record.experiment, "experiment"), check_name(record.run_id, "run")
        if record.status == "complete" and weights is None:
            raise StoreError(f"run {exp}/{run_id}: status complete needs its state_dict")
        if record.status == "failed" and weights is not None:
            log.warning("run %s/%s failed: its weights are not stored", exp, run_id)
            weights = None
        files: dict[str, bytes] = {}
        info = None
        if weights is not None:
            encoded = weights if isinstance(weights, weights_io.Encoded) else weights_io.encode(weights)
            files[WEIGHTS_FILE], info = encoded.data, encoded.info
        files[EPOCHS_FILE] = parquet_bytes(records.epoch_rows(record))
        files[RUN_FILE] = parquet_bytes(records.run_row(record, info))
        if self.tensorboard and record.curve:
            files.update(_tensorboard_files(record))
        attempt = new_attempt()
        adir = self._path(exp, "runs", run_id, attempt)
        marker = {"schema_version": records.SCHEMA_VERSION, "experiment": exp, "run_id": run_id,
                  "status": record.status, "finished_at": record.finished_at,
                  "files": {name: sha256(data) for name, data in files.items()}}
        try:
            self._fs.create_dir(adir, recursive=True)
            for name, data in files.items():
                self._put(f"{adir}/{name}", data)
            self._put(f"{adir}/{MARKER}", json.dumps(marker, indent=1).encode())  # the commit: last
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"could not store run {exp}/{run_id} under {self.root}: {one_line(exc)}") from None
        log.info("stored %s/%s (%s) in %s", exp, run_id, record.status, self._show(adir))
        self._collect_garbage(exp, run_id, keep=attempt)

    def _collect_garbage(self, exp: str, run_id: str, keep: str) -> None:
        """Delete attempts older than ``keep``: committed ones, and stale uncommitted leftovers.

        An uncommitted attempt younger than a day may be another writer still in
        flight, so it is left alone; readers ignore it either way.
        """
        now = dt.datetime.now(dt.timezone.utc)
        for attempt, names in self._scan(exp, run_id).get(run_id, {}).items():
            if attempt >= keep:
                continue
            started = attempt_time(attempt)
            if MARKER in names or started is None or now - started > STALE_UNCOMMITTED:
                try:
                    self._fs.delete_dir(self._path(exp, "runs", run_id, attempt))
                except OSError as exc:  # another writer's collector got there first
                    log.debug("could not delete old attempt %s: %s", attempt, exc)

    # ---- listing ------------------------------------------------------------------

    def experiments(self) -> list[ExperimentInfo]:
        """All experiments under the root, by name; reads only the commit markers."""
        infos = []
        for name in self._experiment_names():
            markers = self._map(lambda item: self._commit_of(name, *item), self._latest(name).items())
            stamps = [m["finished_at"] for m in markers]
            infos.append(ExperimentInfo(
                name=name, runs=len(markers),
                complete=sum(m["status"] == "complete" for m in markers),
                failed=sum(m["status"] == "failed" for m in markers),
                last_finished=max(stamps) if stamps else None,
            ))
        return infos

    def is_complete(self, experiment: str, run_id: str) -> bool:
        """True when the run's newest committed write has status complete (the grid skips it)."""
        check_name(experiment, "experiment")
        check_name(run_id, "run")
        attempt = self._latest(experiment, run_id).get(run_id)
        if attempt is None:
            return False
        return self._commit_of(experiment, run_id, attempt)["status"] == "complete"

    def run_ids(self, experiment: str) -> list[str]:
        """Run ids with a committed write in ``experiment``; none when it does not exist yet."""
        return sorted(self._latest(check_name(experiment, "experiment")))

    def runs(self, experiment: str, where: dict[str, Any] | None = None) -> pa.Table:
        """One row per run (records.RUN_SCHEMA), sorted by run id, filtered by ``where``.

        ``where`` maps column names to a value or a list of accepted values; strings
        are parsed by the column's type, so CLI text (``bn="true"``) works too.
        """
        table = concat(self._read_all(experiment, RUN_FILE), records.RUN_SCHEMA)
        return table.filter(where_mask(table, where)) if where else table

    def epochs(self, experiment: str) -> pa.Table:
        """One row per run × epoch (records.EPOCH_SCHEMA), sorted by run id then epoch."""
        return concat(self._read_all(experiment, EPOCHS_FILE), records.EPOCH_SCHEMA)

    def get_run(self, experiment: str, run_id: str) -> StoredRun:
        """The stored record of one run, with its curve and where its weights are."""
        def read(a: str) -> tuple[str, pa.Table, pa.Table]:
            return a, self._read_table(experiment, run_id, a, RUN_FILE), self._read_table(experiment, run_id, a, EPOCHS_FILE)

        attempt, run, epochs = self._committed(experiment, run_id, self._require_run(experiment, run_id), read)
        row, curve = run.to_pylist()[0], epochs.to_pylist()
        wpath = self._path(experiment, "runs", run_id, attempt, row["weights_file"]) if row["weights_file"] else None
        return records.record_from_rows(row, curve, attempt=attempt,
                                        weights_path=self._show(wpath) if wpath else None)

    def find_run(self, name: str, experiment: str | None = None) -> tuple[str, str]:
        """Resolve ``RUN``, ``EXP/RUN`` or a unique run-id prefix to (experiment, run_id)."""
        if experiment is None and "/" in name:
            experiment, name = name.split("/", 1)
        exps = [self._require_experiment(experiment)] if experiment else self._experiment_names()
        known = [(e, r) for e in exps for r in self._latest(e)]
        found = [(e, r) for e, r in known if r == name] or [(e, r) for e, r in known if r.startswith(name)]
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(f"{e}/{r}" for e, r in found[:4])
            raise StoreError(f"run {name!r} is ambiguous: {len(found)} matches ({shown}); give EXP/RUN or more of the id")
        where = f"experiment {experiment!r}" if experiment else f"any experiment under {self.root}"
        raise StoreError(f"unknown run {name!r} in {where}{closest(name, [r for _, r in known])}")

    # ---- weights ------------------------------------------------------------------

    def load_weights(self, experiment: str, run_id: str) -> dict[str, torch.Tensor]:
        """The run's state_dict, verified against its recorded sha256, loaded with weights_only=True."""
        def read(attempt: str) -> dict[str, torch.Tensor]:
            row = self._read_table(experiment, run_id, attempt, RUN_FILE).to_pylist()[0]
            if not row["weights_file"]:
                raise WeightsError(f"run {experiment}/{run_id} has no weights (status {row['status']}: {row['error']})")
            path = self._path(experiment, "runs", run_id, attempt, row["weights_file"])
            return weights_io.decode(self._get_committed(path), row["weights_sha256"], self._show(path))

        return self._committed(experiment, run_id, self._require_run(experiment, run_id), read, WeightsError)

    def load_model(self, experiment: str, run_id: str) -> torch.nn.Module:
        """A ToyNet built for the run's dataset and BN setting, with verified weights, in eval mode."""
        from toynet.model import ToyNet  # lazy: toynet.model is only needed to rebuild models

        state = self.load_weights(experiment, run_id)
        spec = self.get_run(experiment, run_id).spec
        model = ToyNet.for_dataset(spec.dataset, spec.bn)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"weights of run {experiment}/{run_id} do not fit ToyNet: {one_line(exc)}") from None
        return model.eval()

    # ---- internals: names and paths -------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts]) if self._base else "/".join(parts)

    def _show(self, path: str) -> str:
        """A path as a user (or another node) should see it: local path or URI."""
        rel = path[len(self._base):].lstrip("/") if path.startswith(self._base) else path
        return f"{self._display_base.rstrip('/')}/{rel}"

    def _experiment_names(self) -> list[str]:
        info = self._fs.get_file_info(self._base)
        if info.type == pafs.FileType.NotFound:
            raise StoreError(f"no artifacts store at {self.root} (set --root or ${ENV_ROOT})")
        entries = self._fs.get_file_info(pafs.FileSelector(self._base, recursive=False))
        return sorted(e.base_name for e in entries
                      if e.type == pafs.FileType.Directory and NAME.fullmatch(e.base_name))

    def _require_experiment(self, experiment: str) -> str:
        check_name(experiment, "experiment")
        names = self._experiment_names()
        if experiment not in names:
            raise StoreError(f"unknown experiment {experiment!r} under {self.root}{closest(experiment, names)}")
        return experiment

    def _require_run(self, experiment: str, run_id: str) -> str:
        """The newest committed attempt of a run, or a StoreError naming close run ids."""
        latest = self._latest(self._require_experiment(experiment))
        if run_id not in latest:
            raise StoreError(f"unknown run {run_id!r} in experiment {experiment!r}{closest(run_id, latest)}")
        return latest[run_id]

    def _scan(self, experiment: str, run_id: str | None = None) -> dict[str, dict[str, set[str]]]:
        """{run_id: {attempt: file names}} from one recursive listing (one paged LIST on S3).

        With ``run_id``, lists only that run's directory.
        """
        where = self._path(experiment, "runs", run_id) if run_id else self._path(experiment, "runs")
        sel = pafs.FileSelector(where, recursive=True, allow_not_found=True)
        found: dict[str, dict[str, set[str]]] = {}
        prefix = self._path(experiment, "runs") + "/"
        for info in self._fs.get_file_info(sel):
            parts = info.path[len(prefix):].split("/") if info.path.startswith(prefix) else []
            if info.type == pafs.FileType.File and len(parts) == 3:
                found.setdefault(parts[0], {}).setdefault(parts[1], set()).add(parts[2])
        return found

    def _latest(self, experiment: str, run_id: str | None = None) -> dict[str, str]:
        """{run_id: newest committed attempt}; uncommitted attempts are invisible."""
        latest = {}
        for run_id, attempts in self._scan(experiment, run_id).items():
            committed = [a for a, names in attempts.items() if MARKER in names]
            if committed:
                latest[run_id] = max(committed)
        return latest

    # ---- internals: reading and writing files ---------------------------------------

    def _put(self, path: str, data: bytes) -> None:
        put_whole(self._fs, path, data)

    def _get(self, path: str) -> pa.Buffer:
        """A whole file as an Arrow-owned buffer.

        Not Python ``bytes``: Parquet readers finish on Arrow's I/O threads, and
        releasing a Python-owned buffer there at interpreter exit aborts the process
        ("terminate called without an active exception").
        """
        with self._fs.open_input_file(path) as handle:  # seekable: read_buffer stays Arrow-owned
            return handle.read_buffer()

    def _get_committed(self, path: str) -> pa.Buffer:
        try:
            return self._get(path)
        except FileNotFoundError:
            raise _Vanished(self._show(path)) from None

    def _committed(self, experiment: str, run_id: str, attempt: str, read: Callable[[str], T],
                   missing: type[Exception] = StoreError) -> T:
        """``read(attempt)``; if a newer write replaced (and deleted) that attempt meanwhile, read the newer one.

        A file missing with nothing newer is damage: ``missing`` names it.
        """
        for _ in range(5):
            try:
                return read(attempt)
            except _Vanished as gone:
                newer = self._latest(experiment, run_id).get(run_id)
                if newer is None or newer <= attempt:
                    raise missing(f"{gone} is missing from a committed run; rewrite or delete that run") from None
                attempt = newer
        raise StoreError(f"run {experiment}/{run_id} kept being rewritten while it was read; try again")

    def _read_all(self, experiment: str, name: str) -> list[pa.Table]:
        """File ``name`` of every run's newest committed attempt, in run id order."""
        latest = sorted(self._latest(self._require_experiment(experiment)).items())
        return self._map(lambda item: self._committed(
            experiment, item[0], item[1], lambda a: self._read_table(experiment, item[0], a, name)), latest)

    def _commit_of(self, experiment: str, run_id: str, attempt: str) -> dict[str, Any]:
        """The commit marker of a run's newest write: status, finish time, file checksums."""
        return self._committed(experiment, run_id, attempt, lambda a: self._marker(experiment, run_id, a))

    def _marker(self, experiment: str, run_id: str, attempt: str) -> dict[str, Any]:
        path = self._path(experiment, "runs", run_id, attempt, MARKER)
        try:
            marker = json.loads(self._get_committed(path).to_pybytes())
            marker["files"], marker["status"], marker["finished_at"]  # noqa: B018 (presence check)
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"commit marker {self._show(path)} is corrupt; delete that run directory") from None
        return marker

    def _read_table(self, experiment: str, run_id: str, attempt: str, name: str) -> pa.Table:
        """One committed Parquet file, checked against the sha256 in its commit marker."""
        marker = self._marker(experiment, run_id, attempt)
        path = self._path(experiment, "runs", run_id, attempt, name)
        schema = records.RUN_SCHEMA if name == RUN_FILE else records.EPOCH_SCHEMA
        data = self._get_committed(path)
        if sha256(data) != marker["files"].get(name):
            raise StoreError(f"{self._show(path)} is corrupt: its sha256 differs from its commit marker")
        return read_parquet(data, schema, self._show(path))

    def _map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """Run small reads in parallel: object-store latency dominates, not CPU."""
        items = list(items)
        if self._local or len(items) < 4:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(fn, items))


class _Vanished(Exception):
    """A committed file is gone: a newer write replaced its attempt, or it was damaged."""


def open_store(root: str | os.PathLike[str] | None = None) -> ArtifactStore:
    """The store at ``root``, ``$TOYNET_ARTIFACTS`` or ``./artifacts``."""
    return ArtifactStore(root if root is not None else default_root())


def _tensorboard_files(record: RunRecord) -> dict[str, bytes]:
    from orchestration import tb  # lazy: importing TensorBoard costs about a second

    return tb.event_files(record)


__all__ = ["ArtifactStore", "ExperimentInfo", "RunRecord", "StoredRun", "StoreError", "check_name",
           "collect_versions", "default_root", "open_store"]
