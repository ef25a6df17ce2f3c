"""Train → Tune: each epoch's report, relayed by the Tune driver's own training thread.

Ray 2.60's ``TuneReportCallback`` puts each Train report into a one-slot queue actor,
and Tune's *main* thread moves it into the function trainable's one-slot result queue
whenever Tune asks the trial for its next result. If the run's last report is still
waiting when the driver function returns, the training thread has already put the
driver's final result into that slot, and the main thread blocks forever putting the
report after it: the grid hangs (reproduced by
tests/test_ray_grid.py::test_grid_finishes_when_tune_loop_lags_behind_the_run; a
busy Tune loop or a quick controller shutdown is enough).

Here ``trainer.fit()`` runs in a helper thread while the driver's training thread
takes each report from the queue and hands it to ``ray.tune.report``: one producer
for Tune's result slot, in order, with Tune's own back-pressure. The queue also ends
with a sentinel, so the driver returns only after every report has reached Tune.

Items carry a token per ``fit``: one queue serves every trial a reused driver process
runs, and anything an abandoned earlier run still sends is skipped.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, TypeVar

from ray.train import UserCallback
from ray.util.queue import Queue

T = TypeVar("T")
CHECKPOINT_PATH_KEY = "checkpoint_path"  # what Ray's TuneReportCallback adds

_SHARED: Queue | None = None


def result_queue(shared: bool) -> Queue:
    """A one-slot queue actor; with ``shared``, the same one for every trial of this process.

    Tune would start a new queue actor (one more Python process) for every trial.
    """
    global _SHARED
    if not shared:
        return Queue(1, actor_options={"num_cpus": 0})
    if _SHARED is None:
        _SHARED = Queue(1, actor_options={"num_cpus": 0})
    return _SHARED


class ForwardReports(UserCallback):
    """Runs in the Train controller: sends each report's metrics (rank 0's) to the driver."""

    def __init__(self, queue: Queue, token: str) -> None:
        self._queue, self._token = queue, token

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = dict(metrics[0])
        if checkpoint:
            row[CHECKPOINT_PATH_KEY] = checkpoint.path
        self._queue.put((self._token, row))  # blocks until the driver has taken the last one


class Relay:
    """One fit's reports: put :attr:`callback` in the Train ``RunConfig``, then :meth:`run`."""

    def __init__(self, queue: Queue) -> None:
        self._queue, self._token = queue, uuid.uuid4().hex
        self.callback = ForwardReports(queue, self._token)

    def run(self, fit: Callable[[], T]) -> T:
        """Run ``fit`` in a helper thread and report its results to Tune from this one.

        Returns what ``fit`` returns, or raises what it raised, once all its reports
        are in Tune.
        """
        from ray import tune  # the driver is a Tune trainable: already imported there

        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=self._fit, args=(fit, outcome), name="train-fit", daemon=True)
        thread.start()
        while True:
            token, row = self._queue.get()
            if token != self._token:
                continue  # from an earlier run of this process that was stopped mid-way
            if row is None:
                break
            tune.report(row)
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _fit(self, fit: Callable[[], Any], outcome: dict[str, Any]) -> None:
        try:
            outcome["result"] = fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver's thread
            outcome["error"] = exc
        finally:
            # Last in the queue: each report's put returned before fit() did.
            self._queue.put((self._token, None))
