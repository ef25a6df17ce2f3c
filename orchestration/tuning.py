"""Run the grid's trials with a Ray Tune Tuner, on the Ray that orchestration.cluster reached.

One Tune trial per grid point; each trial's function trainable
(:func:`orchestration.ray_train.driver`) trains a one-worker run itself
(orchestration.in_trial) and drives Ray Train for runs with more workers (or all
runs, with ``resources.train_in_trial: false``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from orchestration.cluster import Connection, check_nodes_can_write, cluster_resources, connect, disconnect
from orchestration.config import GridConfig
from orchestration.plan import ResourcePlan, join_root, trial_resources
from orchestration.progress import GridProgress
from orchestration.pg_reaper import reap_quietly
from orchestration.ray_train import driver, placement_group_key
from orchestration.settings import RaySettings
from orchestration.store import ArtifactStore
from toynet.spec import RunSpec

def grid_point(cfg: GridConfig, spec: RunSpec, root: str, fault: dict[str, Any] | None,
               settings: RaySettings = RaySettings()) -> dict[str, Any]:
    """The Tune config of one trial: everything its driver and workers need."""
    data_dir = str(Path(cfg.data.dir).expanduser().resolve()) if cfg.data.dir else None
    return {
        "run_id": spec.run_id,
        "experiment": cfg.storage.experiment,
        "artifacts": root,
        "ray_storage": join_root(root, ".ray", cfg.storage.experiment),
        "resources": dataclasses.asdict(cfg.resources),
        "max_retries": cfg.failure.max_retries,
        "train_env": settings.train_env(),
        "dataset_manager": settings.dataset_manager,
        "gloo_backend": settings.gloo_backend,
        "shared_result_queue": settings.shared_result_queue,
        "pg_cleaner_actor": settings.pg_cleaner_actor,
        "in_trial": cfg.resources.uses_in_trial,
        "worker": {
            "spec": spec.to_dict(),
            "data_dir": data_dir,
            "download": cfg.data.download,
            "cache_dir": os.environ.get("TOYNET_CACHE"),
            "train_options": dataclasses.asdict(cfg.training),
            "fault": fault,
            "gpu": cfg.resources.gpus_per_worker > 0,
        },
    }


def tune_loggers(settings: RaySettings) -> list[tune.Callback]:
    """Tune's result loggers to pass explicitly: none when Tune adds its own three."""
    return [] if settings.tune_tensorboard else [CSVLoggerCallback(), JsonLoggerCallback()]


class _FreeEndedTrials(tune.Callback):
    """When a trial ends, free the placement group its Train controller may have left:
    Tune gave up on it (its driver died on every attempt) or stopped it
    (orchestration.pg_reaper). A trial whose driver returned has nothing left."""

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._free(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._free(trial)

    @staticmethod
    def _free(trial: Any) -> None:
        key = placement_group_key(trial.config["grid_point"])
        if key:
            reap_quietly(key)


def run_on_ray(
    cfg: GridConfig, store: ArtifactStore, pending: list[RunSpec], *,
    progress_interval: float = 15.0, fault: dict[str, Any] | None = None, settings: RaySettings = RaySettings(),
) -> GridProgress:
    """:func:`orchestration.cluster.connect`, then :func:`run_grid`."""
    return run_grid(connect(settings), cfg, store, pending, progress_interval=progress_interval, fault=fault,
                    settings=settings)


def run_grid(
    connection: Connection, cfg: GridConfig, store: ArtifactStore, pending: list[RunSpec], *,
    progress_interval: float = 15.0, fault: dict[str, Any] | None = None, settings: RaySettings = RaySettings(),
) -> GridProgress:
    """Train every pending run on the Ray that ``connection`` reached; results land in
    ``store``. Disconnects after, whatever happens.

    The caller has checked that this machine can write ``store`` (grid.py does); the
    other nodes of a cluster are probed here. Returns the progress tracker, whose
    timestamps the benchmarks read.
    """
    print(connection.description, flush=True)
    try:
        plan = ResourcePlan.build(cfg.resources, cluster_resources(), len(pending))
        print(plan.describe("the cluster"), flush=True)
        if not connection.started_here:  # else the one node is this one, and grid.py checked it
            check_nodes_can_write(store.root)
        points = [grid_point(cfg, spec, store.root, fault, settings) for spec in pending]
        progress = GridProgress({s.run_id: s for s in pending}, interval_s=progress_interval)
        # Read by fit(): "1" stops Tune adding its CSV, JSON and TensorBoardX loggers;
        # tune_loggers() then passes the first two itself.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0" if settings.tune_tensorboard else "1"
        _tuner(cfg, store, points, plan.concurrent, [progress, _FreeEndedTrials(), *tune_loggers(settings)],
               settings.reuse_actors).fit()
        return progress
    finally:
        disconnect(connection)


def _tuner(cfg: GridConfig, store: ArtifactStore, points: list[dict[str, Any]], concurrent: int,
           callbacks: list[tune.Callback], reuse_actors: bool) -> tune.Tuner:
    return tune.Tuner(
        tune.with_resources(driver, trial_resources(cfg.resources)),
        param_space={"grid_point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(
            name=cfg.storage.experiment,
            storage_path=join_root(store.root, ".ray", "tune"),
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=cfg.failure.max_retries),
        ),
    )
