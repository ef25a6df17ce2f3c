"""Run a ToyNet grid on Ray: ``python orchestration/grid.py [--config FILE] [overrides]``.

Steps, in order, so that every user mistake is caught before Ray starts:
validate the config and flags → resolve and probe the artifacts root → skip runs the
store already holds complete → check the data is there (and warm the node's cache)
→ join or start Ray → check the cluster can place a trial → run one Tune trial per
missing grid point → print the seed-style summary. Exit status: 0 when every run is
complete, 1 when any failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestration.config import (  # noqa: E402
    DEFAULT_CONFIG, GridConfig, Overrides, Training, apply_overrides, load_config,
)
from orchestration.plan import ResourcePlan, dispatch_order, local_resources, resolve_artifacts_root  # noqa: E402
from orchestration.store import ArtifactStore  # noqa: E402
from toynet.cli import ArgumentParser, exit_process, run_main, setup_logging  # noqa: E402
from toynet.errors import ConfigError  # noqa: E402
from toynet.spec import RunSpec  # noqa: E402

log = logging.getLogger("orchestration.grid")


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="orchestration/grid.py", description="Run a ToyNet grid on Ray Tune + Ray Train.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="grid YAML (default: configs/seed.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the resource plan, start nothing")
    p.add_argument("--experiment", help="experiment name in the store")
    p.add_argument("--artifacts", help="store root: a directory or a pyarrow.fs URI (s3://...)")
    p.add_argument("--workers-per-trial", type=int)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--gpus-per-worker", type=float, help="fractions let several trials share a GPU")
    p.add_argument("--max-concurrent-trials", type=int, help="default: as many as the cluster fits")
    p.add_argument("--placement-strategy", help="PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
    p.add_argument("--train-in-trial", action=argparse.BooleanOptionalAction, default=None,
                   help="one-worker runs train inside their Tune trial's process (default); "
                        "--no-train-in-trial starts Ray Train worker actors for them too")
    p.add_argument("--data-dir", help="dataset root (default: $TOYNET_DATA, then the user cache)")
    p.add_argument("--download", action="store_true", default=None, help="allow dataset downloads")
    p.add_argument("--train-limit", type=int)
    p.add_argument("--val-limit", type=int)
    p.add_argument("--epochs", type=int, help="set every run's epochs")
    p.add_argument("--max-retries", type=int, help="restarts of a failing run before it is recorded failed")
    p.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format (GPU speed)")
    p.add_argument("--bf16-autocast", action="store_true", default=None,
                   help="bf16 autocast; changes numerics (off: comparable with the seed)")
    p.add_argument("--compile", help="torch.compile mode for the training step: default, reduce-overhead "
                   "(CUDA graphs), max-autotune, max-autotune-no-cudagraphs")
    p.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard and the API server behind it (`ray list`, the Jobs API) with "
                   "the local Ray instance (off: they slow start-up); a cluster grid.py joins keeps its own")
    p.add_argument("--progress-interval", type=float, default=15.0, help="seconds between progress reports")
    # Test-only fault injection, hidden from --help (see _parse_fault).
    p.add_argument("--inject-fault", help=argparse.SUPPRESS, default=None)
    return p


def _overrides(args: Any) -> Overrides:
    names = ("experiment", "artifacts", "workers_per_trial", "cpus_per_worker", "gpus_per_worker",
             "max_concurrent_trials", "placement_strategy", "train_in_trial", "data_dir", "download",
             "train_limit", "val_limit", "max_retries", "epochs", "channels_last", "bf16_autocast", "compile")
    return Overrides(**{n: getattr(args, n) for n in names})


def _check_data(cfg: GridConfig) -> dict[str, int]:
    """Make each dataset ready on this node (decoded once into its cache), without
    importing torch: missing or bad data fails here, before Ray starts. Returns each
    dataset's training-split size."""
    from toynet.data import prepare_dataset

    sizes = {}
    for name in dict.fromkeys(spec.dataset for spec in cfg.runs):
        ready = prepare_dataset(name, cfg.data.dir, download=cfg.data.download)
        log.info("dataset %s ready: %d train / %d val images (%s)", name, ready.train, ready.val, ready.origin)
        sizes[name] = ready.train
    return sizes


