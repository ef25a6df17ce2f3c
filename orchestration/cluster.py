"""Join or start Ray, leave it, and check what the cluster offers: Ray core only, no Tune.

grid.py starts its own Ray (:func:`connect_while_importing`) while a thread imports
the Tune layer: ``ray.init()`` spends most of its 1.5–2.5 s waiting for the processes it
starts, and importing Ray Tune costs the driver about 1.2 CPU-s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestration.node_start import adapted_node
from orchestration.plan import ClusterResources
from orchestration.settings import RaySettings
from orchestration.store import ArtifactStore
from toynet.errors import ConfigError

# Modules that both ray.init() (starting a local instance) and `import
# orchestration.tuning` import for the first time, measured on Ray 2.60
# (tests/test_cluster.py measures again). Imported before the two run side by side, so
# neither thread waits on a module the other is half-way through importing, and
# Python's import locks cannot deadlock.
SHARED_FIRST_IMPORTS = ("argparse", "gzip", "socketserver", "pydantic", "ray._common.usage.usage_lib",
                        "ray.autoscaler._private.cli_logger", "ray.dashboard")


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
    return start_private(settings)


# Ray's default: 10 attempts, 1 s apart. The same 10 s in all, 20 ms apart.
SOCKET_RETRY = {"raylet_client_connect_timeout_milliseconds": 20, "raylet_client_num_connect_attempts": 500}


def start_private(settings: RaySettings) -> Connection:
    """Start a Ray instance for this process alone; a dashboard, if asked for, listens
    on 127.0.0.1 only."""
    with adapted_node(settings):
        context = ray.init(address="local", dashboard_host="127.0.0.1", include_dashboard=settings.dashboard,
                           log_to_driver=True, _system_config=system_config(settings))
    dashboard = (f"dashboard at http://{context.dashboard_url}" if settings.dashboard
                 else "no dashboard; --dashboard starts one")
    cpus = ray.cluster_resources().get("CPU", 0)
    return Connection(f"started a local Ray instance with {cpus:g} CPUs ({dashboard})", started_here=True)


def system_config(settings: RaySettings) -> dict[str, Any]:
    """The ``_system_config`` of a Ray instance :func:`start_private` starts."""
    config: dict[str, Any] = {"prestart_worker_first_driver": settings.prestart_workers}
    if settings.prompt_socket_retry:
        config.update(SOCKET_RETRY)
    if settings.preload_modules:
        config["preload_python_modules"] = list(settings.preload_modules)
    return config


def import_shared_first() -> None:
    """Import :data:`SHARED_FIRST_IMPORTS` (those still found: a Ray upgrade that moves
    one is caught by the test that measures them)."""
    for name in SHARED_FIRST_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def connect_while_importing(settings: RaySettings, module: str) -> Connection:
    """:func:`connect`, with ``module`` imported on a thread meanwhile.

    Raises what the import raised, after disconnecting, if it failed; ``module`` is in
    ``sys.modules`` when this returns.
    """
    import_shared_first()
    failure: list[BaseException] = []

    def _import() -> None:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # raised again on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=_import, name=f"import {module}", daemon=True)
    thread.start()
    try:
        connection = connect(settings)
    finally:
        thread.join()
    if failure:
        disconnect(connection)
        raise failure[0]
    return connection


def disconnect(connection: Connection) -> None:
    """Leave Ray; stop the instance if this process started it.

    Ray 2.60's shutdown stops the GCS before the autoscaler monitor, whose SIGTERM
    handler then blocks on reporting to the stopped GCS until Ray kills it a second
    later: a second of every grid's wall time. A one-machine instance's monitor, when
    it has one (``RaySettings.autoscaler_monitor``), has nothing to report or save, so
    it is killed first, as Ray itself would a second on.
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
