"""The Ray-facing pieces of one grid point, named as Ray names them.

- :func:`train_loop_per_worker` runs on every Ray Train worker: it loads the
  node-cached dataset, resumes from the last Train checkpoint if there is one, and
  runs ``toynet.train.fit`` with a hook that reports metrics every epoch (rank 0
  attaches the checkpoint).
- :func:`driver` is the Ray Tune function trainable for one grid point: it builds
  the ``TorchTrainer``, runs it, and writes the run's record (complete or failed)
  into the artifacts store.

Train run names are the grid point's run id, so a restarted worker, a Tune retry or
a rerun of the whole grid finds its checkpoints again and resumes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train._internal.session import get_session
from ray.tune.integration.ray_train import TuneReportCallback
from ray.util.queue import Empty, Queue

from orchestration.gloo import GlooConfig
from orchestration.store import ArtifactStore, RunRecord, collect_versions
from toynet.checkpoint import atomic_torch_save, safe_torch_load
from toynet.data import load_dataset
from toynet.spec import RunSpec
from toynet.train import Hooks, TrainOptions, device_label, fit

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _resume_state() -> dict[str, Any] | None:
    """The state saved with the last registered Train checkpoint, if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return safe_torch_load(Path(directory) / STATE_FILE, what="checkpoint")


