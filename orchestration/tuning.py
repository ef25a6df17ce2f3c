"""Join or start Ray, check the cluster, and run the grid's trials with a Ray Tune Tuner.

One Tune trial per grid point; each trial's function trainable
(:func:`orchestration.ray_train.driver`) trains a one-worker run itself
(orchestration.in_trial) and drives Ray Train for runs with more workers (or all
runs, with ``resources.train_in_trial: false``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestration.config import GridConfig
from orchestration.plan import ClusterResources, ResourcePlan, join_root, trial_resources
from orchestration.progress import GridProgress
from orchestration.pg_reaper import reap_quietly
from orchestration.ray_train import driver, placement_group_key
from orchestration.store import ArtifactStore
from toynet.errors import ConfigError
from toynet.spec import RunSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """Settings that cut per-trial overhead (measured in benchmarks/orchestration.py).

    On a small machine a trial's start-up is CPU-bound: Ray Train 2.60 starts about
    seven Python processes per trial (controller, workers and helper actors), and each
    pays for its imports. These settings remove what a grid of ToyNet runs never uses.

    - ``reuse_actors``: Tune keeps the driver trainable's process between trials.
    - ``health_check_interval_s``: how often Train polls its workers; every per-epoch
      report waits for a poll (Ray's default is 2 s).
    - ``preemption_watcher``: Train's per-trial actor that watches for node preemption
      (spot instances). Off: node loss is already handled by Train's bounded retries.
    - ``train_metrics``: Train's Prometheus metrics for the dashboard. Off: progress.py
      and the store record what a grid needs.
    - ``dataset_manager``: Train's per-trial actor that shards Ray Datasets. Off when
      a trial passes no Ray Dataset (ToyNet workers read the node-cached arrays).
    - ``shared_result_queue``: each driver process keeps one Tune result queue (an actor)
      for all its trials instead of Tune starting one per trial
      (:func:`orchestration.relay.result_queue`).
    - ``gloo_backend``: CPU trials use :class:`orchestration.gloo.GlooConfig`, whose
      Train controller never imports torch, instead of Ray's ``TorchConfig``.
    - ``pg_cleaner_actor``: Ray Train's detached ``PlacementGroupCleaner`` actor per
      trial, which frees a dead controller's placement group. Off: the controller
      records the group in Ray's key-value store and the grid frees it
      (:mod:`orchestration.pg_reaper`), without a process per trial.
    - ``dashboard``: Ray's dashboard, for a Ray instance grid.py starts itself (a
      cluster it joins keeps its own). Off: it and its ten or so module processes cost
      about 4 CPU-s of start-up; the smoke grid ran 12% faster without them. grid.py's
      ``--dashboard`` turns it on. Ray's own ``PlacementGroupCleaner`` needs it (it polls
      the dashboard's state API); :mod:`orchestration.pg_reaper` does not.
    - ``tune_tensorboard``: Tune's automatic per-trial TensorBoardX files under the
      store's ``.ray/tune`` (its CSV and JSON results stay). Off: the store already
      keeps every run's TensorBoard events (:mod:`orchestration.tb`), and TensorBoardX
      imports torch into the grid's driver (~1.7 s at start, ~0.5 s at exit).
    - ``preload_modules``: modules Ray's idle worker processes import before they are
      handed out (Ray's ``preload_python_modules``). Off by default: measured here,
      preloading torch made trials slower (every helper process then imports torch too,
      competing for the CPUs the trials need).
    """

    reuse_actors: bool = True
    health_check_interval_s: float = 0.1
    preemption_watcher: bool = False
    train_metrics: bool = False
    dataset_manager: bool = False
    gloo_backend: bool = True
    shared_result_queue: bool = True
    pg_cleaner_actor: bool = False
    dashboard: bool = False
    tune_tensorboard: bool = False
    preload_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pg_cleaner_actor and not self.dashboard:
            raise ValueError("pg_cleaner_actor needs dashboard: Ray's cleaner polls the dashboard's state API")

    def train_env(self) -> dict[str, str]:
        """Environment the driver sets before ``fit()``; Train reads it there and
        passes the controller's part on to the controller."""
        return {
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(self.health_check_interval_s),
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1" if self.preemption_watcher else "0",
            "RAY_TRAIN_METRICS_ENABLED": "1" if self.train_metrics else "0",
        }


RAY_DEFAULTS = RaySettings(
    reuse_actors=False, health_check_interval_s=2.0, preemption_watcher=True, train_metrics=True,
    dataset_manager=True, gloo_backend=False, shared_result_queue=False, pg_cleaner_actor=True,
    dashboard=True, tune_tensorboard=True,
)
"""Ray 2.60's own behaviour, for the benchmark's comparison."""


@dataclasses.dataclass(frozen=True)
class Connection:
    """How :func:`connect` reached Ray: ``description`` is a sentence for the user;
    ``started_here`` is true when this process started a private one-machine instance."""

    description: str
    started_here: bool


def connect(settings: RaySettings = RaySettings()) -> Connection:
    """Join the cluster named by RAY_ADDRESS or started by ``ray start``, else start one."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return Connection(f"joined the Ray cluster at {address}", started_here=False)
    try:
        ray.init(address="auto", log_to_driver=True)
        return Connection("joined the Ray cluster running on this machine (started with `ray start`)", False)
    except ConnectionError:
        pass
    # A private cluster for this run; a dashboard, if asked for, listens on 127.0.0.1 only.
    system_config = {"preload_python_modules": list(settings.preload_modules)} if settings.preload_modules else {}
    context = ray.init(dashboard_host="127.0.0.1", include_dashboard=settings.dashboard, log_to_driver=True,
                       _system_config=system_config)
    dashboard = (f"dashboard at http://{context.dashboard_url}" if settings.dashboard
                 else "no dashboard; --dashboard starts one")
    cpus = ray.cluster_resources().get("CPU", 0)
    return Connection(f"started a local Ray instance with {cpus:g} CPUs ({dashboard})", started_here=True)


def disconnect(connection: Connection) -> None:
    """Leave Ray; stop the instance if this process started it.

    Ray 2.60's shutdown stops the GCS before the autoscaler monitor, whose SIGTERM
    handler then blocks on reporting to the stopped GCS until Ray kills it a second
    later: a second of every grid's wall time. A one-machine instance's monitor has
    nothing to report or save, so it is killed first, as Ray itself would a second on.
    """
    node = ray._private.worker._global_node  # the processes ray.init started; no public handle
    if connection.started_here and node is not None:
        node.kill_monitor(check_alive=False)
    ray.shutdown()


def cluster_resources() -> ClusterResources:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [n["Resources"].get("CPU", 0.0) for n in nodes]
    gpus = [n["Resources"].get("GPU", 0.0) for n in nodes]
    return ClusterResources(sum(cpus), sum(gpus), len(nodes), max(cpus, default=0), max(gpus, default=0))


@ray.remote(num_cpus=0)
def _probe_store(root: str) -> str | None:
    try:
        ArtifactStore(root).check_writable()
    except Exception as exc:  # report, don't raise: the caller names the node
        return str(exc)
    return None


def check_nodes_can_write(root: str) -> None:
    """Every alive node must be able to write the store root (shared storage)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probes = {
        n["NodeManagerAddress"] + ":" + n["NodeID"][:8]: _probe_store.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(root)
        for n in nodes
    }
    for node, ref in probes.items():
        error = ray.get(ref)
        if error:
            raise ConfigError(f"node {node} cannot write the artifacts root: {error}; use storage every node shares")


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
    """Train every pending run on Ray; results land in ``store``. Shuts Ray down after.

    The caller has checked that this machine can write ``store`` (grid.py does); the
    other nodes of a cluster are probed here. Returns the progress tracker, whose
    timestamps the benchmarks read.
    """
    connection = connect(settings)
    print(connection.description, flush=True)
    try:
        plan = ResourcePlan.build(cfg.resources, cluster_resources(), len(pending))
        print(plan.describe("the cluster"), flush=True)
        if not connection.started_here:  # else the one node is this one, and grid.py checked it
            check_nodes_can_write(store.root)
        points = [grid_point(cfg, spec, store.root, fault, settings) for spec in pending]
        progress = GridProgress({s.run_id: s for s in pending}, interval_s=progress_interval)
        tuner = tune.Tuner(
            tune.with_resources(driver, trial_resources(cfg.resources)),
            param_space={"grid_point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrent, reuse_actors=settings.reuse_actors),
            run_config=tune.RunConfig(
                name=cfg.storage.experiment,
                storage_path=join_root(store.root, ".ray", "tune"),
                verbose=0,
                callbacks=[progress, _FreeEndedTrials(), *tune_loggers(settings)],
                failure_config=tune.FailureConfig(max_failures=cfg.failure.max_retries),
            ),
        )
        # Read by fit(): "1" stops Tune adding its CSV, JSON and TensorBoardX loggers;
        # tune_loggers() then passes the first two itself.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0" if settings.tune_tensorboard else "1"
        tuner.fit()
        return progress
    finally:
        disconnect(connection)
