"""Ray settings that cut a grid's overhead, and Ray's own defaults to compare them with.

No Ray import here: grid.py builds the settings before it has imported Ray.
"""

from __future__ import annotations

import dataclasses


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
    - ``prestart_workers``: the idle worker per CPU that Ray starts when the first
      driver connects, for a Ray instance grid.py starts itself. Off: Tune gives every
      trial actor a runtime environment (its own environment variables), so those
      default workers are never handed a trial; they only took ~0.4 CPU-s each while
      the trials' processes started.
    - ``api_server``: the head's API server, for a Ray instance grid.py starts itself
      without a dashboard. Ray 2.60 starts it even then, serving only usage statistics,
      and ``ray.init()`` waits for it: about 1.5 CPU-s and 1 s of the grid's start.
      Off: not started. The dashboard lives in it, so ``dashboard`` starts it
      regardless; a cluster grid.py joins keeps its own.
    - ``autoscaler_monitor``: the autoscaler's monitor process, for a Ray instance
      grid.py starts itself. One machine with fixed resources has nothing to scale; it
      cost about 0.8 CPU-s at start, and Ray 2.60's shutdown waits on it
      (:func:`orchestration.cluster.disconnect`). Off: not started, unless
      ``dashboard`` is on (the dashboard shows the monitor's cluster status).
    - ``prompt_raylet_wait``: for a Ray instance grid.py starts itself, ``ray.init()``
      learns within 20 ms that the raylet has registered, instead of at Ray's next
      once-a-second retry, which cost 0.5 s of idle CPUs per start on average
      (:mod:`orchestration.node_start`).
    - ``prompt_socket_retry``: for a Ray instance grid.py starts itself, how soon a Ray
      process retries connecting to a local socket that is not listening yet. The
      raylet connects to its object store as soon as it has started the store's
      thread; in 28% of the starts measured here the store was not listening yet, and
      Ray retried a second later, the CPUs idle meanwhile. On: every 20 ms, for the
      same 10 s in all (Ray's ``raylet_client_connect_timeout_milliseconds`` and
      ``raylet_client_num_connect_attempts``).
    - ``dashboard_deps_lookup``: for a Ray instance grid.py starts itself, how
      ``ray.init()`` learns whether the dashboard's packages are installed (which
      decides how the raylet runs its dashboard agent). Ray imports them all (aiohttp,
      gRPC, OpenTelemetry, …), about 0.3 CPU-s in grid.py's driver on the way to
      starting the raylet, and the driver never uses them. On: looked up without
      importing (:func:`orchestration.node_start.dashboard_dependency_error`).
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
    prestart_workers: bool = False
    api_server: bool = False
    autoscaler_monitor: bool = False
    prompt_raylet_wait: bool = True
    prompt_socket_retry: bool = True
    dashboard_deps_lookup: bool = True
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
    dashboard=True, tune_tensorboard=True, prestart_workers=True, api_server=True, autoscaler_monitor=True,
    prompt_raylet_wait=False, prompt_socket_retry=False, dashboard_deps_lookup=False,
)
"""Ray 2.60's own behaviour, for the benchmark's comparison."""
