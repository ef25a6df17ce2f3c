"""One PNG of an experiment's validation curves: a row per (dataset, batch, transforms).

Each row holds validation accuracy (left) and loss (right, log scale: early losses
can be 100x the final ones) against epochs. A line is one (epochs, BN) grid point:
blue and solid with BN, orange and dashed without, darker for longer epoch budgets
(a line also ends at its budget). Several seeds of a point draw their mean with a
±1 std band. With a reference, a star marks the seed's published final value at the
last epoch. Uses matplotlib's Agg canvas directly: no pyplot state, no display needed.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa

from orchestration.compare import LAYOUT, Key, display_point, seed_order
from orchestration.records import StoreError

log = logging.getLogger(__name__)

_PANELS = (("val_acc", "validation accuracy"), ("val_loss", "validation loss"))


def plot_experiment(runs: pa.Table, epochs: pa.Table, out: str | Path, title: str,
                    reference: dict[Key, dict[str, float]] | None = None) -> Path:
    """Draw the complete runs' curves into ``out`` (PNG); returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    curves = _mean_curves(runs, epochs)
    if not curves:
        raise StoreError(f"{title}: no complete runs to plot")
    rows = _panel_rows(curves)
    colours = _colours(curves)
    fig = Figure(figsize=(13, 3.3 * len(rows) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (group, points), row_axes in zip(rows, axes):
        for ax, (metric, label) in zip(row_axes, _PANELS):
            for point in points:
                _draw(ax, curves[point], metric, colours[point], point, reference)
            ax.set_title(f"{group} — {label}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            ax.grid(alpha=0.3)
        loss_ax = row_axes[1]
        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        loss_ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label(loss_ax)))
        row_axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           title="epochs · BN", title_fontsize=8, frameon=False)
    notes = "blue solid: BN, orange dashed: no BN; shaded: ±1 std over seeds"
    notes += "; ★ the seed's published final value" if reference else ""
    fig.suptitle(f"{title} — {notes}", fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    log.info("wrote %s", out)
    return out


class _Point(NamedTuple):
    """A grid point in the seed's layout (field order = compare.LAYOUT)."""

    dataset: str
    bn: bool
    epochs: int
    batch_size: int
    transforms: str


def _mean_curves(runs: pa.Table, epochs: pa.Table) -> dict[_Point, dict[str, Any]]:
    """{grid point: {"epoch": [...], metric: (means, stds), "n": seeds}} over complete runs."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in epochs.to_pylist():
        by_run.setdefault(row["run_id"], []).append(row)
    grouped: dict[_Point, list[list[dict[str, Any]]]] = {}
    for run in runs.to_pylist():
        if run["status"] == "complete" and run["run_id"] in by_run:
            point = _Point(*(run[c] for c in LAYOUT))
            grouped.setdefault(point, []).append(sorted(by_run[run["run_id"]], key=lambda r: r["epoch"]))
    curves = {}
    for point, members in grouped.items():
        length = min(len(m) for m in members)
        curve: dict[str, Any] = {"epoch": [r["epoch"] for r in members[0][:length]], "n": len(members)}
        for metric, _ in _PANELS:
            per_epoch = [[m[i][metric] for m in members] for i in range(length)]
            curve[metric] = ([statistics.fmean(v) for v in per_epoch],
                             [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch])
        curves[point] = curve
    return curves


def _panel_rows(curves: dict[_Point, Any]) -> list[tuple[str, list[_Point]]]:
    """Group points into rows by (dataset, batch, transforms), rows and lines in the seed's order."""
    rows: dict[tuple[Any, ...], list[_Point]] = {}
    for p in sorted(curves, key=lambda p: (seed_order(p.dataset, False, 0, p.batch_size, p.transforms),
                                           seed_order(*p))):
        rows.setdefault((p.dataset, p.batch_size, p.transforms), []).append(p)
    out = []
    for points in rows.values():
        dataset, _, _, batch, transforms = display_point(points[0]._asdict()).split(" · ")
        out.append((f"{dataset} · {batch} · {transforms}", points))
    return out


def _minor_label(ax: Any) -> Any:
    """Plain numbers on minor log ticks, but only when the axis spans under a decade."""
    def label(value: float, _pos: int) -> str:
        low, high = ax.get_ylim()
        return f"{value:.2g}" if high / low < 10 else ""
    return label


def _colours(curves: dict[_Point, Any]) -> dict[_Point, Any]:
    """Blue shades with BN, orange without; darker for a longer epoch budget."""
    from matplotlib import colormaps

    budgets = sorted({p.epochs for p in curves})
    shade = {e: 0.85 if len(budgets) == 1 else 0.45 + 0.5 * i / (len(budgets) - 1) for i, e in enumerate(budgets)}
    return {p: colormaps["Blues" if p.bn else "Oranges"](shade[p.epochs]) for p in curves}


def _draw(ax: Any, curve: dict[str, Any], metric: str, colour: Any, point: _Point,
          reference: dict[Key, dict[str, float]] | None) -> None:
    means, stds = curve[metric]
    style = "-" if point.bn else "--"
    label = f"{point.epochs} · {'BN' if point.bn else 'no BN'}" + (f" (n={curve['n']})" if curve["n"] > 1 else "")
    ax.plot(curve["epoch"], means, style, color=colour, linewidth=1.4, label=label)
    if curve["n"] > 1:
        lo = [max(m - s, 1e-6) for m, s in zip(means, stds)]  # the loss axis is logarithmic
        hi = [m + s for m, s in zip(means, stds)]
        ax.fill_between(curve["epoch"], lo, hi, color=colour, alpha=0.15, linewidth=0)
    ref = reference.get(tuple(point)) if reference else None
    if ref is not None:
        ax.plot([point.epochs], [ref[metric]], marker="*", markersize=11, color=colour,
                markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
