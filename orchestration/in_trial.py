"""One-worker runs trained inside their Tune trial's own process, without Train's actors.

Through Ray Train, a one-worker run starts three more Ray processes per trial (the
controller, the worker and a synchronization actor), each paying for Python and
``ray.train`` and the worker for torch: most of a trial's 8–12 s of overhead on 2
cores (benchmarks/orchestration.py). With one worker there is nothing for Train to
coordinate, and Ray refuses ``ray.train`` calls (local mode included) inside a Tune
function: its advice is the ``ray.tune`` API. So the run's loop
(:func:`orchestration.train_worker.run_in_trial`) runs in the Tune trainable's
process, which holds the worker's CPUs and GPUs and which Tune reuses between trials:
torch is imported once per concurrent slot instead of once per trial.

What Train's controller did for such a run, :func:`fit_in_trial` does:

- each epoch's report reaches Tune (``report_to``, ``ray.tune.report``) as it is made;
- each checkpoint is persisted under the run's storage directory, and the latest is
  found again by a Tune retry or a rerun of the grid (:class:`Checkpoints`; Tune's
  own checkpoints would not survive a rerun, whose trials are new);
- a run that raises is restarted from its latest checkpoint, up to ``max_failures``
  times (Train's ``FailureConfig``). A crash of the process itself is Tune's to retry
  (its ``FailureConfig``), as it is for a Train controller's.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any, Callable

import pyarrow.fs as pafs
from ray.train import Checkpoint

from orchestration.layout import new_attempt, open_root, put_whole
from orchestration.relay import CHECKPOINT_PATH_KEY

log = logging.getLogger(__name__)

INDEX_FILE = "trial_checkpoints.json"  # the kept checkpoints' names, oldest first
Report = Callable[[dict[str, Any], Checkpoint | None], None]  # (metrics, rank 0's checkpoint or None)


class Checkpoints:
    """A run's persisted checkpoints under ``root`` (a directory or a pyarrow.fs URI).

    A checkpoint is copied to a new directory first; only then does the index name it,
    so a crash mid-copy leaves the previous checkpoint the latest. The ``keep`` newest
    are kept (as Train's ``CheckpointConfig(num_to_keep=2)``). One instance is a run's
    only writer: it reads the index once and keeps it.
    """

    def __init__(self, root: str, keep: int = 2) -> None:
        self._fs, self._base, _, _ = open_root(root, None)
        self._keep = keep
        self._kept: list[str] | None = None  # the index, once read

    def latest(self) -> Checkpoint | None:
        """The newest persisted checkpoint, or None before the first."""
        names = self._names()
        return Checkpoint(f"{self._base}/{names[-1]}", filesystem=self._fs) if names else None

    def persist(self, checkpoint: Checkpoint) -> Checkpoint:
        """Copy ``checkpoint`` here, make it the latest and drop the oldest beyond ``keep``."""
        name = f"checkpoint_{new_attempt()}"
        target = f"{self._base}/{name}"
        self._fs.create_dir(target, recursive=True)
        pafs.copy_files(checkpoint.path, target, source_filesystem=checkpoint.filesystem,
                        destination_filesystem=self._fs)
        names = [*self._names(), name]
        put_whole(self._fs, f"{self._base}/{INDEX_FILE}", json.dumps({"checkpoints": names[-self._keep:]}).encode())
        self._kept = names[-self._keep:]
        for old in names[:-self._keep]:
            self._fs.delete_dir(f"{self._base}/{old}")
        return Checkpoint(target, filesystem=self._fs)

    def _names(self) -> list[str]:
        if self._kept is None:
            try:
                with self._fs.open_input_stream(f"{self._base}/{INDEX_FILE}") as src:
                    self._kept = list(json.loads(src.read())["checkpoints"])
            except FileNotFoundError:
                self._kept = []
        return self._kept


def fit_in_trial(run_id: str, train: Callable[[Report, Checkpoint | None], None], checkpoints: Checkpoints,
                 report_to: Callable[[dict[str, Any]], None], max_failures: int) -> tuple[dict[str, Any], Checkpoint]:
    """Run ``train(report, resume_from)`` to its end in this process.

    Returns the last metrics reported and the latest checkpoint; raises the run's
    last error once ``max_failures`` restarts are spent.
    """
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        nonlocal last
        row = dict(metrics)
        if checkpoint is not None:
            row[CHECKPOINT_PATH_KEY] = checkpoints.persist(checkpoint).path
        last = metrics
        report_to(row)

    for attempt in itertools.count(1):
        try:
            train(report, checkpoints.latest())
            break
        except Exception as exc:
            if attempt > max_failures:
                raise
            log.warning("run %s failed (attempt %d of %d), restarting from its latest checkpoint: %s",
                        run_id, attempt, max_failures + 1, exc)
    latest = checkpoints.latest()
    if latest is None:
        raise RuntimeError(f"run {run_id} ended without a checkpoint")
    return last, latest
