"""The Train → Tune report relay's own logic (orchestration.relay), without a cluster.

A plain one-slot ``queue.Queue`` stands in for Ray's queue actor (same put/get), and
Tune's ``report`` is recorded; the real path runs in tests/test_ray_grid.py.
"""

from __future__ import annotations

import queue

import pytest
from ray import tune

from orchestration.relay import CHECKPOINT_PATH_KEY, Relay


@pytest.fixture
def reported(monkeypatch) -> list[dict]:
    rows: list[dict] = []
    monkeypatch.setattr(tune, "report", rows.append)
    return rows


class _Checkpoint:
    path = "/ckpt/epoch_2"


def test_every_report_reaches_tune_in_order_before_the_result(reported):
    one_slot = queue.Queue(1)
    one_slot.put(("an-earlier-run", {"epoch": 9}))  # left by a stopped run of this process
    relay = Relay(one_slot)

    def fit() -> str:
        relay.callback.after_report(None, [{"epoch": 1}, {"epoch": 1, "rank": 1}], None)
        relay.callback.after_report(None, [{"epoch": 2}], _Checkpoint())
        return "result"

    assert relay.run(fit) == "result"
    assert reported == [{"epoch": 1}, {"epoch": 2, CHECKPOINT_PATH_KEY: "/ckpt/epoch_2"}]


def test_a_failed_fit_raises_after_its_reports(reported):
    relay = Relay(queue.Queue(1))

    def fit() -> None:
        relay.callback.after_report(None, [{"epoch": 1}], None)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        relay.run(fit)
    assert reported == [{"epoch": 1}]
