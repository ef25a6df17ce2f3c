"""Training-pass throughput (images/s) on CIFAR-10-shaped data, ToyNet with BN.

For each transform (none, basic, normal) and batch size (64, 128) it times one
epoch's training batches -- no validation -- over a fixed subset, for:

- (a) ``project``: the real loop, ``toynet.train._Run.train_epoch`` -- uint8 tensors
  resident, batched transforms, SGD step, metrics summed on the device;
- (b) ``seed``: the seed's pipeline -- a Dataset serving PIL images exactly as
  ``torchvision.datasets.CIFAR10`` does, the seed's per-image torchvision
  transforms, ``DataLoader(shuffle=True)`` with 0 and with 2 workers -- feeding the
  same model, optimizer and step (metrics included);
- (c) ``compute``: forward + backward + SGD step on pre-made float batches, nothing else.

Usage: ``python benchmarks/throughput.py [--quick]``; prints a header and markdown
tables and writes ``benchmarks/results/throughput.json`` (``--quick`` writes
``throughput-quick.json``). Timings only print; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from toynet.data import DataArrays, load_dataset
from toynet.errors import DataError
from toynet.model import ToyNet
from toynet.spec import RunSpec
from toynet.train import Hooks, TrainOptions, _Run
from toynet.transforms import build_transforms

try:  # imported as benchmarks.throughput (tests) or run as a script
    from benchmarks import _util
except ModuleNotFoundError:
    import _util

TRANSFORMS: tuple[str, ...] = ("none", "basic", "normal")
BATCH_SIZES: tuple[int, ...] = (64, 128)
VARIANTS: dict[str, str] = {
    "a": "(a) project",
    "b0": "(b) seed, 0 workers",
    "b2": "(b) seed, 2 workers",
    "c": "(c) compute",
    "ac": "(a) + torch.compile",
}
SEED_WORKERS: dict[str, int] = {"b0": 0, "b2": 2}
# name -> (numerator, denominator) variants
RATIOS: dict[str, tuple[str, str]] = {
    "a/b0": ("a", "b0"), "a/b2": ("a", "b2"), "c/a": ("c", "a"), "ac/a": ("ac", "a"),
}
Cell = tuple[str, int, str]  # (transform, batch size, variant)
# The seed's Normalize statistics (ImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Targets from the issue; printed against the measurements, never asserted.
TARGET_COMPUTE_OVER_PROJECT = 1.15
TARGET_PROJECT_OVER_SEED_NORMAL = 1.5
DEFAULT_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class Config:
    """What one invocation measures."""

    images: int  # training images per timed epoch (a fixed class-balanced subset)
    repeats: int
    warmup_images: int
    threads: int
    data_dir: Path
    cache_dir: Path | None
    synthetic: bool
    quick: bool


# -- data ------------------------------------------------------------------------------


def load_subset(cfg: Config) -> tuple[DataArrays, str]:
    """``cfg.images`` CIFAR-10 training images as uint8 (N, 3, 32, 32), and where they came from.

    Real CIFAR-10 through ``toynet.data`` when it loads; otherwise (or with
    ``--synthetic``) uniform random uint8 images of the same shape.
    """
    if not cfg.synthetic:
        try:
            data = load_dataset("cifar10", cfg.data_dir, train_limit=cfg.images, val_limit=100,
                                cache_dir=cfg.cache_dir)
            return data, f"real CIFAR-10 from {cfg.data_dir} (class-balanced subset of {cfg.images})"
        except DataError as exc:
            reason = f"real data unavailable: {exc}"
    else:
        reason = "--synthetic"
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (cfg.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (cfg.images,), generator=gen)
    classes = tuple(str(k) for k in range(10))
    return DataArrays("cifar10", x, y, x[:100], y[:100], classes), f"synthetic uint8 ({reason})"


def head(data: DataArrays, n: int) -> DataArrays:
    """The first ``n`` training images (warm-up runs use these)."""
    return replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])


class SeedStyleCIFAR(Dataset):
    """Serves items as ``torchvision.datasets.CIFAR10`` does: HWC uint8 -> PIL -> transform."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Image.Image], Tensor]) -> None:
        self.data = x.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C), as CIFAR10.data
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def seed_transform(name: str, size: int = 32) -> T.Compose:
    """The seed's training pipeline ``name`` (docs/seed.md), per PIL image."""
    norm = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if name == "none":
        return T.Compose([T.ToTensor()])
    if name == "basic":
        return T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])


