"""Shared helpers for the benchmarks: machine header, interleaved timing, tables, JSON.

Every benchmark measures its variants side by side in one process and one run,
interleaved (A B C, B C A, C A B, ...) over several repeats, and reports the median
with the min-max spread. On a shared machine absolute numbers drift with other
people's load; ratios of samples taken seconds apart drift much less.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
# The clone sits beside shared/ (as tests/conftest.py assumes).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Summary:
    """Median and min-max spread of one quantity over repeats."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarise")
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def fmt(self, digits: int = 0) -> str:
        """``median [low-high]``, e.g. ``1234 [1180-1301]``; the range only when n > 1."""
        med = f"{self.median:.{digits}f}"
        if self.n == 1:
            return med
        return f"{med} [{self.low:.{digits}f}–{self.high:.{digits}f}]"


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages, to show how busy the shared machine was."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Machine, versions, date and thread count: the header of every result."""
    import torch
    import torchvision

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_gib": round(_mem_total_gib(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": load_average(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    info.update(extra or {})
    return info


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return 0.0


def format_header(title: str, info: Mapping[str, Any]) -> str:
    """The header block printed above a benchmark's tables."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    return "\n".join(lines)


def interleave(
    groups: Sequence[Mapping[K, Callable[[], float]]],
    repeats: int,
    progress: Callable[[str], None] | None = None,
) -> dict[K, list[float]]:
    """Call every variant once per repeat, interleaved; return each variant's samples.

    Within a group (the variants to compare with each other) the order is rotated
    every repeat -- A B C, then B C A, then C A B -- so no variant always runs first
    or right after the same neighbour. Groups run one after another inside a repeat.
    A variant returns one sample (e.g. images/s or seconds).
    """
    samples: dict[K, list[float]] = {key: [] for group in groups for key in group}
    for r in range(repeats):
        for group in groups:
            keys = list(group)
            shift = r % len(keys) if keys else 0
            for key in keys[shift:] + keys[:shift]:
                value = group[key]()
                samples[key].append(value)
                if progress:
                    progress(f"repeat {r + 1}/{repeats} {key}: {value:.4g}")
    return samples


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-repeat ratios num[i] / den[i] of samples taken side by side in the same repeat."""
    if len(num) != len(den):
        raise ValueError(f"paired samples differ in length: {len(num)} vs {len(den)}")
    return [n / d for n, d in zip(num, den)]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are str()-ed."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def write_json(name: str, payload: Mapping[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``payload`` to ``<results_dir>/<name>.json`` (default benchmarks/results); return the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Summary):
        return asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the header and the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
