"""Orchestration overhead: what Ray Tune → Ray Train costs per trial, and grid efficiency.

1. Per-trial overhead = seconds from Tune's trial start to the first epoch's report,
   minus that epoch's own training+validation seconds, for trivial runs (60 digits,
   1 epoch). Each variant runs with a fresh local Ray, in two modes: one trial at a
   time (3 trials in a row: a trial's latency) and two at a time (4 trials, the grid's
   concurrency on this machine). "Slot-seconds per trial" is what each trial cost the
   grid in all: (first trial start → last trial end) × concurrent slots, minus the
   epochs, ÷ trials; it also counts Tune's gaps between trials and tear-downs.
   Variants, interleaved over repeats:
     - "ray defaults": Ray 2.60's own behaviour (2 s health-check poll, no reuse of
       the driver actor, preemption watcher, Train metrics, a DatasetManager per run,
       TorchConfig, whose controller imports torch);
     - "reuse + 0.1 s poll": only the first two settings changed (grid.py before
       the helper actors were cut);
     - "+ helpers cut, TorchConfig": also no preemption watcher, Train metrics or
       DatasetManager;
     - "+ gloo backend": also the gloo backend whose controller never imports torch
       (orchestration.gloo);
     - "+ one result queue per driver": also one Tune result queue per driver
       process instead of one per trial;
     - "+ no PG cleaner actor": also no ``PlacementGroupCleaner`` actor per trial
       (orchestration.pg_reaper);
     - "+ no dashboard": the settings grid.py uses (orchestration.settings.RaySettings),
       also no Ray dashboard; runs still on Train's worker actors (``--no-train-in-trial``);
     - "grid.py": what grid.py runs: also each one-worker run trained inside its Tune
       trial's process, without Train's actors (orchestration.in_trial).
   ``--with-preload`` adds "+ preload torch" (idle Ray workers import torch; Train workers).
2. Grid efficiency = Σ(standalone wall time of each run through ``python -m
   toynet.train``) / (grid wall time × concurrent slots), the grid run as a user runs
   it (``python orchestration/grid.py --config configs/smoke.yaml``), as shipped
   (5 epochs; ``--efficiency-repeats``, default 3, interleaved repeats each timing the
   standalone runs and then every grid run, reported by the median grid run) and once
   with ``--epochs 40``. Standalone runs are timed two ways: on the
   whole machine (2 torch threads) and in one slot (pinned to 1 CPU, 1 thread: what a
   grid trial gets). Also timed without Ray: all the runs through a plain process
   pool, as many at a time as the grid (as ``xargs -P`` runs them), which splits the
   grid's shortfall into what running two side by side costs the machine (shared
   caches and clock, uneven runs) and what Ray and Tune add (grid wall ÷ pool wall).
   Where the grid's time goes: its runs' epochs (as each run timed
   them) against the same epochs run alone in one slot, the slot-seconds per run
   beyond its epochs, and every process's CPU-seconds and peak resident memory while
   the grid runs, by kind (sampled from /proc: each Ray actor class, Ray's system
   processes, grid.py). The grid runs three ways: as shipped (grid.py starts its own
   Ray), with ``--no-train-in-trial`` (each run on a Ray Train worker), and joining a
   Ray already started with ``ray start`` (as on a cluster; the start is not timed).

Run: ``python benchmarks/orchestration.py [--quick | --efficiency-only]``; results in
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO_ROOT, format_header, log, machine_info, markdown_table, write_json  # noqa: E402
from orchestration.config import DataOptions, GridConfig, load_config  # noqa: E402
from orchestration.store import ArtifactStore  # noqa: E402
from orchestration.settings import RAY_DEFAULTS, RaySettings  # noqa: E402
from orchestration.tuning import run_on_ray  # noqa: E402
from tests.ray_cluster import start_cluster  # noqa: E402  (the tests' `ray start` head node)
from toynet.data.prepare import default_cache_dir  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """Ray settings, and whether one-worker runs train in their Tune trial's process."""

    settings: RaySettings
    in_trial: bool = False