# -- the step shared by (b) and (c) ----------------------------------------------------


def new_model(spec: RunSpec) -> tuple[nn.Module, torch.optim.Optimizer]:
    """ToyNet with BN and the run's SGD, initialised as ``toynet.train`` does."""
    torch.manual_seed(spec.seed)
    model = ToyNet(3, 10, spec.bn).train()
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return model, opt


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, sums: Tensor | None) -> None:
    """Forward, cross-entropy, backward, SGD step; with ``sums``, the project's metric sums too."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sums is not None:
        with torch.no_grad():  # as toynet.train._Run._step: on device, no host sync
            sums[0] += loss.detach().double() * y.numel()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()


# -- the variants: each returns a callable timing one epoch in images/s ---------


def project_variant(spec: RunSpec, data: DataArrays, warmup_images: int, compile: str | None = None
                    ) -> Callable[[], float]:
    """(a) ``_Run.train_epoch``: the real training loop of ``toynet.train`` on CPU;
    with ``compile``, its ``torch.compile`` option (warmed up by one whole epoch, which
    compiles: the compile time is not in the samples)."""
    opts = TrainOptions(device="cpu", compile=compile)
    run = _Run(spec, data, opts, Hooks())
    epochs = itertools.count(1)
    if compile:
        run.train_epoch(next(epochs))  # compiles this run's own module
    else:
        _Run(spec, head(data, warmup_images), opts, Hooks()).train_epoch(1)

    def sample() -> float:
        t0 = time.perf_counter()
        _, _, seen = run.train_epoch(next(epochs))
        return seen / (time.perf_counter() - t0)

    return sample


def seed_variant(
    spec: RunSpec, data: DataArrays, workers: int, warmup_images: int
) -> tuple[Callable[[], float], DataLoader]:
    """(b) PIL Dataset + per-image torchvision transforms + DataLoader(shuffle=True).

    Workers are persistent, so a timed epoch does not pay for starting them; the seed
    restarted them every epoch, so this favours (b) slightly.
    """
    dataset = SeedStyleCIFAR(data.train_x, data.train_y, seed_transform(spec.transforms))
    loader = DataLoader(dataset, batch_size=spec.batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(spec.seed))
    model, opt = new_model(spec)

    def epoch(limit: int | None = None) -> int:
        sums = torch.zeros(3, dtype=torch.float64)
        seen = 0
        for x, y in loader:
            sgd_step(model, opt, x, y, sums)
            seen += y.numel()
            if limit is not None and seen >= limit:
                break
        return seen

    epoch(warmup_images)  # also starts the workers

    def sample() -> float:
        t0 = time.perf_counter()
        seen = epoch()
        return seen / (time.perf_counter() - t0)

    return sample, loader


def compute_variant(spec: RunSpec, data: DataArrays, warmup_images: int) -> Callable[[], float]:
    """(c) forward + backward + SGD step on float batches made before timing starts."""
    train_tf, _ = build_transforms(spec.transforms, 3)
    x = train_tf(data.train_x, torch.Generator().manual_seed(0))  # (N, 3, 32, 32) float32
    y = data.train_y.clone()
    batches = [(x[s : s + spec.batch_size], y[s : s + spec.batch_size]) for s in range(0, len(y), spec.batch_size)]
    model, opt = new_model(spec)
    warm = max(1, warmup_images // spec.batch_size)
    for xb, yb in batches[:warm]:
        sgd_step(model, opt, xb, yb, None)

    def sample() -> float:
        t0 = time.perf_counter()
        for xb, yb in batches:
            sgd_step(model, opt, xb, yb, None)
        return len(y) / (time.perf_counter() - t0)

    return sample


# -- where (a)'s time goes ---------------------------------------------------------------

PARTS: tuple[str, ...] = ("shuffle", "gather", "transform", "forward", "backward", "optimizer", "metrics")


def breakdown(spec: RunSpec, data: DataArrays, warmup_images: int) -> dict[str, float]:
    """Seconds per part of one epoch of a replica of ``_Run.train_epoch`` (world size 1).

    The replica runs the same operations in the same order on a ``_Run``'s own
    tensors, model, transform and optimizer, with a clock read between parts; on
    the CPU every op is synchronous, so the clock brackets each part exactly.
    ``total`` is the whole epoch, ``other`` what the parts do not cover (loop, clock).
    """
    opts = TrainOptions(device="cpu")
    _Run(spec, head(data, warmup_images), opts, Hooks()).train_epoch(1)
    run = _Run(spec, data, opts, Hooks())
    run.net.train()
    t = dict.fromkeys(PARTS, 0.0)
    clock = time.perf_counter
    start = clock()
    n = run.train_x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    aug = torch.Generator().manual_seed(2)
    sums = torch.zeros(3, dtype=torch.float64)
    t["shuffle"] += clock() - start
    for s in range(0, n, spec.batch_size):
        t0 = clock()
        idx = order[s : s + spec.batch_size]
        xb, yb = run.train_x[idx], run.train_y[idx]
        t1 = clock()
        x = run.train_tf(xb, aug)
        t2 = clock()
        logits = run.net(x)
        loss = F.cross_entropy(logits, yb)
        t3 = clock()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = clock()
        run.optimizer.step()
        t5 = clock()
        with torch.no_grad():
            sums[0] += loss.detach().double() * yb.numel()
            sums[1] += (logits.argmax(1) == yb).sum()
            sums[2] += yb.numel()
        t6 = clock()
        for part, dt in zip(PARTS[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[part] += dt
    t["total"] = clock() - start
    t["other"] = t["total"] - sum(t[p] for p in PARTS)
    return t


# -- running and reporting ---------------------------------------------------------------


def cell_spec(transform: str, batch_size: int) -> RunSpec:
    return RunSpec(dataset="cifar10", bn=True, batch_size=batch_size, transforms=transform, epochs=1)


def build_groups(cfg: Config, data: DataArrays) -> tuple[list[dict[Cell, Callable[[], float]]], list[DataLoader]]:
    """One group of warmed-up variants (every key of VARIANTS) per (transform, batch size) cell."""
    groups, loaders = [], []
    for transform, bs in itertools.product(TRANSFORMS, BATCH_SIZES):
        spec = cell_spec(transform, bs)
        _util.log(f"warming up {transform} b{bs}")
        group: dict[Cell, Callable[[], float]] = {}
        group[(transform, bs, "a")] = project_variant(spec, data, cfg.warmup_images)
        for key, workers in SEED_WORKERS.items():
            sample, loader = seed_variant(spec, data, workers, cfg.warmup_images)
            group[(transform, bs, key)] = sample
            loaders.append(loader)
        group[(transform, bs, "c")] = compute_variant(spec, data, cfg.warmup_images)
        group[(transform, bs, "ac")] = project_variant(spec, data, cfg.warmup_images, compile="default")
        groups.append(group)
    return groups, loaders


def summarise(samples: dict[Cell, list[float]]) -> list[dict[str, Any]]:
    """Per cell: images/s of each variant and the paired ratios, median and spread."""
    rows = []
    for transform, bs in itertools.product(TRANSFORMS, BATCH_SIZES):
        s = {v: samples[(transform, bs, v)] for v in VARIANTS}
        rows.append({
            "transform": transform,
            "batch_size": bs,
            "images_per_s": {v: _util.Summary.of(s[v]) for v in VARIANTS},
            "ratios": {key: _util.Summary.of(_util.paired_ratios(s[num], s[den]))
                       for key, (num, den) in RATIOS.items()},
            # Best (highest) images/s of each variant: the least disturbed sample on a busy machine.
            "best_ratios": {key: max(s[num]) / max(s[den]) for key, (num, den) in RATIOS.items()},
            "samples": s,
        })
    return rows


def throughput_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["transform", "batch", *VARIANTS.values(), *RATIOS]
    body = [[r["transform"], r["batch_size"], *(r["images_per_s"][v].fmt(0) for v in VARIANTS),
             *(r["ratios"][k].fmt(2) for k in RATIOS)] for r in rows]
    return _util.markdown_table(headers, body)


def best_table(rows: Sequence[dict[str, Any]]) -> str:
    """Ratios of each variant's best (highest) images/s over the repeats."""
    headers = ["transform", "batch", *(f"best {v}" for v in VARIANTS), *RATIOS]
    body = [[r["transform"], r["batch_size"], *(f"{r['images_per_s'][v].high:.0f}" for v in VARIANTS),
             *(f"{r['best_ratios'][k]:.2f}" for k in RATIOS)] for r in rows]
    return _util.markdown_table(headers, body)


