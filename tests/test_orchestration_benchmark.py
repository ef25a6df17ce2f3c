"""benchmarks/orchestration.py's CPU accounting: which process used how much CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.orchestration import CpuByProcess, _kind

# Holds 300 MiB resident while it spins for 1 CPU-s.
SPIN = "import time\nb = bytearray(300 << 20)\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"


def test_process_kinds_follow_ray_process_titles():
    assert _kind("ray::RayTrainWorker ") == "ray::RayTrainWorker"
    assert _kind("ray::TrainController.run ") == "ray::TrainController"  # method suffix dropped
    assert _kind("ray::IDLE ") == "ray::IDLE"
    assert _kind("/v/bin/python orchestration/grid.py --config c.yaml") == "grid.py (Tune's loop)"
    assert _kind("/v/lib/site-packages/ray/core/src/ray/gcs/gcs_server --x").startswith("Ray system")
    assert _kind("/usr/bin/python -m pytest") is None


def test_cpu_seconds_and_memory_of_a_busy_child_are_counted_under_its_kind():
    classify = lambda cmd: "spinner" if "spin-marker" in cmd else None  # noqa: E731
    with CpuByProcess(interval_s=0.05, classify=classify) as cpu:
        subprocess.run([sys.executable, "-c", SPIN, "spin-marker"], check=True)
    totals = cpu.totals()
    assert set(totals) == {"spinner"}
    # 1 CPU-s of spinning plus Python's start-up; at most one 0.05 s poll is lost at exit.
    assert 0.9 <= totals["spinner"] <= 2.0
    assert 300 <= cpu.peak_rss_mib()["spinner"] <= 400


def test_grid_ab_table_puts_both_sides_side_by_side():
    from benchmarks.grid_ab import _table

    run = lambda wall, cpu, mib: {"wall_s": wall, "cpu_s": {"ray::ImplicitFunc": cpu},  # noqa: E731
                                  "peak_rss_mib": {"ray::ImplicitFunc": mib}}
    table = _table({"base": [run(70, 9.7, 694), run(68, 9.5, 690)], "this tree": [run(64, 6.1, 221)]})
    assert "| wall s | 69.0 | 64.0 |" in table
    assert "| ray::ImplicitFunc | 9.6 | 6.1 | 692 | 221 |" in table
    assert "Ray up" not in table  # results from before grid_ab timed it
    timed = _table({"base": [{**run(70, 9.7, 694), "ray_up_s": 3.9}],
                    "this tree": [{**run(64, 6.1, 221), "ray_up_s": 3.1}]})
    assert "| Ray up s (after grid.py started) | 3.9 | 3.1 |" in timed


def test_grid_ab_pairs_each_repeat_in_order():
    from benchmarks.grid_ab import _paired_differences, _paired_ratios

    runs = {"base": [{"wall_s": 10.0}, {"wall_s": 20.0}], "this tree": [{"wall_s": 9.0}, {"wall_s": 19.0}]}
    assert _paired_ratios(runs) == [0.9, 0.95]
    runs["base"][0]["ray_up_s"], runs["this tree"][0]["ray_up_s"] = 4.0, 3.25
    assert _paired_differences(runs, "ray_up_s") == [-0.75]  # the pair without it is left out


def test_grid_ab_notes_when_grid_py_said_ray_is_up(tmp_path):
    from benchmarks.grid_ab import _run_noting_ray_up

    def run(script: str) -> float | None:
        return _run_noting_ray_up([sys.executable, "-c", script], tmp_path, dict(os.environ))

    ray_up = run("import time; print('plan', flush=True); time.sleep(0.3); print('started a local Ray instance')")
    assert ray_up is not None and ray_up >= 0.3
    assert run("print('no Ray')") is None
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run("print('bad config'); raise SystemExit(2)")
    assert "bad config" in failed.value.output


def test_grid_ab_refuses_an_unknown_revision():
    from tests.ray_cluster import REPO

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "grid_ab.py"), "--base", "no-such-rev"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "not a git revision" in out.stderr and "Traceback" not in out.stderr
