"""What a grid point carries reaches Ray Train: the settings that cut per-trial overhead
and the execution options (no Ray instance needed)."""

from __future__ import annotations

import pytest
import ray.train
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from orchestration.config import Overrides, apply_overrides, load_config
from orchestration.pg_reaper import RecordPlacementGroup
from orchestration.ray_train import _GridTrainer, placement_group_key
from orchestration.settings import RAY_DEFAULTS, RaySettings
from orchestration.tuning import grid_point
from toynet.options import TrainOptions

SMOKE = "configs/smoke.yaml"


def _loop(config):  # never runs: only the trainer's callbacks are inspected
    raise AssertionError("not called")


def _has_dataset_manager(trainer: _GridTrainer) -> bool:
    return any(isinstance(cb, DatasetsCallback) for cb in trainer._create_default_callbacks())


def test_grid_point_carries_the_train_environment_and_the_dataset_switch():
    cfg = load_config(SMOKE)
    point = grid_point(cfg, cfg.runs[0], "/tmp/store", None, RaySettings())
    assert point["train_env"] == {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_METRICS_ENABLED": "0",
    }
    assert point["dataset_manager"] is False and point["gloo_backend"] is True
    assert point["shared_result_queue"] is True and point["pg_cleaner_actor"] is False
    defaults = grid_point(cfg, cfg.runs[0], "/tmp/store", None, RAY_DEFAULTS)
    assert defaults["train_env"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
    assert defaults["dataset_manager"] is True and defaults["gloo_backend"] is False
    assert defaults["shared_result_queue"] is False and defaults["pg_cleaner_actor"] is True


def test_grid_point_carries_the_execution_options_to_the_workers():
    cfg = apply_overrides(load_config(SMOKE), Overrides(channels_last=True, compile="default"))
    options = grid_point(cfg, cfg.runs[0], "/tmp/store", None)["worker"]["train_options"]
    assert TrainOptions(device="cpu", **options) == TrainOptions(
        device="cpu", channels_last=True, compile="default", eval_batch_size=1024)


def test_the_dataset_manager_is_left_out_only_when_no_ray_dataset_is_passed():
    scaling = ray.train.ScalingConfig(num_workers=1)
    assert not _has_dataset_manager(_GridTrainer(_loop, scaling_config=scaling, dataset_manager=False))
    assert _has_dataset_manager(_GridTrainer(_loop, scaling_config=scaling, dataset_manager=True))
    # A run that does pass a Ray Dataset keeps Train's plumbing whatever the switch says.
    with_data = _GridTrainer(_loop, scaling_config=scaling, dataset_manager=False, datasets={"train": lambda: None})
    assert _has_dataset_manager(with_data)


def test_a_placement_group_key_swaps_rays_cleaner_actor_for_the_recorder():
    scaling = ray.train.ScalingConfig(num_workers=1)
    kinds = {type(cb) for cb in _GridTrainer(_loop, scaling_config=scaling)._create_default_callbacks()}
    assert PlacementGroupCleanerCallback in kinds and RecordPlacementGroup not in kinds
    keyed = _GridTrainer(_loop, scaling_config=scaling, placement_group_key="/store/.ray/smoke/run")
    kinds = {type(cb) for cb in keyed._create_default_callbacks()}
    assert PlacementGroupCleanerCallback not in kinds and RecordPlacementGroup in kinds


def test_placement_group_key_names_the_run_unless_rays_cleaner_is_used():
    cfg = apply_overrides(load_config(SMOKE), Overrides(train_in_trial=False))  # Train's worker actors
    spec = cfg.runs[0]
    point = grid_point(cfg, spec, "/tmp/store", None, RaySettings())
    assert placement_group_key(point) == f"/tmp/store/.ray/smoke/{spec.run_id}"
    assert placement_group_key(grid_point(cfg, spec, "/tmp/store", None, RAY_DEFAULTS)) is None


def test_grid_py_starts_ray_without_the_dashboard_which_only_rays_cleaner_needs():
    assert RaySettings().dashboard is False and RAY_DEFAULTS.dashboard is True
    with pytest.raises(ValueError, match="pg_cleaner_actor needs dashboard"):
        RaySettings(pg_cleaner_actor=True)
    assert RaySettings(pg_cleaner_actor=True, dashboard=True).pg_cleaner_actor


def test_cpu_trials_get_a_backend_whose_controller_never_imports_torch():
    """Unpickling the backend config (what a Train controller does) must not import torch."""
    import pickle
    import subprocess
    import sys

    from orchestration.gloo import GlooConfig

    blob = pickle.dumps(GlooConfig())
    code = ("import pickle, sys; cfg = pickle.loads(sys.stdin.buffer.read()); cfg.backend_cls();"
            "print(cfg.backend, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == ["gloo", "False"]


def test_grid_py_keeps_tunes_csv_and_json_results_but_not_its_tensorboardx_logger():
    """TensorBoardX imports torch into grid.py; the store writes each run's TensorBoard
    events itself. The smoke job-submit test checks the files Tune then writes."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from orchestration.tuning import tune_loggers

    assert RaySettings().tune_tensorboard is False and RAY_DEFAULTS.tune_tensorboard is True
    assert [type(cb) for cb in tune_loggers(RaySettings())] == [CSVLoggerCallback, JsonLoggerCallback]
    assert tune_loggers(RAY_DEFAULTS) == []  # Tune adds its own three


def test_the_ray_internals_disconnect_relies_on_are_there():
    """disconnect() kills the autoscaler monitor of grid.py's own Ray instance before
    ray.shutdown() (Ray 2.60 stops the GCS first, and the monitor then hangs for 1 s).
    The CI's quickstart runs that path; this names the API if a Ray upgrade moves it."""
    import ray._private.worker
    from ray._private.node import Node

    assert hasattr(ray._private.worker, "_global_node")
    assert "check_alive" in Node.kill_monitor.__code__.co_varnames
