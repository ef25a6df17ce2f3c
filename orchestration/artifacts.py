"""Retrieve and compare stored results: ``python -m orchestration.artifacts`` / ``toynet-artifacts``.

Commands: ``list``, ``runs EXP [--where k=v ...]``, ``show RUN``, ``compare EXP [EXP2 ...]``,
``plot EXP --out FILE.png``, ``export EXP --out FILE.csv|.parquet``. The global
``--root`` (default ``$TOYNET_ARTIFACTS`` or ``./artifacts``) takes a directory or a
``pyarrow.fs`` URI. Works without Ray. User errors print ``error: <message>`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from orchestration import compare as cmp
from orchestration.records import METRICS, StoredRun
from orchestration.store import ArtifactStore, default_root
from toynet.cli import ArgumentParser, exit_process, run_main
from toynet.errors import ConfigError, WeightsError


def _parser() -> ArgumentParser:
    root = ArgumentParser(add_help=False)
    root.add_argument("--root", default=argparse.SUPPRESS,
                      help="store root: directory or URI such as s3://bucket/prefix "
                           "(default: $TOYNET_ARTIFACTS or ./artifacts)")
    p = ArgumentParser(prog="toynet-artifacts", parents=[root],
                       description="List, query, compare, plot and export stored runs (no Ray needed).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)
    sub.add_parser("list", parents=[root], help="experiments with run counts, status and date")
    runs = sub.add_parser("runs", parents=[root], help="a table of an experiment's runs")
    runs.add_argument("experiment")
    runs.add_argument("--where", nargs="+", default=[], metavar="COL=VALUE",
                      help="keep runs where every COL equals VALUE (VALUE may be a,b for either)")
    show = sub.add_parser("show", parents=[root], help="one run: config, metrics, curve, weights")
    show.add_argument("run", help="RUN, EXP/RUN or a unique prefix of a run id")
    show.add_argument("--experiment", help="look only in this experiment")
    comp = sub.add_parser("compare", parents=[root], help="results in the seed's layout")
    comp.add_argument("experiments", nargs="+", metavar="EXP")
    comp.add_argument("--reference", help="'seed' (configs/reference/seed_results.csv) or a CSV path")
    comp.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    comp.add_argument("--pool", action="store_true", help="merge experiments: their runs count as seeds")
    comp.add_argument("--any-epochs", action="store_true",
                      help="compare a point the reference lacks with its shortest published schedule")
    plot = sub.add_parser("plot", parents=[root], help="validation curves per grid point (PNG)")
    plot.add_argument("experiment")
    plot.add_argument("--out", required=True, help="PNG file to write")
    plot.add_argument("--reference", help="mark the seed's final values ('seed' or a CSV path)")
    export = sub.add_parser("export", parents=[root], help="the runs table as CSV or Parquet")
    export.add_argument("experiment")
    export.add_argument("--out", required=True, help="FILE.csv or FILE.parquet")
    export.add_argument("--epochs", action="store_true", help="export one row per run × epoch instead")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    store = ArtifactStore(getattr(args, "root", None) or default_root())
    command = {"list": _list, "runs": _runs, "show": _show, "compare": _compare,
               "plot": _plot, "export": _export}[args.command]
    return command(store, args)


# ---- commands ----------------------------------------------------------------------

def _list(store: ArtifactStore, args: argparse.Namespace) -> int:
    infos = store.experiments()
    if not infos:
        print(f"no experiments under {store.root}")
        return 0
    rows = [[i.name, i.runs, i.complete, i.failed, _when(i.last_finished)] for i in infos]
    print(_text_table(["EXPERIMENT", "RUNS", "COMPLETE", "FAILED", "LAST FINISHED (UTC)"], rows))
    return 0


def _runs(store: ArtifactStore, args: argparse.Namespace) -> int:
    table = store.runs(args.experiment, _parse_where(args.where))
    headers = ["RUN", "STATUS", "DATASET", "BN", "BATCH", "TRANSFORMS", "EPOCHS", "SEED",
               "VAL_LOSS", "VAL_ACC", "WALL_S", "DEVICE"]
    rows = [[r["run_id"], r["status"], r["dataset"], "on" if r["bn"] else "off", r["batch_size"], r["transforms"],
             r["epochs"], r["seed"], _fmt(r["val_loss"]), _fmt(r["val_acc"]), f"{r['wall_seconds']:.1f}", r["device"]]
            for r in cmp.order_runs(table.to_pylist())]
    print(_text_table(headers, rows) if rows else f"no runs in {args.experiment} match")
    return 0


def _show(store: ArtifactStore, args: argparse.Namespace) -> int:
    """Print the record, then fail (exit 2) if its weights do not verify."""
    experiment, run_id = store.find_run(args.run, args.experiment)
    run = store.get_run(experiment, run_id)
    problem = None
    if run.weights_path:
        try:
            store.load_weights(experiment, run_id)
        except WeightsError as exc:
            problem = exc
    print(format_run(run, verified=problem is None))
    if problem is not None:
        raise problem
    return 0


def _compare(store: ArtifactStore, args: argparse.Namespace) -> int:
    tables = [store.runs(e) for e in dict.fromkeys(args.experiments)]
    reference = cmp.load_reference(cmp.resolve_reference(args.reference)) if args.reference else None
    result = cmp.compare(cmp.combined_runs(tables), reference, pool=args.pool, any_epochs=args.any_epochs)
    sys.stdout.write(cmp.render(result, args.format))
    if result.failed:
        print(f"note: {result.failed} failed run(s) left out (see: runs EXP --where status=failed)", file=sys.stderr)
    return 0


def _plot(store: ArtifactStore, args: argparse.Namespace) -> int:
    from orchestration.plot import plot_experiment  # lazy: matplotlib takes a second to import

    reference = cmp.load_reference(cmp.resolve_reference(args.reference)) if args.reference else None
    out = plot_experiment(store.runs(args.experiment), store.epochs(args.experiment), args.out,
                          title=args.experiment, reference=reference)
    print(f"wrote {out}")
    return 0


def _export(store: ArtifactStore, args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out {args.out}: expected a file name ending in .csv or .parquet")
    table = store.epochs(args.experiment) if args.epochs else store.runs(args.experiment)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix == ".csv":
            pacsv.write_csv(table, out)
        else:
            pq.write_table(table, out)
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot write it ({exc})") from None
    print(f"wrote {table.num_rows} rows to {out}")
    return 0


# ---- formatting --------------------------------------------------------------------

def format_run(run: StoredRun, verified: bool = False) -> str:
    """The ``show`` text: config, final metrics, a curve summary, timings, versions, weights."""
    spec = run.spec.to_dict()
    lines = [
        ("run", run.run_id), ("experiment", run.experiment),
        ("status", run.status + (f": {run.error}" if run.error else "")), ("finished", _when(run.finished_at)),
        ("config", " ".join(f"{k}={_plain(v)}" for k, v in spec.items())),
        ("final", "  ".join(f"{m} {_fmt(v)}" for m, v in run.final.items())),
        ("timing", f"{run.wall_seconds:.1f} s wall, {run.train_images_per_s:,.0f} train images/s"),
        ("hardware", f"{run.device}, {run.num_workers} worker(s)"),
        ("execution", _execution(run.train_options)),
        ("versions", ", ".join(f"{k} {v}" for k, v in run.versions.items())),
        ("weights", run.weights_path or "none (failed runs keep no weights)"),
    ]
    if run.weights_sha256:
        check = " (verified)" if verified else " (NOT verified)"
        lines += [("sha256", run.weights_sha256 + check), ("parameters", f"{run.num_parameters:,}")]
    width = max(len(k) for k, _ in lines)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
    return text + "\n\n" + _curve_summary(run.curve)


def _execution(options: dict[str, object]) -> str:
    """The numerics-relevant execution options; an empty dict means the defaults."""
    return (f"compile={options.get('compile') or 'off'} bf16_autocast={_plain(options.get('bf16_autocast', False))} "
            f"channels_last={_plain(options.get('channels_last', False))}")


def _curve_summary(curve: list[dict[str, float]], max_rows: int = 8) -> str:
    """The first, best and last epochs plus evenly spaced ones in between."""
    if not curve:
        return "curve: no finished epochs"
    best = max(curve, key=lambda r: r["val_acc"])
    step = max(1, len(curve) // (max_rows - 1))
    keep = sorted({0, len(curve) - 1, best["epoch"] - 1, *range(0, len(curve), step)})
    rows = [[r["epoch"], *(_fmt(r[m]) for m in METRICS), f"{r['lr']:.4g}", f"{r['seconds']:.1f}"]
            + (["best val_acc"] if r is best else [""]) for r in (curve[i] for i in keep)]
    head = f"curve: {len(curve)} epochs, best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}"
    return head + "\n" + _text_table(["EPOCH", *(m.upper() for m in METRICS), "LR", "SECONDS", ""], rows)


def _text_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _parse_where(items: list[str]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column or not value:
            raise ConfigError(f"--where {item!r}: expected COLUMN=VALUE, e.g. dataset=cifar10 bn=true")
        where.setdefault(column, []).extend(value.split(","))
    return where


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _plain(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, type(None))) else str(value)


def _when(stamp: str | None) -> str:
    return "—" if not stamp else stamp.replace("T", " ")[:16]


def script() -> NoReturn:
    """Entry point of ``python orchestration/artifacts.py`` and the ``toynet-artifacts``
    script: exits."""
    exit_process(main)


if __name__ == "__main__":
    script()
