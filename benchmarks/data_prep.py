"""Data preparation: decode vs cached load, concurrent preparation, and shared memory.

Measured with ``toynet.data.load_dataset`` on the real datasets in the shared data
directory (read only; every measurement uses a fresh temporary cache directory):

1. first load (fingerprint + decode + write the cache) vs cached load (map the
   cache entry) vs cached load plus paging in every page of the arrays, per dataset;
2. N = 4 processes (multiprocessing spawn) preparing one dataset at once against an
   empty cache: wall time, and how many of them decoded it -- counted from the
   cache's own log records ("decoded ..." is logged inside the one build) and from
   the entries left in the cache directory;
3. memory with 1 and with 4 processes that each load the dataset from a warm cache,
   page all of it in and keep it alive: peak RSS per process (``VmHWM``; a spawned
   child's ``ru_maxrss`` starts at its parent's RSS, see :func:`memory_kib`), and the
   node total as the sum of each process's PSS (``/proc/self/smaps_rollup``, the
   figure psutil's ``memory_full_info().pss`` reports; psutil is not installed here),
   which counts shared page-cache pages fractionally; plus the PSS of the cache
   file mappings alone, from ``/proc/self/smaps``. A contrast row has each process
   hold a private copy (``clone()``) instead, as a loader without the memory-mapped
   cache would.

Usage: ``python benchmarks/data_prep.py [--quick]`` (``--quick``: MNIST only, one
repeat, no private-copy contrast). Prints a header and markdown tables and writes
``benchmarks/results/data_prep.json`` (``data_prep-quick.json``). Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from toynet.data import DataArrays, load_dataset

try:  # imported as benchmarks.data_prep (tests) or run as a script
    from benchmarks import _util
except ModuleNotFoundError:
    import _util

ARRAY_NAMES = ("train_x", "train_y", "val_x", "val_y")
BARRIER_TIMEOUT_S = 900.0
GIB = 2**30
PAGE_BYTES = 4096
MEMORY_GOAL_GIB = 4.0


@dataclass(frozen=True)
class Config:
    """What one invocation measures."""

    datasets: tuple[str, ...]
    repeats: int
    processes: int
    data_dir: Path
    quick: bool


# -- helpers run in every process ------------------------------------------------------


def pre_import() -> None:
    """Import what decoding imports lazily, so timings hold the work, not module loading."""
    import torchvision.datasets.mnist  # noqa: F401 -- MNIST IDX parsers
    import torchvision.io  # noqa: F401 -- JPEG decoder


def touch(data: DataArrays) -> int:
    """Fault in every page of the four arrays (one byte per 4 KiB page), as a first pass over the data would.

    Reading one byte per page makes the whole dataset resident without timing the
    arithmetic of summing 180 MB; returns a checksum so the reads cannot be skipped.
    """
    total = 0
    for name in ARRAY_NAMES:
        flat = getattr(data, name).reshape(-1).view(torch.uint8)  # bytes of the (contiguous) array
        total += int(flat[::PAGE_BYTES].sum()) + int(flat[-1])
    return total


def data_bytes(data: DataArrays) -> int:
    return sum(getattr(data, name).numel() * getattr(data, name).element_size() for name in ARRAY_NAMES)


def memory_kib(mapped_prefix: str | None = None) -> dict[str, int]:
    """This process's memory in kB: peak RSS, Rss and Pss (smaps_rollup).

    ``peak_rss`` is ``VmHWM`` from /proc/self/status: the peak of this process image.
    ``ru_maxrss`` is kept for reference only: Linux carries it across exec, so in a
    spawned child it starts at the parent's RSS at fork time. With ``mapped_prefix``,
    also ``data_rss``/``data_pss``: the Rss/Pss of the mappings of files under that
    directory (the cache entry's .npy files), from /proc/self/smaps.
    """
    out = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}  # kB on Linux
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["peak_rss"] = int(line.split()[1])
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(line.split()[1])
    if mapped_prefix is not None:
        out["data_rss"], out["data_pss"] = _mapped_kib(mapped_prefix)
    return out


def _mapped_kib(prefix: str) -> tuple[int, int]:
    """Summed Rss and Pss kB of this process's mappings of files under ``prefix``."""
    rss = pss = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            inside = len(head) == 6 and head[5].startswith(prefix)
        elif inside and head[0] == "Rss:":
            rss += int(head[1])
        elif inside and head[0] == "Pss:":
            pss += int(head[1])
    return rss, pss


class _Records(logging.Handler):
    """Keeps the messages of the cache's log records (what a process did to the cache)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _capture_data_logs() -> _Records:
    handler = _Records()
    logger = logging.getLogger("toynet.data")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


# -- 1. first vs cached load -----------------------------------------------------------


def first_and_cached(name: str, data_dir: Path) -> dict[str, float]:
    """Seconds of the first load (empty cache), a cached load, and a cached load + paging in every page."""
    cache_dir = Path(tempfile.mkdtemp(prefix="toynet-bench-"))
    try:
        t0 = time.perf_counter()
        data = load_dataset(name, data_dir, cache_dir=cache_dir)
        first = time.perf_counter() - t0
        size = data_bytes(data)
        del data
        t0 = time.perf_counter()
        data = load_dataset(name, data_dir, cache_dir=cache_dir)
        cached = time.perf_counter() - t0
        del data
        t0 = time.perf_counter()
        touch(load_dataset(name, data_dir, cache_dir=cache_dir))
        cached_page_in = time.perf_counter() - t0
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"first": first, "cached": cached, "cached_page_in": cached_page_in, "bytes": size}


def measure_loads(cfg: Config) -> list[dict[str, Any]]:
    """Interleaved repeats of :func:`first_and_cached` over the datasets; summaries per dataset."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cfg.datasets}
    for r in range(cfg.repeats):
        for name in cfg.datasets:
            s = first_and_cached(name, cfg.data_dir)
            samples[name].append(s)
            _util.log(f"repeat {r + 1}/{cfg.repeats} {name}: first {s['first']:.2f}s cached {s['cached']:.4f}s "
                      f"cached+page-in {s['cached_page_in']:.3f}s")
    rows = []
    for name, ss in samples.items():
        col = {k: [s[k] for s in ss] for k in ("first", "cached", "cached_page_in")}
        rows.append({
            "dataset": name,
            "bytes": ss[0]["bytes"],
            "seconds": {k: _util.Summary.of(v) for k, v in col.items()},
            "ratios": {
                "first/cached": _util.Summary.of(_util.paired_ratios(col["first"], col["cached"])),
                "first/cached_page_in": _util.Summary.of(_util.paired_ratios(col["first"], col["cached_page_in"])),
            },
            "samples": col,
        })
    return rows


# -- 2. concurrent preparation ---------------------------------------------------------


def _prepare_child(name: str, data_dir: str, cache_dir: str, barrier: Any, queue: Any) -> None:
    """One of N processes: wait for all, load ``name`` into the shared cache, report."""
    try:
        pre_import()
        records = _capture_data_logs()
        barrier.wait(BARRIER_TIMEOUT_S)
        start = time.monotonic()
        load_dataset(name, data_dir, cache_dir=cache_dir)
        end = time.monotonic()
        queue.put({"pid": os.getpid(), "start": start, "end": end, "log": records.messages})
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which prints it
        barrier.abort()
        queue.put({"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"})


def concurrent_prepare(name: str, data_dir: Path, n: int) -> dict[str, Any]:
    """Wall time of ``n`` spawned processes loading ``name`` at once into an empty cache.

    Returns the wall time (first start to last finish, on the shared monotonic clock),
    each process's seconds, how many logged a decode, and the entries in the cache.
    """
    cache_dir = Path(tempfile.mkdtemp(prefix="toynet-bench-"))
    try:
        results = _run_children(_prepare_child, n, (name, str(data_dir), str(cache_dir)))
        entries = sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and p.name != "fingerprints")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    start, end = min(r["start"] for r in results), max(r["end"] for r in results)
    return {
        "dataset": name,
        "processes": n,
        "wall_s": end - start,
        "per_process_s": sorted(r["end"] - r["start"] for r in results),
        "decodes_logged": sum(any(m.startswith(f"decoded {name}") for m in r["log"]) for r in results),
        "waited_logged": sum(any(m.startswith("waiting for") for m in r["log"]) for r in results),
        "cache_entries": entries,
        "logs": {r["pid"]: r["log"] for r in results},
    }


