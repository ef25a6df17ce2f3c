"""A one-worker run trained in its Tune trial's process (orchestration.in_trial), without a cluster.

The training function is a stand-in that reports like orchestration.train_worker
(metrics, and a checkpoint directory that is deleted after the report); Tune's
``report`` is a list. The real path runs in tests/test_ray_grid.py and
tests/test_reliability.py.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from ray.train import Checkpoint

from orchestration.config import Overrides, apply_overrides, load_config
from orchestration.in_trial import INDEX_FILE, Checkpoints, fit_in_trial
from orchestration.plan import DRIVER_RESOURCES, trial_resources
from orchestration.ray_train import placement_group_key
from orchestration.relay import CHECKPOINT_PATH_KEY
from orchestration.tuning import grid_point

SMOKE = "configs/smoke.yaml"


def _epochs(upto: int, fail_at: int | None = None, log: list[int] | None = None):
    """A run of ``upto`` epochs that resumes after its checkpoint's epoch and raises at ``fail_at``."""

    def train(report, resume: Checkpoint | None) -> None:
        start = 0
        if resume is not None:
            with resume.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        for epoch in range(start + 1, upto + 1):
            if epoch == fail_at:
                raise RuntimeError(f"injected failure at epoch {epoch}")
            if log is not None:
                log.append(epoch)
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                report({"epoch": epoch}, Checkpoint.from_directory(d))

    return train


def test_every_epoch_reaches_tune_and_only_the_two_newest_checkpoints_are_kept(tmp_path):
    rows: list[dict] = []
    metrics, last = fit_in_trial("run", _epochs(4), Checkpoints(str(tmp_path)), rows.append, max_failures=0)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and metrics == {"epoch": 4}
    assert all(Path(r[CHECKPOINT_PATH_KEY]).parent == tmp_path for r in rows)
    kept = sorted(p.name for p in tmp_path.glob("checkpoint_*"))
    assert len(kept) == 2 and Path(last.path).name == kept[-1]
    assert json.loads((Path(last.path) / "state.json").read_text()) == {"epoch": 4}


def test_a_failing_run_restarts_from_its_latest_checkpoint_then_gives_up(tmp_path):
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="injected failure at epoch 3"):
        fit_in_trial("run", _epochs(4, fail_at=3, log=seen), Checkpoints(str(tmp_path)), lambda row: None,
                     max_failures=2)
    assert seen == [1, 2]  # three attempts; the retries resumed after epoch 2, not from the start


def test_a_rerun_resumes_where_the_last_process_stopped(tmp_path):
    with pytest.raises(RuntimeError):
        fit_in_trial("run", _epochs(4, fail_at=3), Checkpoints(str(tmp_path)), lambda row: None, max_failures=0)
    seen: list[int] = []
    metrics, _ = fit_in_trial("run", _epochs(4, log=seen), Checkpoints(str(tmp_path)), lambda row: None,
                              max_failures=0)
    assert seen == [3, 4] and metrics == {"epoch": 4}


def test_a_copy_cut_short_leaves_the_previous_checkpoint_the_latest(tmp_path, monkeypatch):
    checkpoints = Checkpoints(str(tmp_path))
    source = tmp_path / "src"
    source.mkdir()
    (source / "state.json").write_text('{"epoch": 1}')
    first = checkpoints.persist(Checkpoint.from_directory(str(source)))

    def dies_mid_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("orchestration.in_trial.pafs.copy_files", dies_mid_copy)
    with pytest.raises(OSError):
        checkpoints.persist(Checkpoint.from_directory(str(source)))
    assert checkpoints.latest().path == first.path
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == {"checkpoints": [Path(first.path).name]}


def test_one_worker_trials_train_in_the_trial_and_hold_the_workers_resources():
    cfg = load_config(SMOKE)
    point = grid_point(cfg, cfg.runs[0], "/tmp/store", None)
    assert point["in_trial"] is True and placement_group_key(point) is None
    assert trial_resources(cfg.resources) == {"CPU": 1.0}
    gpu = apply_overrides(cfg, Overrides(gpus_per_worker=0.25, cpus_per_worker=2))
    assert trial_resources(gpu.resources) == {"CPU": 2.0, "GPU": 0.25}
    assert grid_point(gpu, gpu.runs[0], "/tmp/store", None)["worker"]["gpu"] is True


@pytest.mark.parametrize("overrides", [Overrides(train_in_trial=False), Overrides(workers_per_trial=2)])
def test_train_workers_run_when_asked_for_or_when_a_run_has_several(overrides):
    cfg = apply_overrides(load_config(SMOKE), overrides)
    point = grid_point(cfg, cfg.runs[0], "/tmp/store", None)
    assert point["in_trial"] is False and placement_group_key(point) is not None
    assert trial_resources(cfg.resources) == DRIVER_RESOURCES
