"""Faults the grid survives, on the shared real Ray cluster (see conftest.ray_cluster).

1. a training process crashes mid-run → Tune (a run in its trial's process) or Train
   (a Train worker) restarts it from the last epoch's checkpoint, and the result is
   identical to an uninterrupted run;
2. the grid driver is SIGKILLed → rerunning the same command trains only what is missing;
3. a worker node disappears → the affected trial is retried on the remaining node;
   a trial's Tune driver is killed → its retry gets back the CPUs the dead Train
   controller's placement group held, and completes;
4./5. a run that keeps failing is recorded as failed after bounded retries, and the
   rest of the grid completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestration.store import ArtifactStore

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _config(path: Path, experiment: str, grid: str, extra: str = "") -> Path:
    path.write_text(f"experiment: {experiment}\ngrid: {grid}\n{extra}")
    return path


def _records(store: ArtifactStore, experiment: str) -> dict[str, dict]:
    return {r["run_id"]: r for r in store.runs(experiment).to_pylist()}


@pytest.mark.parametrize("mode", ["--train-in-trial", "--no-train-in-trial"])
def test_worker_crash_resumes_from_checkpoint_with_identical_result(ray_cluster, one_worker_baseline, tmp_path, mode):
    """The training process dies hard at epoch 3: in the trial's own process Tune retries
    the trial, on a Train worker Train restarts the worker; both resume from the last
    checkpoint. The baseline ran on a Train worker, so the in-trial case also shows that
    the two ways of running are bit-identical."""
    store, run_id = one_worker_baseline
    marker, log, experiment = tmp_path / "crashed", tmp_path / "fault.log", "crash" + mode.replace("-", "_")
    config = _config(tmp_path / "c.yaml", experiment,
                     "{dataset: digits, bn: true, batch_size: 32, transforms: none, epochs: 4}")
    out = ray_cluster.grid("--config", str(config), "--artifacts", str(store.root), mode,
                           "--inject-fault", f"epoch=3,once={marker},log={log}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert marker.exists() and log.read_text().count("epoch 3") == 1  # it really crashed, once
    crashed, clean = store.get_run(experiment, run_id), store.get_run("w1", run_id)
    assert crashed.status == "complete"
    assert [row["val_acc"] for row in crashed.curve] == [row["val_acc"] for row in clean.curve]
    assert crashed.final == clean.final
    a, b = store.load_weights(experiment, run_id), store.load_weights("w1", run_id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_failing_run_is_recorded_failed_after_bounded_retries(ray_cluster, tmp_path):
    log = tmp_path / "attempts.log"
    config = _config(tmp_path / "f.yaml", "failing",
                     "{dataset: digits, bn: true, batch_size: 64, transforms: [none, basic], epochs: 2}")
    out = ray_cluster.grid("--config", str(config), "--artifacts", str(tmp_path / "a"), "--max-retries", "1",
                           "--inject-fault", f"epoch=2,run=-basic-,always=1,log={log}")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    # max_retries=1: the first attempt and one retry, then it is given up.
    assert log.read_text().count("epoch 2") == 2
    records = _records(ArtifactStore(tmp_path / "a"), "failing")
    status = {rid.split("-")[3]: r["status"] for rid, r in records.items()}
    assert status == {"none": "complete", "basic": "failed"}
    failed = next(r for r in records.values() if r["status"] == "failed")
    assert "injected failure at epoch 2" in failed["error"]
    assert "1/2 runs complete" in out.stdout and "1 run(s) not complete" in out.stdout
    assert "injected failure at epoch 2" in out.stdout


def test_driver_killed_mid_grid_rerun_finishes_only_what_is_missing(ray_cluster, tmp_path):
    config = _config(tmp_path / "k.yaml", "killed",
                     "{dataset: digits, bn: true, batch_size: 64, transforms: [none, basic], epochs: 6}",
                     "resources: {max_concurrent_trials: 1}\n")
    args = ("--config", str(config), "--artifacts", str(tmp_path / "a"))
    store = ArtifactStore(tmp_path / "a")
    proc = ray_cluster.grid_popen(*args)
    try:
        _wait(lambda: len(store.run_ids("killed")) >= 1 and any(
            r["status"] == "complete" for r in store.runs("killed").to_pylist()), timeout=400)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = {rid: r["finished_at"] for rid, r in _records(store, "killed").items() if r["status"] == "complete"}
    assert len(done) == 1
    again = ray_cluster.grid(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 already complete" in again.stdout
    records = _records(store, "killed")
    assert len(records) == 2 and all(r["status"] == "complete" for r in records.values())
    for rid, finished in done.items():
        assert records[rid]["finished_at"] == finished  # untouched, not retrained


def test_lost_worker_node_trial_is_retried_on_the_remaining_node(ray_cluster, tmp_path):
    """Head: 2 CPUs, node 2: 1 CPU; three 1-CPU trials at once put one worker on node 2."""
    config = _config(tmp_path / "n.yaml", "nodeloss",
                     "{dataset: digits, bn: true, batch_size: 64, transforms: [none, basic, normal], epochs: 12}",
                     "resources: {max_concurrent_trials: 3}\n")
    store = ArtifactStore(tmp_path / "a")
    node2 = ray_cluster.add_node()
    try:
        proc = ray_cluster.grid_popen("--config", str(config), "--artifacts", str(tmp_path / "a"))
        # Every run has checkpointed at least once: all three workers are up, one on node 2.
        ckpts = tmp_path / "a" / ".ray" / "nodeloss"
        _wait(lambda: sum(1 for d in ckpts.glob("*") if any(d.glob("checkpoint_*"))) == 3, timeout=400)
    finally:
        node2.terminate()
        node2.wait(timeout=60)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    records = _records(store, "nodeloss")
    assert len(records) == 3 and all(r["status"] == "complete" and r["epochs_done"] == 12 for r in records.values())


def test_killed_driver_frees_its_placement_group_for_the_retry(ray_cluster, tmp_path):
    """The trial's worker takes both of the head's CPUs. Killing its Tune driver kills
    the Train controller with it, whose worker group's placement group would then hold
    those CPUs until the job ends, starving Tune's retry; the retry frees it first
    (orchestration.pg_reaper) and resumes from the last checkpoint."""
    config = _config(tmp_path / "d.yaml", "driverloss",
                     "{dataset: digits, bn: true, batch_size: 64, transforms: none, epochs: 8}",
                     "resources: {cpus_per_worker: 2, train_in_trial: false}\n")
    proc = ray_cluster.grid_popen("--config", str(config), "--artifacts", str(tmp_path / "a"))
    try:
        _wait(lambda: any((tmp_path / "a" / ".ray" / "driverloss").glob("*/checkpoint_*")), timeout=400)
        (driver_pid,) = ray_cluster.alive_actor_pids("ImplicitFunc")
        os.kill(driver_pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "left by a Train controller that died" in stdout + stderr
    (record,) = _records(ArtifactStore(tmp_path / "a"), "driverloss").values()
    assert record["status"] == "complete" and record["epochs_done"] == 8


def _wait(predicate, timeout: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the store may not exist yet
            pass
        time.sleep(every)
    raise AssertionError("timed out waiting for the grid")
