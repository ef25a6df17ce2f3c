"""grid.py starts Ray while a thread imports the Tune layer: the two share no first
import (so Python's import locks cannot deadlock), an import failure is raised after
disconnecting, the settings reach ray.init, and grid.py's own instance leaves out
the head processes it never uses, sees its raylet as soon as it registers,
retries its local sockets promptly, and imports none of the dashboard's packages."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ray._private.utils

from orchestration.cluster import SHARED_FIRST_IMPORTS, SOCKET_RETRY, system_config
from orchestration.node_start import DASHBOARD_DEPS, dashboard_dependency_error, skipped_head_processes
from orchestration.settings import RAY_DEFAULTS, RaySettings
from tests.ray_cluster import REPO

# Modules a fresh interpreter imports for the first time doing one thing, after what
# connect_while_importing has imported before its thread starts.
NEW_MODULES = """
import json, sys
from orchestration.cluster import connect, disconnect, import_shared_first, start_private
from orchestration.settings import RaySettings
import_shared_first()
before = set(sys.modules)
processes = []
asked = []  # per call of Ray's once-a-second node lookup: was the node already there?
if sys.argv[1] in ("start", "join"):
    import ray._private.services as services
    from ray._private.node import Node
    from ray._raylet import GcsClient, NodeID
    from orchestration.node_start import await_registered

    def get_node(gcs_address, node_id, lookup=services.get_node):
        asked.append(await_registered(GcsClient(address=gcs_address), node_id, timeout_s=0))
        return lookup(gcs_address, node_id)

    services.get_node = get_node
    import ray._private.utils as utils

    def patchable():  # what start_private may replace while Ray starts
        return (Node.start_api_server, Node.start_monitor, Node.start_ray_processes,
                utils.get_dashboard_dependency_error)

    methods = patchable()
    connection = start_private(RaySettings()) if sys.argv[1] == "start" else connect(RaySettings())
    new = set(sys.modules) - before
    import ray
    processes = sorted(ray._private.worker._global_node.all_processes) if connection.started_here else []
    restored = patchable() == methods
    unknown = await_registered(ray._private.worker._global_node.get_gcs_client(), NodeID.from_random().hex(),
                               timeout_s=0.1) if connection.started_here else None
    config = ray._raylet.Config  # as the GCS handed it to this driver, and to the raylet
    retry = [config.raylet_client_connect_timeout_milliseconds(), config.raylet_client_num_connect_attempts()]
    disconnect(connection)
    assert restored, "start_private left Ray's Node patched"
else:
    import orchestration.tuning
    new, unknown, retry = set(sys.modules) - before, None, None
print(json.dumps({"new": sorted(new), "processes": processes, "asked": asked, "unknown": unknown, "retry": retry}))
"""


def _run(what: str, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", NEW_MODULES, what], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _new_modules(what: str, env: dict[str, str] | None = None) -> set[str]:
    return set(_run(what, env)["new"])


@functools.cache
def _started() -> dict[str, list[str]]:
    """What start_private imported and which processes its instance runs (one start)."""
    return _run("start")


@functools.cache
def _tune_modules() -> frozenset[str]:
    return frozenset(_new_modules("tune"))


def test_starting_ray_and_importing_tune_share_no_first_import():
    """A Ray upgrade that changes what either side imports fails here, naming the
    modules to add to SHARED_FIRST_IMPORTS."""
    by_start = set(_started()["new"])
    assert "ray.tune" in _tune_modules() and by_start  # each side did import something
    assert sorted(by_start & _tune_modules()) == []
    for name in SHARED_FIRST_IMPORTS:  # none has moved (import_shared_first skips a missing one)
        assert importlib.util.find_spec(name) is not None, name


def test_joining_a_cluster_and_importing_tune_share_no_first_import(ray_cluster):
    """The path of `ray job submit` and of a cluster started with `ray start`."""
    by_join = _new_modules("join", {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs})
    assert sorted(by_join & _tune_modules()) == []


def test_grid_pys_own_ray_runs_no_api_server_or_autoscaler_monitor():
    """What a private instance runs (Ray's process types), and Ray's Node restored after."""
    processes = set(_started()["processes"])
    assert {"gcs_server", "raylet", "log_monitor"} <= processes
    assert not processes & {"dashboard", "monitor"}


def test_grid_pys_own_ray_finds_its_raylet_registered_on_rays_first_lookup():
    """Ray's lookup of the new node retries once a second; node_start waits for the
    raylet first, so the lookup finds it at once. A node that never registers is
    waited for only as long as asked."""
    started = _started()
    assert started["asked"] == [True]
    assert started["unknown"] is False


def test_grid_pys_own_ray_retries_its_local_sockets_every_20_ms():
    """The raylet's first connect to its just-started object store can miss, and Ray's
    own retry comes a second later. The instance got the prompt retry, for Ray's 10 s."""
    assert _started()["retry"] == [20, 500]
    assert system_config(RAY_DEFAULTS).keys().isdisjoint(SOCKET_RETRY)


def test_grid_pys_own_ray_start_imports_none_of_the_dashboards_packages():
    """Ray imports them only to learn whether they are installed; node_start looks."""
    assert sorted(set(_started()["new"]) & set(DASHBOARD_DEPS)) == []


def test_the_dashboard_packages_lookup_agrees_with_rays_import_check(monkeypatch):
    """The packages are those Ray's check imports (a Ray upgrade that adds one fails
    here); installed, both checks say so; one missing is named."""
    source = Path(importlib.util.find_spec("ray.dashboard.optional_deps").origin).read_text()
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert sorted(imported) == sorted(DASHBOARD_DEPS)
    assert dashboard_dependency_error() is None and ray._private.utils.get_dashboard_dependency_error() is None
    monkeypatch.setattr("orchestration.node_start.DASHBOARD_DEPS", (*DASHBOARD_DEPS, "toynet_no_such_package"))
    missing = dashboard_dependency_error()
    assert isinstance(missing, ImportError) and missing.name == "toynet_no_such_package"


def test_settings_name_the_head_processes_to_leave_out():
    assert skipped_head_processes(RaySettings()) == ("start_api_server", "start_monitor")
    assert skipped_head_processes(RaySettings(autoscaler_monitor=True)) == ("start_api_server",)
    assert skipped_head_processes(RaySettings(dashboard=True)) == ()  # it runs in the API server
    assert skipped_head_processes(RAY_DEFAULTS) == ()


FAILING_IMPORT = """
import ray
from orchestration.cluster import connect_while_importing
from orchestration.settings import RaySettings
try:
    connect_while_importing(RaySettings(), "orchestration.no_such_module")
except ModuleNotFoundError as exc:
    print("raised", exc.name, "connected", ray.is_initialized())
"""


def test_a_failed_import_is_raised_after_disconnecting(ray_cluster):
    out = subprocess.run([sys.executable, "-c", FAILING_IMPORT], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**ray_cluster.env, "RAY_ADDRESS": ray_cluster.gcs})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["raised", "orchestration.no_such_module", "connected", "False"]


def test_grid_py_leaves_out_rays_idle_workers_which_tune_trials_never_use():
    assert system_config(RaySettings(prompt_socket_retry=False)) == {"prestart_worker_first_driver": False}
    assert system_config(RAY_DEFAULTS) == {"prestart_worker_first_driver": True}
    preload = system_config(RaySettings(preload_modules=("torch",)))
    assert preload["preload_python_modules"] == ["torch"]
