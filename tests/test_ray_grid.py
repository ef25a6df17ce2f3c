"""The grid on a real Ray cluster: `ray start` + `ray job submit`, DDP, two nodes.

All Ray tests share one cluster (conftest.ray_cluster) started with `ray start --head`
(token authentication on, dashboard bound to 127.0.0.1) and stopped with `ray stop`.
They are the slow part of the suite (about a minute per grid run on 2 cores).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.store import ArtifactStore

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE_RUNS = 4


def _table_rows(stdout: str) -> list[list[str]]:
    """Data rows of the Markdown summary table that grid.py prints."""
    lines = [ln for ln in stdout.splitlines()
             if ln.startswith("| ") and not ln.startswith(("| Dataset", "| --"))]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _assert_table_matches_store(stdout: str, store: ArtifactStore, experiment: str) -> None:
    rows = _table_rows(stdout)
    stored = store.runs(experiment).to_pylist()
    assert len(rows) == len(stored)
    printed = {(r[1] == "√", r[4].lower()): [float(x) for x in r[5:9]] for r in rows}
    for run in stored:
        key = (run["bn"], run["transforms"])
        assert printed[key] == pytest.approx([run[m] for m in ("loss", "acc", "val_loss", "val_acc")], abs=5e-5)


def test_smoke_grid_via_ray_job_submit(ray_cluster, tmp_path):
    """ray job submit --working-dir . → SUCCEEDED, every grid point complete, table == store."""
    artifacts = tmp_path / "artifacts"
    before = ray_cluster.actor_counts()
    job = ray_cluster.run(
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard, "--working-dir", ".", "--",
        "python", "orchestration/grid.py", "--config", "configs/smoke.yaml", "--artifacts", str(artifacts),
        "--progress-interval", "5",
    )
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    assert "joined the Ray cluster" in out
    assert re.search(r"Job '.*' succeeded", out), out[-2000:]
    store = ArtifactStore(artifacts)
    runs = store.runs("smoke").to_pylist()
    assert len(runs) == SMOKE_RUNS and all(r["status"] == "complete" for r in runs)
    for run in runs:
        assert run["epochs_done"] == 5 and run["weights_sha256"]
        store.load_model("smoke", run["run_id"])  # weights verified against their checksum
    bn_none = next(r for r in runs if r["bn"] and r["transforms"] == "none")
    assert bn_none["val_acc"] > 0.9
    _assert_table_matches_store(out, store, "smoke")
    # One-worker runs train inside their Tune trial's process (orchestration.in_trial):
    # none of Train's actors start, and Tune reuses one process per concurrent slot.
    started = _actors_since(before, ray_cluster.actor_counts())
    assert not started.keys() & {"TrainController", "RayTrainWorker", "SynchronizationActor", "_QueueActor"}, started
    assert 1 <= started["ImplicitFunc"] <= 2, started
    # Tune keeps its per-trial JSON and CSV results, but not its TensorBoardX files: the
    # store has each run's TensorBoard events, and TensorBoardX imports torch into grid.py.
    tune_dir = artifacts / ".ray" / "tune" / "smoke"
    assert len(list(tune_dir.glob("*/result.json"))) == len(list(tune_dir.glob("*/progress.csv"))) == SMOKE_RUNS
    assert not list(tune_dir.rglob("events.out.tfevents*"))
    # Trials start in orchestration.plan.dispatch_order: the smoke runs' work is equal,
    # so a BatchNorm run with transforms first (Tune numbers its trials' directories).
    assert "run_id_digits-bn-b32-basic-" in sorted(p.name for p in tune_dir.glob("driver_*"))[0]

    # Running the same grid again trains nothing and leaves the records untouched.
    before = {r["run_id"]: r["finished_at"] for r in runs}
    again = ray_cluster.grid("--config", "configs/smoke.yaml", "--artifacts", str(artifacts))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stdout
    assert {r["run_id"]: r["finished_at"] for r in store.runs("smoke").to_pylist()} == before


def test_relative_artifacts_root_is_refused_under_job_submit(ray_cluster):
    job = ray_cluster.run(
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard, "--working-dir", ".", "--",
        "python", "orchestration/grid.py", "--config", "configs/smoke.yaml", "--artifacts", "artifacts",
    )
    assert job.returncode != 0
    assert "is relative" in job.stdout + job.stderr
    assert "Traceback" not in job.stdout + job.stderr


def test_two_worker_ddp_across_two_nodes_matches_one_worker(ray_cluster, one_worker_baseline, tmp_path):
    """A second node joins; a 2-worker STRICT_SPREAD trial (one worker per node) lands in
    the store, and its final metrics match the 1-worker run of the same grid point.
    It also runs with ``--channels-last``: execution options reach every worker and are
    recorded with the run.

    Tolerance: 0.03 val_acc / 0.1 val_loss. The runs are not bit-identical: each rank's
    BatchNorm normalises its own half of every global batch (no SyncBN), and the
    reductions are summed in a different order.
    """
    store, run_id = one_worker_baseline
    config = tmp_path / "ddp.yaml"
    config.write_text("experiment: w2\ngrid: {dataset: digits, bn: true, batch_size: 32, transforms: none, epochs: 4}\n")
    node2 = ray_cluster.add_node()
    try:
        _wait_for_nodes(ray_cluster, 2)
        two = ray_cluster.grid("--config", str(config), "--artifacts", str(store.root),
                               "--workers-per-trial", "2", "--placement-strategy", "STRICT_SPREAD",
                               "--channels-last")
        assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    finally:
        node2.terminate()
        node2.wait(timeout=60)
    r1, r2 = store.get_run("w1", run_id), store.get_run("w2", run_id)
    assert (r1.num_workers, r2.num_workers) == (1, 2)
    assert r1.train_options == {"channels_last": False, "bf16_autocast": False, "compile": None}
    assert r2.train_options == {"channels_last": True, "bf16_autocast": False, "compile": None}
    assert r2.status == "complete" and r1.final["val_acc"] > 0.9
    assert abs(r1.final["val_acc"] - r2.final["val_acc"]) <= 0.03
    assert abs(r1.final["val_loss"] - r2.final["val_loss"]) <= 0.1


def _actors_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Actors started between two ``actor_counts`` readings, by class."""
    return {name: n - before.get(name, 0) for name, n in after.items() if n > before.get(name, 0)}