def _epoch_reporter(rank: int, device: str, world_size: int):
    """on_epoch hook: every rank reports (a barrier); rank 0 also saves the checkpoint."""

    def report(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
        metrics = {**row, "device": device, "num_workers": world_size}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            atomic_torch_save(state, Path(directory) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    return report


def _fault_hook(fault: dict[str, Any] | None, rank: int, run_id: str):
    """Test-only fault injection, off unless grid.py's hidden --inject-fault is given.

    At the start of ``fault['epoch']``, rank 0 of every run whose id contains
    ``fault['run']`` either crashes hard once (``once``: a marker file remembers) or
    raises on every attempt (``always``). Each firing appends a line to ``log``.
    """
    if not fault or rank != 0 or fault.get("run", "") not in run_id:
        return None
    marker = Path(fault["once"]) if fault.get("once") else None

    def before_epoch(epoch: int) -> None:
        if epoch != fault["epoch"] or (marker is not None and marker.exists()):
            return
        if fault.get("log"):
            with open(fault["log"], "a") as fh:
                fh.write(f"{run_id} epoch {epoch}\n")
        if marker is None:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        marker.write_text("crashed once\n")
        os._exit(1)  # a hard crash, as a killed process would look

    return before_epoch


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker body; ``config`` is a grid point's ``worker`` part (orchestration.tuning)."""
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    spec = RunSpec.from_dict(config["spec"])
    data = load_dataset(
        spec.dataset, config["data_dir"], download=config["download"],
        train_limit=spec.train_limit, val_limit=spec.val_limit, cache_dir=config["cache_dir"],
    )
    device = ray.train.torch.get_device()
    opts = TrainOptions(device=str(device), rank=rank, world_size=world_size, **config["train_options"])
    hooks = Hooks(
        on_epoch=_epoch_reporter(rank, device_label(device), world_size),
        wrap_model=(lambda m: ray.train.torch.prepare_model(m, move_to_device=False)) if world_size > 1 else None,
        before_epoch=_fault_hook(config.get("fault"), rank, spec.run_id),
    )
    fit(spec, data, opts, hooks, resume=_resume_state())


class _GridTrainer(TorchTrainer):
    """``TorchTrainer`` that can leave out Train's Ray Data plumbing.

    Ray Train 2.60 starts a ``DatasetManager`` actor for every run, Ray Datasets or
    not: one more Python process per trial importing ``ray.train`` (1–2 CPU-s here).
    ToyNet workers read the node-cached arrays, so a run without ``datasets`` drops
    that callback. ``_create_default_callbacks`` is Ray's private hook (ray is pinned
    to 2.60.x); tests/test_ray_grid.py checks that no ``DatasetManager`` starts.
    """

    def __init__(self, *args: Any, dataset_manager: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dataset_manager = dataset_manager or bool(self.datasets)

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if self._dataset_manager:
            return callbacks
        return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]


def _trainer(config: dict[str, Any], spec: RunSpec) -> TorchTrainer:
    res = config["resources"]
    per_worker = {"CPU": res["cpus_per_worker"], **({"GPU": res["gpus_per_worker"]} if res["gpus_per_worker"] else {})}
    per_worker.update(res.get("custom_per_worker") or {})
    return _GridTrainer(
        train_loop_per_worker,
        dataset_manager=config["dataset_manager"],
        # CPU trials: a backend whose Train controller never imports torch (orchestration.gloo).
        torch_config=GlooConfig() if config["gloo_backend"] and not res["gpus_per_worker"] else None,
        train_loop_config=config["worker"],
        scaling_config=ray.train.ScalingConfig(
            num_workers=res["workers_per_trial"],
            use_gpu=res["gpus_per_worker"] > 0,
            resources_per_worker=per_worker,
            placement_strategy=res["placement_strategy"],
        ),
        run_config=ray.train.RunConfig(
            name=spec.run_id,
            storage_path=config["ray_storage"],
            failure_config=ray.train.FailureConfig(
                max_failures=config["max_retries"], controller_failure_limit=config["max_retries"]
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            # Train's INFO lines repeat every metric of every report; progress.py shows them.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


_RESULT_QUEUE: Queue | None = None


def _reuse_result_queue() -> None:
    """Give this trial's Tune session the driver process's result queue.

    ``TuneReportCallback`` forwards each Train report from the controller to the driver
    through a ``ray.util.queue.Queue``: an actor, which Tune 2.60 creates anew for every
    trial (one more Python process importing ray, about 1 CPU-s here). With
    ``reuse_actors`` the driver process runs trial after trial, one at a time, so one
    queue per process serves them all. Ray has no public switch for this: it sets the
    session's private ``_inter_actor_queue`` before the callback asks for it (ray is
    pinned to 2.60.x; tests/test_ray_grid.py counts the queue actors). Anything left in
    the queue by a trial that failed mid-report is dropped first, so it cannot be taken
    for this trial's first result.
    """
    global _RESULT_QUEUE
    if _RESULT_QUEUE is None:
        # Not drained: it is empty, and asking would wait for its actor to start.
        _RESULT_QUEUE = Queue(1, actor_options={"num_cpus": 0})  # what Tune would create
    else:
        _drain(_RESULT_QUEUE)
    get_session()._inter_actor_queue = _RESULT_QUEUE


def _drain(queue: Queue) -> None:
    while True:
        try:
            queue.get_nowait()
        except Empty:
            return


def driver(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune function trainable for one grid point; writes the store record.

    A run that fails for good (after Train's bounded retries) is recorded as failed
    with its error and returns normally, so the rest of the grid carries on.
    """
    config = config["grid_point"]  # built by orchestration.tuning.grid_point
    # Train reads these from this (the driver's) environment at fit() time.
    os.environ.update(config["train_env"])
    if config["shared_result_queue"]:
        _reuse_result_queue()
    spec = RunSpec.from_dict(config["worker"]["spec"])
    store = ArtifactStore(config["artifacts"])
    started = time.perf_counter()
    try:
        result = _trainer(config, spec).fit()
    except Exception as exc:  # any failure of the run is recorded, not raised
        error = _one_line(exc)
        log.error("run %s failed: %s\n%s", spec.run_id, error, traceback.format_exc())
        store.write_run(_record(config, spec, "failed", [], started, {}, error), None)
        return {"status": "failed", "error": error}
    with result.checkpoint.as_directory() as directory:
        state = safe_torch_load(Path(directory) / STATE_FILE, what="checkpoint")
    store.write_run(_record(config, spec, "complete", state["curve"], started, result.metrics or {}), state["model"])
    return {"status": "complete", **{k: state["curve"][-1][k] for k in ("loss", "acc", "val_loss", "val_acc")}}


def _record(
    config: dict[str, Any], spec: RunSpec, status: str, curve: list[dict[str, float]],
    started: float, metrics: dict[str, Any], error: str | None = None,
) -> RunRecord:
    images = sum(row.get("train_images", 0) for row in curve)
    train_s = sum(row.get("train_seconds", 0.0) for row in curve)
    return RunRecord(
        experiment=config["experiment"],
        spec=spec,
        status=status,
        curve=[{k: row[k] for k in ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds")} for row in curve],
        wall_seconds=time.perf_counter() - started,
        train_images_per_s=images / train_s if train_s else 0.0,
        device=str(metrics.get("device", "unknown")),
        num_workers=int(metrics.get("num_workers", config["resources"]["workers_per_trial"])),
        versions=collect_versions(),
        error=error,
        train_options=TrainOptions(**config["worker"]["train_options"]).numerics(),
    )


def _one_line(exc: BaseException) -> str:
    """A failure's gist in one line: the innermost worker error when Ray wraps one."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Ray's WorkerGroupError text ends with the worker's own exception line.
    gist = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    return f"{type(exc).__name__}: {gist}"[:500]
