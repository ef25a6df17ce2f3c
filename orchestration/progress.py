"""Grid progress for the console: runs done / running / pending, live epochs, ETA.

The estimate weighs each run by its work (epochs × training images), so a finished
MNIST run does not make a 240-epoch CIFAR-10 run look nearly done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ray import tune

from toynet.spec import RunSpec

# Training-set sizes, used only to weigh runs against each other for the ETA.
_TRAIN_IMAGES = {"digits": 1_437, "mnist": 60_000, "cifar10": 50_000}


def run_work(spec: RunSpec) -> float:
    """Relative cost of a run: epochs × training images."""
    images = _TRAIN_IMAGES.get(spec.dataset, 50_000)
    if spec.train_limit:
        images = min(images, spec.train_limit)
    return float(spec.epochs * images)


@dataclass
class _Live:
    spec: RunSpec
    epoch: int = 0
    val_acc: float | None = None


class GridProgress(tune.Callback):
    """Prints one status block every ``interval_s`` seconds and when a run ends."""

    def __init__(
        self, specs: dict[str, RunSpec], interval_s: float = 15.0, write: Callable[[str], None] | None = None
    ) -> None:
        super().__init__()
        self.specs = specs  # run_id → spec, for the runs this grid will train
        self.interval_s = interval_s
        # Tune pickles callbacks; under `ray job submit` the builtin print is patched
        # and cannot be pickled, so the default writer is looked up at call time.
        self._write = write
        self.started = time.monotonic()
        self._live: dict[str, _Live] = {}
        self._done: dict[str, str] = {}  # run_id → status
        self._last_print = 0.0
        # Monotonic timestamps per run, for the orchestration-overhead benchmark.
        self.started_at: dict[str, float] = {}
        self.first_result_at: dict[str, float] = {}
        self.first_epoch_seconds: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}

    @staticmethod
    def _run_id(trial) -> str:
        return trial.config["grid_point"]["run_id"]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_id(trial)
        self._live[run_id] = _Live(self.specs[run_id])
        self.started_at.setdefault(run_id, time.monotonic())

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._run_id(trial)
        live = self._live.get(run_id)
        if "epoch" in result and run_id not in self.first_result_at:
            self.first_result_at[run_id] = time.monotonic()
            self.first_epoch_seconds[run_id] = float(result.get("seconds", 0.0))
        if live is not None and "epoch" in result:
            live.epoch, live.val_acc = int(result["epoch"]), float(result["val_acc"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, str((trial.last_result or {}).get("status", "complete")))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "failed")

    def _finish(self, trial, status: str) -> None:
        run_id = self._run_id(trial)
        self._live.pop(run_id, None)
        self._done[run_id] = status
        self.finished_at.setdefault(run_id, time.monotonic())
        self.write(f"  {status:>8}: {run_id}")
        self._print()

    def write(self, text: str) -> None:
        if self._write is not None:
            self._write(text)
        else:
            print(text, flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._last_print >= self.interval_s:
            self._print()

    def _print(self) -> None:
        self._last_print = time.monotonic()
        self.write(self.status_text())

    def status_text(self) -> str:
        """The current status block (also used by tests)."""
        total = len(self.specs)
        done, running = len(self._done), len(self._live)
        failed = sum(1 for s in self._done.values() if s != "complete")
        lines = [
            f"[{_clock(time.monotonic() - self.started)}] runs: {done}/{total} done"
            + (f" ({failed} failed)" if failed else "")
            + f", {running} running, {total - done - running} pending, ETA {self._eta()}"
        ]
        for run_id, live in sorted(self._live.items()):
            acc = f"val_acc {live.val_acc:.4f}" if live.val_acc is not None else "starting"
            lines.append(f"    {run_id}: epoch {live.epoch}/{live.spec.epochs} {acc}")
        return "\n".join(lines)

    def _eta(self) -> str:
        total = sum(run_work(s) for s in self.specs.values())
        finished = sum(run_work(self.specs[r]) for r in self._done)
        finished += sum(run_work(l.spec) * l.epoch / l.spec.epochs for l in self._live.values())
        if finished <= 0:
            return "unknown"
        elapsed = time.monotonic() - self.started
        return _clock(elapsed * (total - finished) / finished)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