# Each variant adds one cut to the one before; "grid.py" is what grid.py runs.
VARIANTS = {
    "ray defaults": Variant(RAY_DEFAULTS),
    "reuse + 0.1 s poll": Variant(RaySettings(preemption_watcher=True, train_metrics=True, dataset_manager=True,
                                              gloo_backend=False, shared_result_queue=False, pg_cleaner_actor=True,
                                              dashboard=True)),
    "+ helpers cut, TorchConfig": Variant(RaySettings(gloo_backend=False, shared_result_queue=False,
                                                      pg_cleaner_actor=True, dashboard=True)),
    "+ gloo backend": Variant(RaySettings(shared_result_queue=False, pg_cleaner_actor=True, dashboard=True)),
    "+ one result queue per driver": Variant(RaySettings(pg_cleaner_actor=True, dashboard=True)),
    "+ no PG cleaner actor": Variant(RaySettings(dashboard=True)),
    "+ no dashboard": Variant(RaySettings()),
    "grid.py": Variant(RaySettings(), in_trial=True),
}
PRELOAD = {"+ preload torch": Variant(RaySettings(preload_modules=("torch",)))}
MODES = {"one at a time": (1, 3), "two at a time": (2, 4)}  # name → (concurrent, trials)
SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


def _trivial_config(trials: int, concurrent: int, in_trial: bool) -> GridConfig:
    """``trials`` distinct 1-epoch runs on 60 digits (validated through the normal config path)."""
    cfg = load_config(SMOKE)
    spec = replace(cfg.runs[1], epochs=1, train_limit=60, val_limit=30)  # the BN run
    runs = tuple(replace(spec, seed=i) for i in range(trials))
    resources = replace(cfg.resources, max_concurrent_trials=concurrent, train_in_trial=in_trial)
    return replace(cfg, runs=runs, resources=resources, data=DataOptions(train_limit=60, val_limit=30))


def measure_overhead(variant: Variant, trials: int, concurrent: int) -> tuple[list[float], float]:
    """Per-trial overhead samples (trial start → first report, minus the epoch itself),
    and the slot-seconds each trial cost the grid: (first trial start → last trial end)
    × concurrent slots, minus the epochs, ÷ trials. The second also counts Tune's gaps
    between trials and each trial's tear-down, which the first does not see."""
    cfg = _trivial_config(trials, concurrent, variant.in_trial)
    with tempfile.TemporaryDirectory() as root:
        p = run_on_ray(cfg, ArtifactStore(root), list(cfg.runs), progress_interval=1e9, settings=variant.settings)
    overheads = [p.first_result_at[r] - p.started_at[r] - p.first_epoch_seconds[r] for r in p.first_result_at]
    span = max(p.finished_at.values()) - min(p.started_at.values())
    return overheads, (span * concurrent - sum(p.first_epoch_seconds.values())) / trials


def _one_slot() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _wall(cmd: list[str], *, one_slot: bool = False, one_thread: bool = False,
          env: dict[str, str] | None = None) -> float:
    """Seconds ``cmd`` takes; without ``env``, in this environment minus RAY_ADDRESS.
    ``one_slot`` pins it to one CPU with one torch thread; ``one_thread`` only the latter."""
    env = dict(env) if env else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if one_slot or one_thread:
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, capture_output=True,
                   preexec_fn=_one_slot if one_slot else None)
    return time.perf_counter() - start


# Processes outside Ray's actors and workers, by command line; first match wins.
_KINDS = (("orchestration/grid.py", "grid.py (Tune's loop)"),
          ("site-packages/ray/", "Ray system (GCS, raylet, dashboard, logs)"))


def _kind(cmd: str) -> str | None:
    """Ray names a worker process ``ray::<Actor>[.method]`` (``ray::IDLE`` between jobs)."""
    if cmd.startswith("ray::"):
        return "ray::" + cmd[5:].split()[0].split(".")[0] if cmd[5:].strip() else "ray::"
    return next((name for key, name in _KINDS if key in cmd), None)


