"""Compare stored runs in the seed's layout, optionally against its published results.

Rows follow the seed's tables (``shared/docs/seed.md``, ``configs/reference/seed_results.csv``):
MNIST before CIFAR-10 (other datasets after), then epochs, batch size, transforms
None/Basic/Normal, BN off before on. Several runs of one grid point (seeds) become
one row with mean ± sample std and n.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa

from orchestration.records import METRICS, SPEC_COLUMNS, StoreError
from toynet.spec import RunSpec

LAYOUT = ("dataset", "bn", "epochs", "batch_size", "transforms")
HEADERS = {"dataset": "Dataset", "bn": "BN", "epochs": "Epoch", "batch_size": "Batch Size", "transforms": "Transforms"}
# Spec fields beyond the seed's layout. The comparison shows a column for each one
# that varies (so rows never silently merge) or departs from the seed's setting (so
# a subset run is never mistaken for a full one).
_EXTRA = tuple(c for c in SPEC_COLUMNS if c not in LAYOUT and c != "seed")
_SEED_SETTINGS = {f.name: f.default for f in dataclasses.fields(RunSpec) if f.name in _EXTRA}
_DATASET_ORDER = {"mnist": 0, "cifar10": 1}
_DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR10"}
_TRANSFORM_ORDER = {"none": 0, "basic": 1, "normal": 2}
REFERENCE_SEED = Path(__file__).resolve().parents[1] / "configs" / "reference" / "seed_results.csv"

Key = tuple[Any, ...]


def seed_order(dataset: str, bn: bool, epochs: int, batch_size: int, transforms: str) -> tuple[Any, ...]:
    """Sort key reproducing the seed's row order (checked against seed_results.csv in tests)."""
    return (_DATASET_ORDER.get(dataset, len(_DATASET_ORDER)), dataset, epochs, batch_size,
            _TRANSFORM_ORDER.get(transforms, 9), transforms, bn)


@dataclass
class CompareRow:
    """One grid point: its layout values, the runs' metric statistics, the reference values."""

    point: dict[str, Any]
    n: int
    mean: dict[str, float]
    std: dict[str, float | None]
    reference: dict[str, float] | None = None
    run_ids: list[str] = field(default_factory=list)
    reference_epochs: int | None = None  # the reference row's epochs, when matched by --any-epochs

    def delta(self, metric: str) -> float | None:
        return self.mean[metric] - self.reference[metric] if self.reference else None


@dataclass
class Comparison:
    """The rows plus which optional columns they need; ``failed`` counts runs left out."""

    rows: list[CompareRow]
    extra_columns: list[str]
    with_reference: bool
    failed: int = 0

    @property
    def shows_reference_epochs(self) -> bool:
        return any(r.reference_epochs not in (None, r.point["epochs"]) for r in self.rows)


def load_reference(path: str | Path) -> dict[Key, dict[str, float]]:
    """Published results by (dataset, bn, epochs, batch_size, transforms); one-line errors for bad files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"reference file {path}: cannot read it ({exc.strerror or exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    wanted = (*LAYOUT, *METRICS)
    missing = [c for c in wanted if c not in (reader.fieldnames or [])]
    if missing:
        raise StoreError(f"reference file {path}: missing column {missing[0]!r}; expected columns {list(wanted)}")
    table = {}
    for line, row in enumerate(reader, start=2):
        try:
            key = (row["dataset"], {"true": True, "false": False}[row["bn"].strip().lower()],
                   int(row["epochs"]), int(row["batch_size"]), row["transforms"].strip().lower())
            table[key] = {m: float(row[m]) for m in METRICS}
        except (KeyError, ValueError, AttributeError):
            raise StoreError(
                f"reference file {path}, line {line}: expected bn true/false, integer epochs and batch_size, "
                f"numeric {', '.join(METRICS)}"
            ) from None
    return table


def resolve_reference(name: str) -> Path:
    """``seed`` → the repository's seed_results.csv; anything else is a CSV path."""
    if name == "seed":
        for candidate in (REFERENCE_SEED, Path.cwd() / "configs" / "reference" / "seed_results.csv"):
            if candidate.is_file():
                return candidate
        raise StoreError(f"reference 'seed' not found: expected {REFERENCE_SEED}")
    return Path(name)


def compare(runs: pa.Table, reference: dict[Key, dict[str, float]] | None = None,
            pool: bool = False, any_epochs: bool = False) -> Comparison:
    """Group complete runs by grid point; failed runs are only counted.

    Runs of different experiments stay in separate rows (an Experiment column appears)
    unless ``pool`` merges them, e.g. seeds spread over several experiments. With
    ``any_epochs``, a point the reference lacks is compared with the reference row
    that differs only in epochs, the shortest such run (a "seed Epoch" column shows it).
    """
    rows = runs.to_pylist()
    complete = [r for r in rows if r["status"] == "complete"]
    extras = [c for c in _EXTRA if {r[c] for r in complete} - {_SEED_SETTINGS[c]}]
    if not pool and len({r["experiment"] for r in complete}) > 1:
        extras.append("experiment")
    groups: dict[Key, list[dict[str, Any]]] = {}
    for r in complete:
        groups.setdefault(tuple(r[c] for c in (*LAYOUT, *extras)), []).append(r)
    out = [_row(members, extras, reference, any_epochs) for members in groups.values()]
    out.sort(key=lambda row: (seed_order(*(row.point[c] for c in LAYOUT)),
                              tuple(_sortable(row.point[c]) for c in extras)))
    return Comparison(out, extras, reference is not None, failed=len(rows) - len(complete))


