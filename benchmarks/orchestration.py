"""Orchestration overhead: what Ray Tune → Ray Train costs per trial, and grid efficiency.

1. Per-trial overhead = seconds from Tune's trial start to the first epoch's report,
   minus that epoch's own training+validation seconds, for trivial runs (a few dozen
   digits, 1 epoch), two trials at a time on this machine. Variants side by side, each
   with a fresh local Ray, interleaved over repeats:
     - "ray defaults": Train's 2 s health-check poll, no reuse of the driver actor,
       no preloaded modules;
     - "grid.py": the settings grid.py uses (orchestration.tuning.RaySettings);
     - "grid.py + preload torch": idle Ray workers import torch ahead of time.
2. Smoke-grid efficiency = Σ(standalone wall time of each smoke run through
   ``python -m toynet.train``) / (grid wall time × concurrent slots), the grid run as a
   user runs it (``python orchestration/grid.py --config configs/smoke.yaml``).

Run: ``python benchmarks/orchestration.py [--quick]``; results in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO_ROOT, format_header, log, machine_info, markdown_table, write_json  # noqa: E402
from orchestration.config import DataOptions, load_config  # noqa: E402
from orchestration.store import ArtifactStore  # noqa: E402
from orchestration.tuning import RaySettings, run_on_ray  # noqa: E402

VARIANTS = {
    "ray defaults": RaySettings(reuse_actors=False, health_check_interval_s=2.0),
    "grid.py": RaySettings(),
    "grid.py + preload torch": RaySettings(preload_modules=("torch",)),
}


def _trivial_config(trials: int):
    """``trials`` distinct 1-epoch runs on 64 digits (validated through the normal config path)."""
    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml")
    spec = replace(cfg.runs[1], epochs=1, train_limit=60, val_limit=30)  # the BN run
    runs = tuple(replace(spec, seed=i) for i in range(trials))
    return replace(cfg, runs=runs, data=DataOptions(train_limit=60, val_limit=30))


def measure_overhead(settings: RaySettings, trials: int) -> list[float]:
    """Seconds of overhead per trial (trial start → first report, minus the epoch itself)."""
    cfg = _trivial_config(trials)
    with tempfile.TemporaryDirectory() as root:
        store = ArtifactStore(root)
        progress = run_on_ray(cfg, store, list(cfg.runs), progress_interval=1e9, settings=settings)
    return [
        progress.first_result_at[r] - progress.started_at[r] - progress.first_epoch_seconds[r]
        for r in progress.first_result_at
    ]


def measure_efficiency() -> dict[str, float]:
    """Σ standalone run time vs the smoke grid's wall time × its concurrent slots."""
    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml")
    standalone = []
    with tempfile.TemporaryDirectory() as out:
        for spec in cfg.runs:
            args = ["--dataset", spec.dataset, "--bn" if spec.bn else "--no-bn", "--batch-size", str(spec.batch_size),
                    "--transforms", spec.transforms, "--epochs", str(spec.epochs), "--device", "cpu",
                    "--out", str(Path(out) / spec.run_id)]
            standalone.append(_wall([sys.executable, "-m", "toynet.train", *args]))
        grid = _wall([sys.executable, "orchestration/grid.py", "--config", "configs/smoke.yaml",
                      "--artifacts", str(Path(out) / "artifacts"), "--progress-interval", "1000"])
    slots = cfg.resources.max_concurrent_trials or 2
    return {"standalone_sum_s": sum(standalone), "grid_wall_s": grid, "slots": slots,
            "efficiency": sum(standalone) / (grid * slots)}


def _wall(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, no efficiency run")
    args = parser.parse_args()
    repeats, trials = (1, 2) if args.quick else (2, 4)
    info = machine_info({"trials_per_variant_run": trials, "repeats": repeats})
    print(format_header("Orchestration overhead (Tune → Train, trivial trials, 2 at a time)", info))
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(repeats):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            log(f"repeat {rep + 1}/{repeats}: {name}")
            samples[name] += measure_overhead(VARIANTS[name], trials)
    med = {name: statistics.median(v) for name, v in samples.items()}
    rows = [[name, f"{med[name]:.1f}", f"{min(v):.1f}–{max(v):.1f}", len(v)] for name, v in samples.items()]
    print(markdown_table(["variant", "overhead s (median)", "range", "trials"], rows))
    for name in VARIANTS:
        print(f"ratio {name} / grid.py: {med[name] / med['grid.py']:.2f}")
    result = {"info": info, "overhead_s": samples, "median_s": med}
    if not args.quick:
        eff = measure_efficiency()
        print(markdown_table(["Σ standalone s", "grid wall s", "slots", "efficiency"],
                             [[f"{eff['standalone_sum_s']:.1f}", f"{eff['grid_wall_s']:.1f}", eff["slots"],
                               f"{eff['efficiency']:.2f}"]]))
        result["smoke_efficiency"] = eff
    print(f"wrote {write_json('orchestration', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