class CpuByProcess:
    """CPU-seconds and peak resident memory of each kind of process while a block runs,
    sampled from /proc.

    Polls every ``interval_s`` and keeps each process's last reading, so a process that
    exits loses at most its last interval, and a Ray worker's CPU counts under the
    actor it last ran. Processes already running at entry count only what they use
    after it.
    """

    def __init__(self, interval_s: float = 0.2, classify: Callable[[str], str | None] = _kind) -> None:
        self._interval_s = interval_s
        self._classify = classify
        self._base: dict[str, int] = {}
        self._last: dict[str, tuple[str, int]] = {}
        self._peak: dict[str, tuple[str, int]] = {}  # pid → (kind, most resident bytes seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> CpuByProcess:
        self._base = {pid: ticks for pid, (_, ticks) in self._read().items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._read())

    def _poll(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._last.update(self._read())

    def _read(self) -> dict[str, tuple[str, int]]:
        seen, page = {}, os.sysconf("SC_PAGE_SIZE")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited while being read
                continue
            kind = self._classify(cmd)
            if kind:
                seen[entry.name] = (kind, int(fields[11]) + int(fields[12]))  # utime + stime
                rss = int(fields[21]) * page
                if rss > self._peak.get(entry.name, ("", 0))[1]:
                    self._peak[entry.name] = (kind, rss)
        return seen

    def totals(self) -> dict[str, float]:
        """CPU-seconds per kind, largest first."""
        out: dict[str, float] = {}
        tick_s = 1 / os.sysconf("SC_CLK_TCK")
        for pid, (kind, ticks) in self._last.items():
            out[kind] = out.get(kind, 0.0) + (ticks - self._base.get(pid, 0)) * tick_s
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def peak_rss_mib(self) -> dict[str, float]:
        """The largest resident size one process of each kind reached, MiB."""
        out: dict[str, float] = {}
        for kind, rss in self._peak.values():
            out[kind] = max(out.get(kind, 0.0), rss / 2**20)
        return out


def _epochs_s(curve: list[dict[str, Any]]) -> float:
    """A run's training + validation seconds, summed over its epochs."""
    return sum(row["seconds"] for row in curve)


# The smoke grid as grid.py runs it, with each run on a Ray Train worker, and joining
# a Ray that is already running (``ray start``, as on a cluster): name → (flags, joins).
GRID_RUNS = {"grid.py": ([], False), "grid.py --no-train-in-trial": (["--no-train-in-trial"], False),
             "grid.py on a running Ray": ([], True)}


def measure_efficiency(epochs: int | None, repeats: int = 1) -> list[dict[str, Any]]:
    """Σ standalone run time (whole machine / one slot) vs the smoke grid's wall time × slots,
    for each of GRID_RUNS; one entry per grid run, the median-wall repeat of each.

    Each repeat times the standalone runs and then each grid run (in alternating order),
    so every efficiency compares runs made minutes apart on this noisy machine. Also
    splits the grid's slot-seconds into the runs' epochs (as each run timed them) and
    everything else, and compares those epochs with the same epochs run alone in one
    slot: how much slower training itself is inside the grid.
    """
    cfg = load_config(SMOKE)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in GRID_RUNS}
    for rep in range(repeats):
        alone = _standalone(cfg, epochs)
        names = list(GRID_RUNS) if rep % 2 == 0 else list(reversed(GRID_RUNS))
        for name in names:
            flags, joins = GRID_RUNS[name]
            grid, grid_epochs, cpu = _grid(cfg, [*(["--epochs", str(epochs)] if epochs else []), *flags], joins)
            samples[name].append(_efficiency(cfg, name, epochs, alone, grid, grid_epochs, cpu))
    results = []
    for name, runs in samples.items():
        effs = sorted(e["efficiency_slot"] for e in runs)
        median = sorted(runs, key=lambda e: e["grid_wall_s"])[len(runs) // 2]
        results.append({**median, "repeats": len(runs), "efficiency_slot_range": [effs[0], effs[-1]],
                        "grid_wall_s_all": [e["grid_wall_s"] for e in runs],
                        "efficiency_slot_all": [e["efficiency_slot"] for e in runs],
                        "grid_over_pool_all": [e["grid_over_pool"] for e in runs]})
    return results


@dataclass(frozen=True)
class Standalone:
    """The smoke grid's runs through ``python -m toynet.train``, without Ray: each run's
    wall s on the whole machine and alone in one slot, that one-slot run's epochs, and
    the wall s of all runs through a plain process pool, ``slots`` at a time (as
    ``xargs -P`` would run them; 1 torch thread each, as a Ray trial gets)."""

    machine: list[float]
    slot: list[float]
    slot_epochs: list[float]
    pool_wall: float


def _efficiency(cfg: GridConfig, name: str, epochs: int | None, alone: Standalone, grid: float,
                grid_epochs: list[float], cpu: CpuByProcess) -> dict[str, Any]:
    slots, runs = _slots(cfg), len(cfg.runs)
    return {
        "grid": name, "epochs": epochs or cfg.runs[0].epochs, "standalone_machine_s": sum(alone.machine),
        "standalone_slot_s": sum(alone.slot), "grid_wall_s": grid, "slots": slots,
        "efficiency_machine": sum(alone.machine) / (grid * slots), "efficiency_slot": sum(alone.slot) / (grid * slots),
        "pool_wall_s": alone.pool_wall, "efficiency_slot_pool": sum(alone.slot) / (alone.pool_wall * slots),
        "grid_over_pool": grid / alone.pool_wall,
        "standalone_slot_epochs_s": sum(alone.slot_epochs), "grid_epochs_s": sum(grid_epochs),
        "epoch_slowdown": sum(grid_epochs) / sum(alone.slot_epochs),
        "slot_s_outside_epochs_per_run": (grid * slots - sum(grid_epochs)) / runs,
        "cpus": len(os.sched_getaffinity(0)), "cpu_s_by_process": cpu.totals(),
        "peak_rss_mib_by_process": cpu.peak_rss_mib()}


def _slots(cfg: GridConfig) -> int:
    return cfg.resources.max_concurrent_trials or 2


def _standalone(cfg: GridConfig, epochs: int | None) -> Standalone:
    """Time the runs of ``cfg`` without Ray (see :class:`Standalone`)."""
    machine, slot, slot_epochs = [], [], []
    with tempfile.TemporaryDirectory() as out:
        commands = [[sys.executable, "-m", "toynet.train", "--dataset", spec.dataset, "--bn" if spec.bn else "--no-bn",
                     "--batch-size", str(spec.batch_size), "--transforms", spec.transforms,
                     "--epochs", str(epochs or spec.epochs), "--device", "cpu", "--overwrite",
                     "--out", str(Path(out) / spec.run_id)] for spec in cfg.runs]
        for cmd in commands:
            machine.append(_wall(cmd))
            slot.append(_wall(cmd, one_slot=True))
            slot_epochs.append(_epochs_s(json.loads((Path(cmd[-1]) / "metrics.json").read_text())["curve"]))
        start = time.perf_counter()
        with ThreadPoolExecutor(_slots(cfg)) as pool:
            list(pool.map(lambda cmd: _wall(cmd, one_thread=True), commands))
        pool_wall = time.perf_counter() - start
    return Standalone(machine, slot, slot_epochs, pool_wall)


def _grid(cfg: GridConfig, args: list[str], joins: bool) -> tuple[float, list[float], CpuByProcess]:
    """The smoke grid as a user runs it: wall s, each run's epochs, CPU by process.

    With ``joins``, a 2-CPU head node is started first (``ray start``, untimed) and
    grid.py joins it, as it would a cluster; otherwise grid.py starts its own Ray.
    """
    with tempfile.TemporaryDirectory() as out, contextlib.ExitStack() as stack:
        env = None
        if joins:
            cluster = stack.enter_context(contextlib.contextmanager(start_cluster)(default_cache_dir()))
            env = {**cluster.env, "RAY_ADDRESS": cluster.gcs}
            time.sleep(5)  # let the node's dashboard and agents finish starting
        with CpuByProcess() as cpu:
            grid = _wall([sys.executable, "orchestration/grid.py", "--config", str(SMOKE), *args,
                          "--artifacts", str(Path(out) / "artifacts"), "--progress-interval", "1000"], env=env)
        store = ArtifactStore(Path(out) / "artifacts")
        experiment = cfg.storage.experiment
        grid_epochs = [_epochs_s(store.get_run(experiment, rid).curve) for rid in store.run_ids(experiment)]
    return grid, grid_epochs, cpu


def _cpu_table(e: dict[str, Any]) -> str:
    available = e["grid_wall_s"] * e["cpus"]
    peak = e["peak_rss_mib_by_process"]
    rows = [[kind, f"{cpu_s:.1f}", f"{cpu_s / available:.0%}", f"{peak.get(kind, 0):.0f}"]
            for kind, cpu_s in e["cpu_s_by_process"].items()]
    rows.append(["(idle or other processes)", f"{available - sum(e['cpu_s_by_process'].values()):.1f}", "", ""])
    rows.append(["Σ epochs of the runs (wall s, inside the workers)", f"{e['grid_epochs_s']:.1f}",
                 f"{e['grid_epochs_s'] / available:.0%}", ""])
    return markdown_table(["process", "CPU-s", "share of the machine", "peak RSS of one, MiB"], rows)


Samples = dict[str, dict[str, list[float]]]  # mode → variant → samples


def _overhead_tables(samples: Samples, slot_seconds: Samples) -> dict[str, dict[str, float]]:
    med = {mode: {name: statistics.median(v) for name, v in by_variant.items()} for mode, by_variant in samples.items()}
    for mode, by_variant in samples.items():
        rows = [[name, f"{med[mode][name]:.1f}", f"{min(v):.1f}–{max(v):.1f}", len(v),
                 f"{statistics.median(slot_seconds[mode][name]):.1f}",
                 f"{med[mode][name] / med[mode]['grid.py']:.2f}"]
                for name, v in by_variant.items()]
        print(f"\n{mode}:\n")
        print(markdown_table(["variant", "overhead s (median)", "range", "trials", "slot-s per trial",
                              "÷ grid.py"], rows))
    return med


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, no efficiency runs")
    parser.add_argument("--with-preload", action="store_true", help="add the preload-torch variant")
    parser.add_argument("--efficiency-only", action="store_true", help="only the smoke-grid efficiency runs")
    parser.add_argument("--efficiency-repeats", type=int, default=3,
                        help="interleaved repeats of the shipped smoke grid's efficiency runs (40 epochs: one)")
    args = parser.parse_args()
    if args.quick and args.efficiency_only:
        parser.error("--quick skips the efficiency runs; --efficiency-only runs nothing else")
    variants = {**VARIANTS, **(PRELOAD if args.with_preload else {})}
    repeats = 1 if args.quick else 2
    info = machine_info({"modes": {m: {"concurrent": c, "trials": t} for m, (c, t) in MODES.items()},
                         "repeats": repeats})
    print(format_header("Orchestration overhead (Tune → Train, trivial trials)", info))
    samples: Samples = {mode: {name: [] for name in variants} for mode in MODES}
    slot_seconds: Samples = {mode: {name: [] for name in variants} for mode in MODES}
    for rep in range(0 if args.efficiency_only else repeats):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            for mode, (concurrent, trials) in MODES.items():
                log(f"repeat {rep + 1}/{repeats}: {name}, {mode}")
                overheads, per_trial = measure_overhead(variants[name], trials, concurrent)
                samples[mode][name] += overheads
                slot_seconds[mode][name].append(per_trial)
    result: dict[str, Any] = {"info": info}
    if not args.efficiency_only:
        result.update(overhead_s=samples, slot_seconds_per_trial=slot_seconds,
                      median_s=_overhead_tables(samples, slot_seconds))
    if not args.quick:
        effs = []
        for epochs, repeats in ((None, args.efficiency_repeats), (40, 1)):
            log(f"efficiency: smoke grid, epochs {epochs or 'as configured'}, {repeats} repeat(s)")
            effs += measure_efficiency(epochs, repeats)
        print("\nOf each grid's repeats, the one with the median wall time; the slot-efficiency range covers all.\n")
        print(markdown_table(
            ["grid", "epochs", "Σ standalone s (machine / slot)", "grid wall s", "slots", "efficiency (machine / slot)",
             "slot efficiency, all repeats", "Σ epochs s (alone in a slot / in grid)", "epochs in grid ÷ alone",
             "slot-s per run beyond its epochs"],
            [[e["grid"], e["epochs"], f"{e['standalone_machine_s']:.1f} / {e['standalone_slot_s']:.1f}", f"{e['grid_wall_s']:.1f}",
              e["slots"], f"{e['efficiency_machine']:.2f} / {e['efficiency_slot']:.2f}",
              "–".join(f"{x:.2f}" for x in e["efficiency_slot_range"]) + f" ({e['repeats']})",
              f"{e['standalone_slot_epochs_s']:.1f} / {e['grid_epochs_s']:.1f}", f"{e['epoch_slowdown']:.2f}",
              f"{e['slot_s_outside_epochs_per_run']:.1f}"] for e in effs]))
        print("\nThe same runs without Ray, through a plain process pool as many at a time as the grid "
              "(`xargs -P`; 1 torch thread each): what the machine gives two runs side by side, and what "
              "Ray and Tune add to it.\n")
        print(markdown_table(
            ["grid", "epochs", "pool wall s", "grid wall s", "grid ÷ pool", "grid ÷ pool, all repeats",
             "slot efficiency of the pool"],
            [[e["grid"], e["epochs"], f"{e['pool_wall_s']:.1f}", f"{e['grid_wall_s']:.1f}", f"{e['grid_over_pool']:.2f}",
              ", ".join(f"{x:.2f}" for x in e["grid_over_pool_all"]), f"{e['efficiency_slot_pool']:.2f}"]
             for e in effs]))
        for e in effs:
            print(f"\nwhere the machine's CPU went, {e['grid']}, smoke grid at {e['epochs']} epochs "
                  f"({e['grid_wall_s']:.1f} s × {e['cpus']} CPUs = {e['grid_wall_s'] * e['cpus']:.0f} CPU-s):\n")
            print(_cpu_table(e))
        result["smoke_efficiency"] = effs
    name = "orchestration_efficiency" if args.efficiency_only else "orchestration"
    print(f"wrote {write_json(name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
