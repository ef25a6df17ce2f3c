"""The Ray-facing pieces of one grid point, named as Ray names them.

- :func:`driver` is the Ray Tune function trainable for one grid point: it trains the
  run and writes its record (complete or failed) into the artifacts store. A
  one-worker run trains right there, in the trial's process
  (:mod:`orchestration.in_trial`); otherwise the driver builds a Ray Train trainer
  and runs it.
- :func:`train_loop_per_worker` runs on every Ray Train worker; its body is
  :func:`orchestration.train_worker.run`, imported there and only there.

This module never imports torch (tests/test_import_cost.py checks it): a driver of
Train workers runs in its own Ray process per concurrent trial, which would otherwise
pay ``import torch`` and ``ray.train.torch`` (~2 CPU-s, ~400 MB resident) without
running any torch code. So the trainer is Ray's ``DataParallelTrainer`` with the torch
backend config that ``TorchTrainer`` would pass (``TorchTrainer`` adds nothing else
for non-local runs), and the run's curve and encoded weights come back as files in
its last checkpoint.

Checkpoints live under the grid point's run id (Train's run name, or the in-trial
checkpoint directory), so a restarted worker, a Tune retry or a rerun of the whole
grid finds them again and resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import ray.train
from ray.train import UserCallback
from ray.train.backend import BackendConfig
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from orchestration import weights as weights_io
from orchestration.gloo import GlooConfig
from orchestration.in_trial import Checkpoints, fit_in_trial
from orchestration.pg_reaper import RecordPlacementGroup, reap, reap_quietly
from orchestration.plan import join_root
from orchestration.relay import Relay, result_queue
from orchestration.store import ArtifactStore, RunRecord, collect_versions
from toynet.errors import WeightsError
from toynet.options import TrainOptions
from toynet.spec import RunSpec

log = logging.getLogger(__name__)

# Files in a Train checkpoint (written by orchestration.train_worker on rank 0).
STATE_FILE = "state.pt"  # resume state, torch format: workers only
CURVE_FILE = "curve.json"  # every finished epoch's metrics row


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point; see :func:`orchestration.train_worker.run`."""
    from orchestration.train_worker import run  # imports torch: on the workers only

    run(config)