def _print_runs(cfg: GridConfig, store: ArtifactStore, pending: list[RunSpec]) -> None:
    todo = {s.run_id for s in pending}
    print(f"{len(cfg.runs)} runs in {cfg.source} (experiment {cfg.storage.experiment!r}, "
          f"{len(cfg.runs) - len(todo)} already complete in {store.root}):")
    for spec in cfg.runs:
        state = "todo" if spec.run_id in todo else "done"
        print(f"  {state}  {spec.run_id}")
    if cfg.training != Training():
        print("execution options: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg.training).items()))


def _body(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    fault = _parse_fault(args.inject_fault)
    cfg = apply_overrides(load_config(args.config), _overrides(args))
    root = resolve_artifacts_root(cfg.storage.artifacts)
    store = ArtifactStore(root)
    pending = [s for s in cfg.runs if not store.is_complete(cfg.storage.experiment, s.run_id)]
    if args.dry_run:
        plan = ResourcePlan.build(cfg.resources, local_resources(), len(pending))
        _print_runs(cfg, store, pending)
        print(plan.describe("this machine"))
        return 0
    _print_runs(cfg, store, pending)
    if not pending:
        print("nothing to do: every run is already complete")
        return _summarise(cfg, store)
    train_sizes = _check_data(cfg)
    store.check_writable()  # after every input check: a failed check leaves no empty root behind
    _connect_and_run(cfg, store, dispatch_order(pending, train_sizes), args, fault)
    return _summarise(cfg, store)


def _connect_and_run(cfg: GridConfig, store: ArtifactStore, pending: list[RunSpec], args: Any,
                     fault: dict[str, Any] | None) -> None:
    # Imports Ray only now, after every input check. Ray starts (or is joined) while a
    # thread imports the Tune layer: most of ray.init() is waiting on Ray's processes.
    from orchestration.cluster import connect_while_importing
    from orchestration.settings import RaySettings

    settings = RaySettings(dashboard=args.dashboard)
    connection = connect_while_importing(settings, "orchestration.tuning")
    from orchestration.tuning import run_grid  # imported by now

    run_grid(connection, cfg, store, pending, progress_interval=args.progress_interval, fault=fault,
             settings=settings)


def _parse_fault(text: str | None) -> dict[str, Any] | None:
    """Parse the test-only ``--inject-fault epoch=N,run=ID_PART,once=FILE|always=1,log=FILE``."""
    if not text:
        return None
    fault: dict[str, Any] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in ("epoch", "run", "once", "always", "log"):
            raise ConfigError(f"--inject-fault: unknown key {key!r}; expected epoch, run, once, always, log")
        fault[key] = int(value) if key == "epoch" else value
    for key in ("once", "log"):
        if key in fault:
            fault[key] = str(Path(fault[key]).resolve())
    if "epoch" not in fault or ("once" in fault) == ("always" in fault):
        raise ConfigError("--inject-fault needs epoch=N and exactly one of once=FILE or always=1")
    return fault


def _summarise(cfg: GridConfig, store: ArtifactStore) -> int:
    from orchestration.summary import grid_summary

    text, failed = grid_summary(store, cfg.storage.experiment, [s.run_id for s in cfg.runs])
    print(text)
    print(f"artifacts: {store.root}/{cfg.storage.experiment}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run grid.py's command line in this process; returns the exit status."""
    return run_main(_body, argv)


def script() -> NoReturn:
    """Entry point of ``orchestration/grid.py`` and the ``toynet-grid`` script: exits."""
    exit_process(main)


if __name__ == "__main__":
    script()