def _run_children(target: Any, n: int, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Start ``n`` spawned processes of ``target(*args, barrier, queue)``; collect one result each."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=BARRIER_TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"a benchmark process failed: {errors[0]}")
    return results


# -- 3. memory -------------------------------------------------------------------------


def _memory_child(name: str, data_dir: str, cache_dir: str, private: bool, barrier: Any, queue: Any) -> None:
    """One trial: load from the warm cache, read it all, keep it; measure while all hold theirs."""
    try:
        pre_import()
        before = memory_kib(cache_dir)
        barrier.wait(BARRIER_TIMEOUT_S)
        data = load_dataset(name, data_dir, cache_dir=cache_dir)
        if private:
            data = DataArrays(data.name, *(getattr(data, k).clone() for k in ARRAY_NAMES), classes=data.classes)
        touch(data)
        barrier.wait(BARRIER_TIMEOUT_S)  # every process now holds its arrays
        held = memory_kib(cache_dir)
        barrier.wait(BARRIER_TIMEOUT_S)  # nobody exits before all have measured
        queue.put({"pid": os.getpid(), "before": before, "held": held, "bytes": data_bytes(data)})
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which prints it
        barrier.abort()
        queue.put({"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"})


def memory_trials(name: str, data_dir: Path, n: int, private: bool) -> dict[str, Any]:
    """Per-process peak RSS and PSS, and their node totals, for ``n`` concurrent holders."""
    cache_dir = Path(tempfile.mkdtemp(prefix="toynet-bench-"))
    try:
        load_dataset(name, data_dir, cache_dir=cache_dir)  # warm cache: the trials only map it
        results = _run_children(_memory_child, n, (name, str(data_dir), str(cache_dir), private))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    def each(when: str, key: str) -> list[int]:
        return [r[when][key] * 1024 for r in results]

    return {
        "dataset": name,
        "processes": n,
        "arrays": "private copy" if private else "mapped from cache",
        "data_bytes": results[0]["bytes"],
        "peak_rss_before_load_bytes": each("before", "peak_rss"),
        "peak_rss_bytes": each("held", "peak_rss"),
        "rss_bytes": each("held", "rss"),
        "pss_before_load_bytes": each("before", "pss"),
        "pss_bytes": each("held", "pss"),
        "data_map_pss_bytes": each("held", "data_pss"),
        "pss_total_bytes": sum(each("held", "pss")),
        "pss_growth_total_bytes": sum(each("held", "pss")) - sum(each("before", "pss")),
        "per_process": [{"pid": r["pid"], "before_kib": r["before"], "held_kib": r["held"]} for r in results],
    }


# -- reporting ---------------------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def loads_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["dataset", "arrays MiB", "first load s", "cached load s", "cached load + page in all s",
               "first/cached", "first/(cached + page in)"]
    body = [[r["dataset"], _mib(r["bytes"]), r["seconds"]["first"].fmt(2), r["seconds"]["cached"].fmt(4),
             r["seconds"]["cached_page_in"].fmt(3), r["ratios"]["first/cached"].fmt(0),
             r["ratios"]["first/cached_page_in"].fmt(1)] for r in rows]
    return _util.markdown_table(headers, body)


