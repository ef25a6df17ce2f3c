"""benchmarks/gpu.py is ready for a GPU: its code runs end to end on the CPU (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu_and_projects_the_seed_grid(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--quick", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-quick.json").read_text())
    assert set(result["single_images_per_s"]) == {
        "fp32", "channels_last", "channels_last + bf16", "channels_last + compile",
        "channels_last + compile (CUDA graphs)"}
    assert set(result["warm_up_s"]) == set(result["single_images_per_s"])
    assert all(v > 0 for v in result["single_images_per_s"].values())
    assert set(result["packed_images_per_s"]) == {"1", "2"}
    assert result["seed_grid_serial_s"] > 0 and result["seed_grid_projected_min"] > 0
    # One row per distinct (dataset, batch, transforms, BN) cell of the 38 seed runs.
    assert "seed grid (" in out.stdout and "| cifar10 | 256 | normal |" in out.stdout
