"""Pre-flight checks without Ray: resource plans, artifacts roots, progress text."""

from __future__ import annotations

import json

import pytest

from orchestration.config import Resources
from orchestration.plan import ClusterResources, ResourcePlan, dispatch_order, join_root, resolve_artifacts_root
from toynet.errors import ConfigError
from toynet.spec import RunSpec

TWO_CPUS = ClusterResources(cpus=2, gpus=0, nodes=1, max_node_cpus=2, max_node_gpus=0)
ONE_GPU = ClusterResources(cpus=16, gpus=1, nodes=1, max_node_cpus=16, max_node_gpus=1)


@pytest.mark.parametrize("res, cluster, pending, concurrent", [
    (Resources(), TWO_CPUS, 38, 2),
    (Resources(workers_per_trial=2), TWO_CPUS, 38, 1),
    (Resources(cpus_per_worker=0.5), TWO_CPUS, 38, 4),
    (Resources(), TWO_CPUS, 1, 1),                                  # never more than the runs left
    (Resources(max_concurrent_trials=3), TWO_CPUS, 38, 3),          # explicit wins
    (Resources(gpus_per_worker=0.25), ONE_GPU, 38, 4),              # four trials share the GPU
    (Resources(gpus_per_worker=1 / 3), ONE_GPU, 38, 3),             # no 0.999... rounding down
])
def test_concurrency_follows_the_cluster(res, cluster, pending, concurrent):
    assert ResourcePlan.build(res, cluster, pending).concurrent == concurrent


@pytest.mark.parametrize("res, cluster, words", [
    (Resources(gpus_per_worker=1), TWO_CPUS, "no GPUs"),
    (Resources(gpus_per_worker=2), ONE_GPU, "no node has more than 1 GPU"),
    (Resources(workers_per_trial=3), TWO_CPUS, "needs 3 worker"),
    (Resources(cpus_per_worker=4), TWO_CPUS, "no node has more than 2 CPU"),
    (Resources(workers_per_trial=2, placement_strategy="STRICT_SPREAD"), TWO_CPUS, "1 node"),
])
def test_trials_that_can_never_be_placed_are_refused(res, cluster, words):
    with pytest.raises(ConfigError, match=words):
        ResourcePlan.build(res, cluster, 10)


def _spec(dataset="mnist", epochs=10, bn=False, transforms="none", batch_size=64, train_limit=None, seed=0):
    return RunSpec(dataset=dataset, bn=bn, batch_size=batch_size, transforms=transforms, epochs=epochs,
                   train_limit=train_limit, seed=seed)


SIZES = {"mnist": 60_000, "cifar10": 50_000, "digits": 1_438}


def test_runs_start_with_the_most_work_first():
    """Epochs × training images × pixels: a CIFAR-10 image has 3×32×32 values, MNIST 28×28."""
    short, long_ = _spec(epochs=10), _spec(epochs=60)
    cifar = _spec("cifar10", epochs=10)            # 50k × 3072 > 60k × 784 per epoch
    limited = _spec("cifar10", epochs=10, train_limit=1_000)
    assert dispatch_order([short, limited, long_, cifar], SIZES) == [long_, cifar, short, limited]


def test_runs_of_equal_work_start_bn_then_heavier_transforms_then_smaller_batches():
    plain, bn, basic, normal = _spec(), _spec(bn=True), _spec(transforms="basic"), _spec(transforms="normal")
    small_batch = _spec(batch_size=32)
    assert dispatch_order([plain, small_batch, basic, normal, bn], SIZES) == [bn, normal, basic, small_batch, plain]


def test_runs_that_tie_keep_their_config_order():
    a, b = _spec(seed=0), _spec(seed=1)
    assert dispatch_order([b, a], SIZES) == [b, a] and dispatch_order([a, b], SIZES) == [a, b]


def test_join_root_keeps_the_uri_query_last():
    assert join_root("/data/art", ".ray", "exp") == "/data/art/.ray/exp"
    assert join_root("s3://b/p/?endpoint_override=h&scheme=http", ".ray") == "s3://b/p/.ray?endpoint_override=h&scheme=http"


def test_artifacts_root_is_made_absolute_and_refused_when_relative_in_a_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert resolve_artifacts_root("artifacts") == str(tmp_path / "artifacts")
    assert resolve_artifacts_root("s3://bucket/x") == "s3://bucket/x"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://pkg.zip"}}))
    with pytest.raises(ConfigError, match="temporary copy"):
        resolve_artifacts_root("artifacts")
    assert resolve_artifacts_root(str(tmp_path / "abs")) == str(tmp_path / "abs")


def test_progress_text_counts_runs_and_estimates_time_left():
    from orchestration.progress import GridProgress, _Live

    specs = {s.run_id: s for s in (RunSpec("digits", b, 32, "none", 4) for b in (False, True))}
    first, second = list(specs)
    lines: list[str] = []
    progress = GridProgress(specs, write=lines.append)
    assert "0/2 done, 0 running, 2 pending, ETA unknown" in progress.status_text()
    progress._live[second] = _Live(specs[second], epoch=2, val_acc=0.5)
    progress._done[first] = "complete"
    text = progress.status_text()
    assert "1/2 done, 1 running, 0 pending" in text and "ETA unknown" not in text
    assert f"{second}: epoch 2/4 val_acc 0.5000" in text


@pytest.mark.parametrize("config, runs", [("configs/seed.yaml", 38), ("configs/full.yaml", 288), ("configs/smoke.yaml", 4)])
def test_dry_run_lists_every_run_and_the_plan_without_ray(config, runs, tmp_path, capsys):
    import sys

    from orchestration import grid

    assert grid.main(["--config", config, "--dry-run", "--artifacts", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    listed = [ln.split()[1] for ln in out.splitlines() if ln.startswith("  todo ")]
    assert len(listed) == len(set(listed)) == runs
    assert f"resource plan on this machine: {runs} runs to train" in out
    assert not (tmp_path / "a").exists()  # a dry run writes nothing
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_plan_says_where_a_trial_trains():
    in_trial = ResourcePlan.build(Resources(), TWO_CPUS, 4).describe("this machine")
    assert "each trial = 1 worker (1 CPU) in the Tune trial's own process; 2 trial(s) at a time" in in_trial
    workers = ResourcePlan.build(Resources(train_in_trial=False), TWO_CPUS, 4).describe("this machine")
    assert "each trial = 1 Ray Train worker(s) × (1 CPU), placement PACK" in workers
