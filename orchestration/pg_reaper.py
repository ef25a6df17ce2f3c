"""Remove a dead Train controller's placement group without a helper process per trial.

A Train controller removes its worker group's placement group when it exits. If it
dies instead (its Tune driver was killed or crashed), the group outlives it until the
job ends, holding its CPUs or GPUs: a Tune retry of that trial, or the rest of the
grid, could wait for them for good. Ray Train 2.60 guards against this with a
detached ``PlacementGroupCleaner`` actor for every run: one more Python process per
trial importing ``ray.train`` (about 2 CPU-s here), polling the dashboard's state API
every second, and started before the run trains (the worker group waits for it).

Here the controller records its worker group's placement group in Ray's key-value
store (in the GCS, no process) under the run's key, and :func:`reap` removes a
recorded group that still exists. The grid calls it where a controller may have died:
the trial's driver before it starts Train (a Tune retry after the driver was lost)
and after Train returns or fails, and grid.py when a trial ends in Tune, whether
Tune gave up on it or stopped it (orchestration.tuning). ``ray.experimental.internal_kv``
and Train's callback classes are Ray internals (ray is pinned to 2.60.x);
tests/test_reliability.py kills a driver mid-run and checks that the retry gets the
CPUs back.
"""

from __future__ import annotations

import logging

import ray
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

log = logging.getLogger(__name__)
NAMESPACE = "toynet_grid_placement_groups"


class RecordPlacementGroup(WorkerGroupCallback):
    """Runs in the Train controller: records each new worker group's placement group."""

    def __init__(self, key: str) -> None:
        self._key = key

    def after_worker_group_start(self, worker_group) -> None:  # noqa: ANN001 - Train's WorkerGroup
        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        _internal_kv_put(self._key, group.id.hex(), overwrite=True, namespace=NAMESPACE)


def reap(key: str) -> bool:
    """Remove the placement group recorded under ``key`` if it still exists; forget the key.

    Returns whether a group was removed. Only call it when no live controller owns
    ``key``'s run: the group of a running controller would be taken from under it.
    """
    recorded = _internal_kv_get(key, namespace=NAMESPACE)
    if recorded is None:
        return False
    group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(recorded.decode())))
    alive = placement_group_table(group).get("state") not in (None, "REMOVED")
    if alive:
        remove_placement_group(group)
        log.warning("removed placement group %s, left by a Train controller that died (%s)", group.id.hex(), key)
    _internal_kv_del(key, namespace=NAMESPACE)
    return alive


def reap_quietly(key: str) -> None:
    """:func:`reap`, logging instead of raising: for clean-up that must not fail a run."""
    try:
        reap(key)
    except Exception as exc:  # at worst the job's end frees the group
        log.warning("could not check the placement group recorded as %s: %s", key, exc)
