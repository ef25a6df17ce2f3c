"""GPU throughput, trial packing, and the seed grid's projected time on one GPU.

Meant for a CUDA machine (the target is one H200); ``--device cpu --quick`` runs the
same code on a CPU with tiny sizes, which the tests use (its numbers mean nothing).

1. One trial: images/s of ``toynet.train._Run.train_epoch`` (the real loop: uint8
   images resident on the device, batched transforms, SGD step) for CIFAR-10 shape,
   transforms ``normal``, batch 128, BN, in float32, with ``channels_last``, and with
   ``channels_last`` + bf16 autocast, and with ``channels_last`` + ``torch.compile``
   (mode ``default``, and ``reduce-overhead``, which replays the step as CUDA graphs).
   The first (warm-up) epoch's seconds are printed too: that is where compiling goes.
   Target: 100,000 images/s.
2. Packing: N = 1, 2, 4, 8 processes, one trial each (what Ray's fractional GPUs
   place on one GPU), train at once; aggregate images/s = Σ images / wall time. Packing
   and the projection use the faster of fp32 and channels_last: eager, seed numerics,
   no compile time per trial.
3. Projection: every run of ``configs/seed.yaml`` costs epochs × (its measured seconds
   per epoch, training + validation, for its dataset, batch size, transforms and BN);
   the sum, divided by the best packing speed-up, is the grid's time on one GPU
   (per-trial start-up excluded). Target: under 15 minutes.

Images are synthetic uint8 of the real shapes and split sizes: speed does not depend
on pixel values. Run: ``python benchmarks/gpu.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._util import REPO_ROOT, RESULTS_DIR, format_header, log, machine_info, markdown_table, write_json  # noqa: E402
from orchestration.config import load_config  # noqa: E402
from toynet.data import DataArrays  # noqa: E402
from toynet.spec import INPUT_SHAPES, RunSpec  # noqa: E402
from toynet.train import Hooks, TrainOptions, _Run  # noqa: E402

SPLITS = {"cifar10": (50_000, 10_000), "mnist": (60_000, 10_000)}
OPTIONS = {"fp32": {}, "channels_last": {"channels_last": True},
           "channels_last + bf16": {"channels_last": True, "bf16_autocast": True},
           "channels_last + compile": {"channels_last": True, "compile": "default"},
           "channels_last + compile (CUDA graphs)": {"channels_last": True, "compile": "reduce-overhead"}}
TARGET_IMAGES_PER_S = 100_000
TARGET_GRID_MINUTES = 15.0


def synthetic(dataset: str, train: int, val: int) -> DataArrays:
    channels, size, _ = INPUT_SHAPES[dataset]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (train + val, channels, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (train + val,), generator=gen)
    return DataArrays(dataset, x[:train], y[:train], x[train:], y[train:], tuple(map(str, range(10))))


def epoch_seconds(spec: RunSpec, data: DataArrays, opts: TrainOptions, epochs: int) -> tuple[float, float, float]:
    """(train seconds, validation seconds) per epoch after one warm-up epoch, and the
    warm-up's seconds (CUDA context, kernel selection, compiling)."""
    sync = torch.cuda.synchronize if torch.device(opts.device).type == "cuda" else (lambda: None)
    t_start = time.perf_counter()
    run = _Run(spec, data, opts, Hooks())
    run.train_epoch(1)
    run.validate()
    sync()
    t0 = time.perf_counter()
    warm_up = t0 - t_start
    for epoch in range(2, epochs + 2):
        run.train_epoch(epoch)
    sync()
    t1 = time.perf_counter()
    run.validate()
    sync()
    return (t1 - t0) / epochs, time.perf_counter() - t1, warm_up


def _packed_worker(spec: RunSpec, sizes: tuple[int, int], opts: TrainOptions, epochs: int, barrier, out) -> None:
    data = synthetic(spec.dataset, *sizes)
    run = _Run(spec, data, opts, Hooks())
    run.train_epoch(1)  # warm-up (CUDA context, kernels)
    barrier.wait()
    start = time.time()
    for epoch in range(2, epochs + 2):
        run.train_epoch(epoch)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    out.put((start, time.time(), sizes[0] * epochs))


