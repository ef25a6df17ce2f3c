"""The smoke grid at two versions of the code, interleaved: wall time, CPU and memory by process.

For judging one change to the Ray layer on a noisy machine: ``--base REV`` is checked
out into a temporary git worktree, and the smoke grid (``configs/smoke.yaml``, as a
user runs it) alternates between that tree and this working tree, ``--repeats`` times
each (order swapped every repeat). Both run with this checkout's virtual
environment; ``PYTHONPATH`` points each run (and so its Ray workers) at its tree.
Prints each side's median wall time and, per process kind, median CPU-seconds and
peak resident memory of one process (``CpuByProcess`` from ``orchestration.py``),
each repeat's wall ratio (this tree ÷ base; the pair ran back to back), and how much
sooner or later Ray was up in each pair (from grid.py's launch to its line saying so:
a change to Ray's start shows there without the trials' noise).

Run: ``python benchmarks/grid_ab.py --base HEAD~1 [--repeats 4]``; results in
benchmarks/results/grid_ab.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO_ROOT, format_header, log, machine_info, markdown_table, write_json  # noqa: E402
from benchmarks.orchestration import SMOKE, CpuByProcess  # noqa: E402

# What grid.py prints once connected (orchestration.cluster): Ray is up from here on.
RAY_UP_LINES = ("started a local Ray instance", "joined the Ray cluster")


def smoke_grid(tree: Path) -> dict[str, Any]:
    """One smoke grid from ``tree`` into a fresh artifacts root: wall s, CPU-s and peak MiB by kind."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(tree)
    with tempfile.TemporaryDirectory() as out, CpuByProcess() as cpu:
        start = time.perf_counter()
        ray_up = _run_noting_ray_up([sys.executable, "orchestration/grid.py", "--config",
                                     str(SMOKE.relative_to(REPO_ROOT)), "--artifacts", out,
                                     "--progress-interval", "1000"], tree, env)
        wall = time.perf_counter() - start
    return {"wall_s": wall, "ray_up_s": ray_up, "cpu_s": cpu.totals(), "peak_rss_mib": cpu.peak_rss_mib()}


def _run_noting_ray_up(cmd: list[str], cwd: Path, env: dict[str, str]) -> float | None:
    """Run grid.py ``cmd`` to the end: seconds until it said Ray is up (None if it never
    did). Raises ``CalledProcessError``, with the output's end, if it failed."""
    start, ray_up = time.perf_counter(), None
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if ray_up is None and line.startswith(RAY_UP_LINES):
                ray_up = time.perf_counter() - start
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, "".join(tail))
    return ray_up


def _median(runs: list[dict[str, Any]], field: str, kind: str) -> float:
    return statistics.median(r[field].get(kind, 0.0) for r in runs)


def _table(runs: dict[str, list[dict[str, Any]]]) -> str:
    base, head = runs["base"], runs["this tree"]
    kinds = sorted({k for r in base + head for k in r["cpu_s"]}, key=lambda k: -_median(head, "cpu_s", k))
    rows = []
    for label, field in (("wall s", "wall_s"), ("Ray up s (after grid.py started)", "ray_up_s")):
        if all(r.get(field) is not None for r in base + head):  # results from before ray_up_s lack it
            medians = [f"{statistics.median(r[field] for r in side):.1f}" for side in (base, head)]
            rows.append([label, *medians, "", ""])
    rows += [[kind, f"{_median(base, 'cpu_s', kind):.1f}", f"{_median(head, 'cpu_s', kind):.1f}",
              f"{_median(base, 'peak_rss_mib', kind):.0f}", f"{_median(head, 'peak_rss_mib', kind):.0f}"]
             for kind in kinds]
    return markdown_table(["", "base CPU-s", "this tree CPU-s", "base peak MiB", "this tree peak MiB"], rows)


def _paired_ratios(runs: dict[str, list[dict[str, Any]]]) -> list[float]:
    """This tree's wall ÷ base's, per repeat: the two ran back to back, so a slow spell
    of the machine mostly cancels out, which the medians of each side do not."""
    return [h["wall_s"] / b["wall_s"] for b, h in zip(runs["base"], runs["this tree"])]


def _paired_differences(runs: dict[str, list[dict[str, Any]]], field: str) -> list[float]:
    """This tree's ``field`` minus base's, per repeat (seconds; pairs missing it left out)."""
    return [h[field] - b[field] for b, h in zip(runs["base"], runs["this tree"])
            if h.get(field) is not None and b.get(field) is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare with, e.g. HEAD~1")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO_ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        print(f"error: --base {args.base!r} is not a git revision of {REPO_ROOT}", file=sys.stderr)
        return 2
    info = machine_info({"base": rev.stdout.strip(), "repeats": args.repeats})
    print(format_header("Smoke grid, base vs this tree (interleaved)", info))
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this tree": []}
    with tempfile.TemporaryDirectory() as parent:
        base_tree = Path(parent) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base], cwd=REPO_ROOT, check=True)
        try:
            trees = {"base": base_tree, "this tree": REPO_ROOT}
            for rep in range(args.repeats):
                for side in (list(trees) if rep % 2 == 0 else list(reversed(trees))):
                    runs[side].append(smoke_grid(trees[side]))
                    log(f"repeat {rep + 1}/{args.repeats} {side}: {runs[side][-1]['wall_s']:.1f} s")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO_ROOT, check=True)
    print(f"\nmedians of {args.repeats} runs each:\n")
    print(_table(runs))
    ratios = _paired_ratios(runs)
    print(f"\nthis tree ÷ base wall, each repeat's back-to-back pair: {', '.join(f'{r:.2f}' for r in ratios)}"
          f" (median {statistics.median(ratios):.2f})")
    ray_up = _paired_differences(runs, "ray_up_s")
    if ray_up:
        print(f"this tree − base, seconds until Ray was up, each pair: {', '.join(f'{d:+.2f}' for d in ray_up)}"
              f" (median {statistics.median(ray_up):+.2f})")
    result = {"info": info, "runs": runs, "paired_wall_ratios": ratios, "paired_ray_up_differences_s": ray_up}
    print(f"wrote {write_json('grid_ab', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