def concurrency_table(rows: Sequence[dict[str, Any]], first_load: dict[str, float]) -> str:
    headers = ["dataset", "processes", "wall s", "per-process s", "single first load s (median, part 1)",
               "wall / single", "decodes logged", "processes that waited", "cache entries"]
    body = []
    for r in rows:
        single = first_load.get(r["dataset"], float("nan"))
        body.append([r["dataset"], r["processes"], f"{r['wall_s']:.2f}",
                     " / ".join(f"{s:.2f}" for s in r["per_process_s"]), f"{single:.2f}",
                     f"{r['wall_s'] / single:.2f}", r["decodes_logged"], r["waited_logged"],
                     len(r["cache_entries"])])
    return _util.markdown_table(headers, body)


def memory_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per process: median [min–max] over the processes; node: sums over them."""
    headers = ["dataset", "processes", "arrays", "data MiB", "peak RSS before load", "peak RSS holding",
               "RSS holding", "PSS before load", "PSS holding", "PSS of the cache mapping",
               "node PSS total", "node PSS added by the data", f"total under {MEMORY_GOAL_GIB:.0f} GiB"]
    body = []
    for r in rows:
        per = [_mib_summary(r[k]) for k in ("peak_rss_before_load_bytes", "peak_rss_bytes", "rss_bytes",
                                            "pss_before_load_bytes", "pss_bytes", "data_map_pss_bytes")]
        total = r["pss_total_bytes"]
        body.append([r["dataset"], r["processes"], r["arrays"], _mib(r["data_bytes"]), *per, _mib(total),
                     _mib(r["pss_growth_total_bytes"]), "yes" if total < MEMORY_GOAL_GIB * GIB else "NO"])
    return _util.markdown_table(headers, body)


def _mib_summary(values: Sequence[int]) -> str:
    return _util.Summary.of([v / 2**20 for v in values]).fmt(0)


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python benchmarks/data_prep.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MNIST only, one repeat, no private-copy contrast")
    p.add_argument("--repeats", type=int, help="repeats of part 1 (default 3; quick 1)")
    p.add_argument("--processes", type=int, default=4, help="concurrent processes in parts 2 and 3")
    p.add_argument("--data-dir", type=Path, default=_default_data_dir(), help="read-only real datasets")
    a = p.parse_args(argv)
    datasets = ("mnist",) if a.quick else ("mnist", "cifar10")
    repeats = a.repeats or (1 if a.quick else 3)
    return Config(datasets=datasets, repeats=repeats, processes=a.processes, data_dir=a.data_dir, quick=a.quick)


def memory_cases(cfg: Config) -> list[tuple[int, bool]]:
    """(processes, private copy) of part 3; --quick skips the private-copy contrast."""
    cases = [(1, False), (cfg.processes, False)]
    return cases if cfg.quick else [*cases, (cfg.processes, True)]


def _default_data_dir() -> Path:
    env = os.environ.get("TOYNET_DATA")
    return Path(env) if env else _util.SHARED_DATA


def main(argv: Sequence[str] | None = None) -> int:
    """Run parts 1-3, print the header and tables, write the JSON; 2 when the data dir is missing."""
    cfg = parse_args(argv)
    if not cfg.data_dir.is_dir():
        print(f"data dir {cfg.data_dir} not found; expected the shared real datasets (--data-dir or TOYNET_DATA)",
              file=sys.stderr)
        return 2
    pre_import()
    info = _util.machine_info({"data_dir": str(cfg.data_dir), "datasets": ", ".join(cfg.datasets),
                               "repeats": cfg.repeats, "processes": cfg.processes,
                               "temp_dir": tempfile.gettempdir()})
    loads = measure_loads(cfg)
    first_load = {r["dataset"]: r["seconds"]["first"].median for r in loads}
    concurrent = []
    for name in cfg.datasets:
        _util.log(f"{cfg.processes} concurrent processes preparing {name}")
        concurrent.append(concurrent_prepare(name, cfg.data_dir, cfg.processes))
    memory = []
    for name in cfg.datasets:
        for n, private in memory_cases(cfg):
            _util.log(f"memory: {n} process(es) holding {name}, private={private}")
            memory.append(memory_trials(name, cfg.data_dir, n, private))
    info["load_average_at_end"] = _util.load_average()
    print("\n\n".join([
        _util.format_header("Data preparation (median [min–max] over repeats)", info),
        "## 1. First load (decode) vs cached load\n\n" + loads_table(loads),
        f"## 2. {cfg.processes} processes preparing one dataset at once, empty cache\n\n"
        + concurrency_table(concurrent, first_load),
        "## 3. Memory of processes holding the whole dataset, MiB (per process: median [min–max] "
        "over the processes, measured while all of them hold it)\n\n"
        + memory_table(memory),
    ]))
    path = _util.write_json("data_prep-quick" if cfg.quick else "data_prep", {
        "benchmark": "data_prep", "machine": info,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "loads": loads, "concurrent": concurrent, "memory": memory,
    })
    print(f"\nwrote {path.relative_to(_util.REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