def packed_images_per_s(n: int, spec: RunSpec, sizes: tuple[int, int], opts: TrainOptions, epochs: int) -> float:
    """Aggregate training images/s of ``n`` trials on one device at once."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(spec, sizes, opts, epochs, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[2] for r in results) / (max(r[1] for r in results) - min(r[0] for r in results))


def project_seed_grid(opts: TrainOptions, scale: float, epochs: int) -> tuple[float, list[list[Any]]]:
    """Serial seconds of the seed grid's epochs on ``opts.device``, and a row per distinct cell."""
    cfg = load_config(REPO_ROOT / "configs" / "seed.yaml")
    cells: dict[tuple, list[RunSpec]] = {}
    for spec in cfg.runs:
        cells.setdefault((spec.dataset, spec.batch_size, spec.transforms, spec.bn), []).append(spec)
    total, rows = 0.0, []
    for (dataset, batch, transforms, bn), specs in cells.items():
        full_train, full_val = SPLITS[dataset]
        train, val = (max(int(n * scale), 2 * batch) for n in (full_train, full_val))
        train_s, val_s, _ = epoch_seconds(specs[0], synthetic(dataset, train, val), opts, epochs)
        per_epoch = train_s * full_train / train + val_s * full_val / val  # back to the full splits
        n_epochs = sum(s.epochs for s in specs)
        total += per_epoch * n_epochs
        rows.append([dataset, batch, transforms, "√" if bn else "", f"{per_epoch:.2f}", n_epochs,
                     f"{per_epoch * n_epochs / 60:.1f}"])
        log(f"{dataset} b{batch} {transforms} bn={bn}: {per_epoch:.2f} s/epoch × {n_epochs}")
    return total, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes, packing 1 and 2 (a CPU check of the code)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = p.parse_args()
    quick = args.quick
    scale, epochs, packs = (0.005, 1, (1, 2)) if quick else (1.0, 3, (1, 2, 4, 8))
    info = machine_info({"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda")
                         else None, "scale": scale, "timed_epochs": epochs})
    print(format_header("GPU throughput, trial packing and the seed grid's projected time", info))
    base = replace(load_config(REPO_ROOT / "configs" / "seed.yaml").runs[-1], batch_size=128)  # cifar10 normal BN
    sizes = tuple(max(int(s * scale), 256) for s in SPLITS["cifar10"])
    single, warm_up = {}, {}
    for name, extra in OPTIONS.items():
        log(f"one trial: {name}")
        opts = TrainOptions(device=args.device, **extra)
        train_s, _, warm_up[name] = epoch_seconds(base, synthetic("cifar10", *sizes), opts, epochs)
        single[name] = sizes[0] / train_s
    print(markdown_table(
        ["options", "images/s (one trial)", f"≥ {TARGET_IMAGES_PER_S:,}", "× fp32", "warm-up epoch s"],
        [[k, f"{v:,.0f}", "yes" if v >= TARGET_IMAGES_PER_S else "no", f"{v / single['fp32']:.2f}",
          f"{warm_up[k]:.1f}"] for k, v in single.items()]))
    # Packing and the projection use the options that keep the seed's numerics (no bf16).
    best = max(("fp32", "channels_last"), key=single.get)
    opts = TrainOptions(device=args.device, **OPTIONS[best])
    packed = {n: packed_images_per_s(n, base, sizes, opts, epochs) for n in packs}
    print(markdown_table(["trials on the device", "aggregate images/s", "× one trial"],
                         [[n, f"{v:,.0f}", f"{v / packed[1]:.2f}"] for n, v in packed.items()]))
    serial_s, rows = project_seed_grid(opts, scale, epochs)
    speedup = max(packed.values()) / packed[1]
    print(markdown_table(["dataset", "batch", "transforms", "BN", "s/epoch", "epochs", "minutes"], rows))
    minutes = serial_s / speedup / 60
    print(f"seed grid ({best}): {serial_s / 60:.1f} min one trial at a time; "
          f"{minutes:.1f} min packed (× {speedup:.2f}); target < {TARGET_GRID_MINUTES:.0f} min")
    result = {"info": info, "single_images_per_s": single, "warm_up_s": warm_up, "packing_options": best,
              "packed_images_per_s": packed, "seed_grid_serial_s": serial_s, "packing_speedup": speedup,
              "seed_grid_projected_min": minutes}
    print(f"wrote {write_json('gpu-quick' if quick else 'gpu', result, args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