def _wait_for_nodes(cluster, count: int, timeout: float = 90) -> None:
    code = ("import ray, json; ray.init(address='%s', logging_level='ERROR');"
            "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))" % cluster.gcs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run(sys.executable, "-c", code)
        if out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1]) >= count:
            return
        time.sleep(2)
    raise AssertionError(f"the cluster did not reach {count} nodes")


_SLOW_TUNE_LOOP = """
import sys, time
from orchestration import grid, progress

# A busy Tune loop, as on a loaded machine: each result takes 3 s to process, so the
# run's last epoch report and the driver's return both arrive before Tune asks the
# trial for its next result.
_on_result = progress.GridProgress.on_trial_result
def slow(self, *args, **kwargs):
    time.sleep(3)
    return _on_result(self, *args, **kwargs)
progress.GridProgress.on_trial_result = slow
sys.exit(grid.main(sys.argv[1:]))
"""


def test_grid_finishes_when_tune_loop_lags_behind_the_run(ray_cluster, tmp_path):
    """Regression: Ray 2.60's own Train→Tune relay (``TuneReportCallback``) deadlocks
    when the run's last report is still queued as its driver returns: Tune's main thread
    then blocks putting that report into the one-slot queue that already holds the
    driver's final result. The grid relays reports in the driver's own thread instead.

    The runs use Train's worker actors (``--no-train-in-trial``), so this also checks
    what each such trial starts: none of the Train helper actors a grid never uses, and
    one Tune result queue per driver process for all its trials.
    """
    config = tmp_path / "lag.yaml"
    config.write_text("experiment: lag\ngrid: {dataset: digits, bn: true, batch_size: 64, transforms: [none, basic], "
                      "epochs: 2}\nresources: {max_concurrent_trials: 1, train_in_trial: false}\n")
    before = ray_cluster.actor_counts()
    cmd, env = ray_cluster._grid_cmd(("--config", str(config), "--artifacts", str(tmp_path / "a")))
    out = subprocess.run([sys.executable, "-c", _SLOW_TUNE_LOOP, *cmd[2:]], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = ArtifactStore(tmp_path / "a").runs("lag").to_pylist()
    assert len(runs) == 2 and all(r["status"] == "complete" and r["epochs_done"] == 2 for r in runs)
    started = _actors_since(before, ray_cluster.actor_counts())
    assert started.get("TrainController") == started.get("RayTrainWorker") == 2, started
    assert not started.keys() & {"DatasetManager", "PreemptionWatcher", "PlacementGroupCleaner"}, started
    assert started["_QueueActor"] == started["ImplicitFunc"] == 1, started  # the driver was reused