def _row(members: list[dict[str, Any]], extras: list[str], reference: dict[Key, dict[str, float]] | None,
         any_epochs: bool = False) -> CompareRow:
    first = members[0]
    point = {c: first[c] for c in (*LAYOUT, *extras)}
    mean, std = {}, {}
    for m in METRICS:
        values = [float(r[m]) for r in members]
        mean[m] = statistics.fmean(values)
        std[m] = statistics.stdev(values) if len(values) > 1 else None
    ref_epochs, ref = _reference_for(first, reference, any_epochs)
    return CompareRow(point, len(members), mean, std, ref, sorted(r["run_id"] for r in members), ref_epochs)


def _reference_for(run: dict[str, Any], reference: dict[Key, dict[str, float]] | None,
                   any_epochs: bool) -> tuple[int | None, dict[str, float] | None]:
    """(epochs, values) of the matching reference row; exact match first."""
    if reference is None:
        return None, None
    key = tuple(run[c] for c in LAYOUT)
    if key in reference or not any_epochs:
        return (run["epochs"], reference[key]) if key in reference else (None, None)
    # Same dataset, bn, batch size and transforms; the shortest published schedule.
    same = sorted((k[2], k) for k in reference if (k[0], k[1], k[3], k[4]) == (key[0], key[1], key[3], key[4]))
    return (same[0][0], reference[same[0][1]]) if same else (None, None)


def _sortable(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


# ---- rendering ---------------------------------------------------------------------

def to_markdown(cmp: Comparison) -> str:
    """A Markdown table in the seed's layout; with a reference, seed value and Δ beside each metric."""
    headers = [HEADERS[c] for c in LAYOUT] + [_extra_header(c) for c in cmp.extra_columns]
    headers += ["seed Epoch"] if cmp.shows_reference_epochs else []
    for m in METRICS:
        headers += [m, f"seed {m}", f"Δ {m}"] if cmp.with_reference else [m]
    headers.append("n")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" -- " for _ in headers) + "|"]
    for row in cmp.rows:
        cells = [_show_layout(c, row.point[c]) for c in LAYOUT]
        cells += [_show_value(row.point[c]) for c in cmp.extra_columns]
        if cmp.shows_reference_epochs:
            cells.append(str(row.reference_epochs) if row.reference_epochs else "—")
        for m in METRICS:
            cells.append(_pm(row.mean[m], row.std[m]))
            if cmp.with_reference:
                cells += [_num(row.reference[m]) if row.reference else "—", _signed(row.delta(m))]
        cells.append(str(row.n))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(cmp: Comparison) -> str:
    """Machine-readable: raw values, ``<metric>_std`` columns, ``seed_<metric>`` and ``delta_<metric>``."""
    headers = [*LAYOUT, *cmp.extra_columns, *(["seed_epochs"] if cmp.shows_reference_epochs else []), "n"]
    for m in METRICS:
        headers += [m, f"{m}_std"] + ([f"seed_{m}", f"delta_{m}"] if cmp.with_reference else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    for row in cmp.rows:
        cells: list[Any] = [_csv_value(row.point[c]) for c in (*LAYOUT, *cmp.extra_columns)]
        cells += [row.reference_epochs or ""] if cmp.shows_reference_epochs else []
        cells.append(row.n)
        for m in METRICS:
            cells += [_round(row.mean[m]), _round(row.std[m])]
            if cmp.with_reference:
                cells += [_round(row.reference[m]) if row.reference else "", _round(row.delta(m))]
        writer.writerow(cells)
    return buf.getvalue()


def display_point(point: dict[str, Any]) -> str:
    """'CIFAR10 · BN · 60 ep · batch 64 · Basic' for legends and titles."""
    return " · ".join([_show_layout("dataset", point["dataset"]), "BN" if point["bn"] else "no BN",
                       f"{point['epochs']} ep", f"batch {point['batch_size']}",
                       _show_layout("transforms", point["transforms"])])


def _show_layout(column: str, value: Any) -> str:
    if column == "dataset":
        return _DATASET_NAMES.get(value, value)
    if column == "bn":
        return "√" if value else ""  # the seed's own marks
    if column == "transforms":
        return str(value).capitalize()
    return str(value)


def _extra_header(column: str) -> str:
    return column.replace("_", " ").capitalize() if column != "lr" else "LR"


def _show_value(value: Any) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _num(value: float) -> str:
    return f"{value:.4f}"


def _pm(mean: float, std: float | None) -> str:
    return _num(mean) if std is None else f"{mean:.4f} ± {std:.4f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _round(value: float | None) -> float | str:
    return "" if value is None or not math.isfinite(value) else round(value, 6)


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def render(cmp: Comparison, fmt: str) -> str:
    """``markdown`` or ``csv``."""
    if fmt == "markdown":
        return to_markdown(cmp)
    if fmt == "csv":
        return to_csv(cmp)
    raise StoreError(f"unknown format {fmt!r}; expected markdown or csv")


def combined_runs(tables: Sequence[pa.Table]) -> pa.Table:
    """Runs of several experiments as one table (same declared schema)."""
    return pa.concat_tables(list(tables))


def order_runs(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run rows in the seed's order, then by seed and run id."""
    return sorted(rows, key=lambda r: (seed_order(*(r[c] for c in LAYOUT)), r["seed"], r["run_id"]))
