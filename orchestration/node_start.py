"""How grid.py's own Ray instance starts: Ray 2.60's ``Node``, adapted while
``ray.init()`` runs and restored after.

``ray.init()`` has no switches for these; Ray's ``Node`` starts each process through a
method of its own, so the adaptations replace methods (Ray is pinned to 2.60.x, and
tests/test_cluster.py starts an instance this way and checks the outcome):

- head processes a one-machine grid never uses are not started
  (:func:`skipped_head_processes`);
- ``ray.init()`` sees the raylet as soon as it has registered. Ray asks the GCS for
  the new node through a call that, while the node is missing, retries once a second,
  so ``ray.init()`` waited for whole seconds (2.0, 2.0, 3.0 s measured) with the CPUs
  idle after the raylet had registered. :func:`_then_await_raylet` polls the GCS every
  20 ms first, and Ray's call finds the node on its first try;
- whether the dashboard's packages are installed is looked up, not imported
  (:func:`dashboard_dependency_error`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import time
from typing import Any, Callable, Iterator

import ray._private.node
import ray._private.utils

from orchestration.settings import RaySettings

RAYLET_POLL_S = 0.02
RAYLET_WAIT_S = 30.0  # Ray's own raylet_start_wait_time_s; past it, Ray's own check reports

# The top-level packages ray/dashboard/optional_deps.py imports in Ray 2.60: what
# ray[default] adds (tests/test_cluster.py reads that file again).
DASHBOARD_DEPS = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client", "pydantic")


def skipped_head_processes(settings: RaySettings) -> tuple[str, ...]:
    """The methods of Ray's ``Node`` that a private start leaves out: each starts a head
    process ``settings`` turns off (see :class:`RaySettings`)."""
    if settings.dashboard:  # it runs inside the API server and shows the monitor's cluster status
        return ()
    return tuple(method for method, wanted in (("start_api_server", settings.api_server),
                                               ("start_monitor", settings.autoscaler_monitor)) if not wanted)


@contextlib.contextmanager
def adapted_node(settings: RaySettings) -> Iterator[None]:
    """While the block runs, Ray's ``Node`` starts an instance as ``settings`` ask.

    Skipping the API server costs nothing a grid uses on an instance of its own without
    a dashboard (it serves the dashboard, the Jobs API and the state API); ``ray start
    --no-monitor`` takes the same path for the monitor. Restored on exit, so joining or
    starting Ray later in this process behaves as Ray's own.
    """
    node_class = ray._private.node.Node
    replacements: list[tuple[Any, str, Callable[..., Any]]] = [
        (node_class, name, _start_nothing) for name in skipped_head_processes(settings)]
    if settings.prompt_raylet_wait:
        replacements.append((node_class, "start_ray_processes", _then_await_raylet(node_class.start_ray_processes)))
    if settings.dashboard_deps_lookup:
        replacements.append((ray._private.utils, "get_dashboard_dependency_error", dashboard_dependency_error))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]  # AttributeError: Ray moved one
    for owner, name, replacement in replacements:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def dashboard_dependency_error() -> ImportError | None:
    """Ray's ``get_dashboard_dependency_error()`` without importing the packages: the
    error for the first of :data:`DASHBOARD_DEPS` not installed, else None. Ray imports
    them all to find out (about 0.3 CPU-s), and a driver without dashboard uses none."""
    for name in DASHBOARD_DEPS:
        if importlib.util.find_spec(name) is None:
            return ImportError(f"No module named '{name}'", name=name)
    return None


def _start_nothing(self: Any, *args: Any, **kwargs: Any) -> None:
    del self, args, kwargs


def _then_await_raylet(start_ray_processes: Callable[..., None]) -> Callable[..., None]:
    """``Node.start_ray_processes`` (which starts the raylet), then wait until the raylet
    has registered with the GCS or one of the node's processes has died."""

    @functools.wraps(start_ray_processes)
    def start_then_await(node: Any, *args: Any, **kwargs: Any) -> None:
        start_ray_processes(node, *args, **kwargs)
        await_registered(node.get_gcs_client(), node.node_id, given_up=lambda: bool(node.dead_processes()))

    return start_then_await


def await_registered(gcs: Any, node_id: str, *, timeout_s: float = RAYLET_WAIT_S,
                     given_up: Callable[[], bool] = lambda: False) -> bool:
    """Ask ``gcs`` (a Ray ``GcsClient``) every :data:`RAYLET_POLL_S`, at least once,
    whether the node ``node_id`` (hex) has registered: True once it has. False after
    ``timeout_s`` or once ``given_up()``; the caller's own check then reports why."""
    deadline = time.monotonic() + timeout_s
    while True:  # asks at least once
        with contextlib.suppress(Exception):  # the GCS not answering yet: poll again
            if any(found.hex() == node_id for found in gcs.get_all_node_info(timeout=1)):
                return True
        if time.monotonic() >= deadline or given_up():
            return False
        time.sleep(RAYLET_POLL_S)