def targets_table(rows: Sequence[dict[str, Any]]) -> str:
    """Each cell's median ratio against the issue's two targets."""
    body = []
    for r in rows:
        cell = f"{r['transform']} b{r['batch_size']}"
        ca = r["ratios"]["c/a"].median
        ok = ca <= TARGET_COMPUTE_OVER_PROJECT
        body.append([f"c/a ≤ {TARGET_COMPUTE_OVER_PROJECT}", cell, f"{ca:.2f}", _mark(ok)])
    for r in rows:
        if r["transform"] == "normal":
            for key in ("a/b0", "a/b2"):
                ab = r["ratios"][key].median
                body.append([f"{key} ≥ {TARGET_PROJECT_OVER_SEED_NORMAL} (normal)", f"normal b{r['batch_size']}",
                             f"{ab:.2f}", _mark(ab >= TARGET_PROJECT_OVER_SEED_NORMAL)])
    return _util.markdown_table(["target", "cell", "median", "met"], body)


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"


def breakdown_table(parts: Sequence[dict[str, Any]]) -> str:
    """Per cell: ms per epoch of each part of (a), with its share of the epoch."""
    headers = ["transform", "batch", "epoch ms", *PARTS, "other"]
    body = []
    for p in parts:
        t = p["seconds"]
        shares = [f"{1e3 * t[k]:.0f} ({100 * t[k] / t['total']:.1f}%)" for k in (*PARTS, "other")]
        body.append([p["transform"], p["batch_size"], f"{1e3 * t['total']:.0f}", *shares])
    return _util.markdown_table(headers, body)


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python benchmarks/throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a sanity run of well under a minute")
    p.add_argument("--images", type=int, help="training images per timed epoch (default 2048; quick 256)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 5; quick 1)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch intra-op threads for every variant (default: torch's default here)")
    p.add_argument("--data-dir", type=Path, default=_default_data_dir())
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-array cache (default: toynet's)")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images instead of real CIFAR-10")
    a = p.parse_args(argv)
    images = a.images or (256 if a.quick else 2048)
    repeats = a.repeats or (1 if a.quick else 5)
    warmup = min(images, 128 if a.quick else 256)
    return Config(images=images, repeats=repeats, warmup_images=warmup, threads=a.threads,
                  data_dir=a.data_dir, cache_dir=a.cache_dir, synthetic=a.synthetic, quick=a.quick)


def _default_data_dir() -> Path:
    env = os.environ.get("TOYNET_DATA")
    return Path(env) if env else _util.SHARED_DATA


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every cell, print the header and tables, write the JSON; returns the exit status."""
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    data, source = load_subset(cfg)
    info = _util.machine_info({
        "data": source,
        "images_per_epoch": cfg.images,
        "repeats": cfg.repeats,
        "warmup_images": cfg.warmup_images,
        "threads_note": f"torch.set_num_threads({cfg.threads}) in the main process for every variant; "
                        f"DataLoader workers run 1 torch thread each",
        "model": "ToyNet(3, 10, bn=True), SGD lr 0.1 momentum 0.9, CPU, float32",
    })
    groups, loaders = build_groups(cfg, data)
    samples = _util.interleave(groups, cfg.repeats, progress=_util.log)
    del groups, loaders  # ends the persistent DataLoader workers
    rows = summarise(samples)
    _util.log("breakdown of (a)")
    parts = [{"transform": tf, "batch_size": bs, "seconds": breakdown(cell_spec(tf, bs), data, cfg.warmup_images)}
             for tf, bs in itertools.product(TRANSFORMS, BATCH_SIZES)]
    info["load_average_at_end"] = _util.load_average()
    report = "\n\n".join([
        _util.format_header("Training-pass throughput, images/s (median [min–max] over repeats)", info),
        "## Throughput\n\nRatios are per-repeat paired ratios of variants measured side by side.\n\n"
        + throughput_table(rows),
        "## Best of the repeats\n\nEach variant's highest images/s and their ratios: the least "
        "disturbed samples, closest to an idle machine.\n\n" + best_table(rows),
        "## Targets (median paired ratios)\n\n" + targets_table(rows),
        "## Where (a)'s epoch goes, ms (one epoch of a timed replica of `_Run.train_epoch`)\n\n"
        + breakdown_table(parts),
    ])
    print(report)
    name = "throughput" + ("-quick" if cfg.quick else "")
    name += "" if cfg.threads == DEFAULT_THREADS else f"-t{cfg.threads}"
    path = _util.write_json(name, {"benchmark": "throughput", "machine": info, "config": _config_dict(cfg),
                                   "cells": rows, "breakdown": parts})
    print(f"\nwrote {path.relative_to(_util.REPO_ROOT)}")
    return 0


def _config_dict(cfg: Config) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


if __name__ == "__main__":
    sys.exit(main())