class _GridTrainer(DataParallelTrainer):
    """Ray Train's data-parallel trainer without the per-run helpers a grid never needs.

    Ray Train 2.60 starts a ``DatasetManager`` actor for every run, Ray Datasets or
    not: one more Python process per trial importing ``ray.train`` (1–2 CPU-s here).
    ToyNet workers read the node-cached arrays, so a run without ``datasets`` drops
    that callback. With ``placement_group_key``, Ray's per-run ``PlacementGroupCleaner``
    actor (another such process) gives way to :mod:`orchestration.pg_reaper`.
    ``_create_default_callbacks`` is Ray's private hook (ray is pinned to 2.60.x);
    tests/test_ray_grid.py checks that neither actor starts.
    """

    def __init__(self, *args: Any, dataset_manager: bool = True, placement_group_key: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dataset_manager = dataset_manager or bool(self.datasets)
        self._placement_group_key = placement_group_key

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if not self._dataset_manager:
            callbacks = [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]
        if self._placement_group_key:
            callbacks = [cb for cb in callbacks if not isinstance(cb, PlacementGroupCleanerCallback)]
            callbacks.append(RecordPlacementGroup(self._placement_group_key))
        return callbacks


def _backend(gloo: bool, gpus: float) -> BackendConfig:
    """What ``TorchTrainer`` would pass, minus torch on CPU trials (orchestration.gloo)."""
    if gloo and not gpus:
        return GlooConfig()  # the Train controller never imports torch either
    from ray.train.torch import TorchConfig  # imports torch: GPU trials (NCCL) only

    return TorchConfig(backend="nccl" if gpus else "gloo")


def _trainer(config: dict[str, Any], spec: RunSpec, report: UserCallback, pg_key: str | None) -> DataParallelTrainer:
    res = config["resources"]
    per_worker = {"CPU": res["cpus_per_worker"], **({"GPU": res["gpus_per_worker"]} if res["gpus_per_worker"] else {})}
    return _GridTrainer(
        train_loop_per_worker,
        dataset_manager=config["dataset_manager"],
        placement_group_key=pg_key,
        backend_config=_backend(config["gloo_backend"], res["gpus_per_worker"]),
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
            callbacks=[report],  # each epoch's report to Tune (orchestration.relay)
            # Train's INFO lines repeat every metric of every report; progress.py shows them.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def driver(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune function trainable for one grid point; writes the store record.

    A run that fails for good (after Train's bounded retries) is recorded as failed
    with its error and returns normally, so the rest of the grid carries on.
    """
    config = config["grid_point"]  # built by orchestration.tuning.grid_point
    # Train reads these from this (the driver's) environment at fit() time.
    os.environ.update(config["train_env"])
    spec = RunSpec.from_dict(config["worker"]["spec"])
    store = ArtifactStore(config["artifacts"])
    started = time.perf_counter()
    try:
        metrics, checkpoint = _fit(config, spec)
        curve, weights = _final(checkpoint)
    except Exception as exc:  # any failure of the run is recorded, not raised
        error = _one_line(exc)
        log.error("run %s failed: %s\n%s", spec.run_id, error, traceback.format_exc())
        store.write_run(_record(config, spec, "failed", [], started, {}, error), None)
        return {"status": "failed", "error": error}
    store.write_run(_record(config, spec, "complete", curve, started, metrics), weights)
    return {"status": "complete", **{k: curve[-1][k] for k in ("loss", "acc", "val_loss", "val_acc")}}


def placement_group_key(config: dict[str, Any]) -> str | None:
    """Where a grid point's Train controller records its placement group (orchestration.pg_reaper);
    None when Ray's own cleaner actor does that job."""
    if config["pg_cleaner_actor"] or config["in_trial"]:
        return None
    return f"{config['ray_storage']}/{config['run_id']}"


def _fit(config: dict[str, Any], spec: RunSpec) -> tuple[dict[str, Any], ray.train.Checkpoint]:
    """Train the run, each epoch's report relayed to Tune; returns its last metrics and checkpoint."""
    if config["in_trial"]:
        return _fit_in_trial(config, spec)
    relay = Relay(result_queue(shared=config["shared_result_queue"]))
    key = placement_group_key(config)
    if key:
        reap(key)  # a Tune retry: the last attempt's controller died with its driver
    try:
        result = relay.run(_trainer(config, spec, relay.callback, key).fit)
        return result.metrics or {}, result.checkpoint
    finally:
        if key:
            reap_quietly(key)  # a controller that returned removed it; one that died did not


def _fit_in_trial(config: dict[str, Any], spec: RunSpec) -> tuple[dict[str, Any], ray.train.Checkpoint]:
    """The one-worker run in this, the trial's, process (orchestration.in_trial)."""
    from ray import tune  # the driver is a Tune trainable: already imported there

    from orchestration.train_worker import run_in_trial  # imports torch: the run trains here

    checkpoints = Checkpoints(join_root(config["ray_storage"], spec.run_id))
    return fit_in_trial(spec.run_id, lambda report, resume: run_in_trial(config["worker"], report, resume),
                        checkpoints, tune.report, max_failures=config["max_retries"])


def _final(checkpoint: ray.train.Checkpoint) -> tuple[list[dict[str, float]], weights_io.Encoded]:
    """The curve and encoded weights in a run's last checkpoint (orchestration.train_worker)."""
    with checkpoint.as_directory() as name:
        directory = Path(name)
        try:
            curve = json.loads((directory / CURVE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"checkpoint {directory} has no readable {CURVE_FILE}: {exc}") from None
        return curve, weights_io.Encoded.load(directory)


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
