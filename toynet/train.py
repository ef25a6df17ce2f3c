"""The ToyNet training loop: pure PyTorch, distributed-ready, reproducible, resumable.

The loop follows the seed: SGD (lr, momentum, weight decay), cross-entropy,
CosineAnnealingLR with ``T_max = epochs`` stepped once per epoch, reshuffled every
epoch; the final result is the last epoch's metrics.

Data never leaves uint8 tensors until a batch is sliced: the whole split lives on the
training device and augmentation runs batched there (``toynet.transforms``).

Distributed use: pass ``rank``/``world_size``; ``batch_size`` stays the global batch,
each rank trains on its interleaved share of every global batch, and metrics are
summed across ranks with ``torch.distributed`` when it is initialised. Wrapping the
model for DDP is the caller's job (``Hooks.wrap_model``), so this module knows
nothing of Ray.

Reproducibility: all randomness is derived from ``spec.seed`` (model init) and from
``(seed, epoch, rank)`` (shuffle order, augmentation), so an epoch's result depends
only on the state at its start and resuming from a checkpoint replays exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from toynet.cli import ArgumentParser, exit_process, run_main
from toynet.data import DataArrays, load_dataset
from toynet.checkpoint import atomic_torch_save
from toynet.errors import ConfigError, DeviceError, WeightsError
from toynet.model import ToyNet
from toynet.options import COMPILE_MODES, TrainOptions
from toynet.spec import RunSpec
from toynet.transforms import BatchTransform, build_transforms

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
# Called after every epoch with (epoch, metrics, checkpoint state); epoch is 1-based.
EpochCallback = Callable[[int, dict[str, float], dict[str, Any]], None]


@dataclass
class Hooks:
    """Integration points for a caller such as the Ray layer (all optional)."""

    on_epoch: EpochCallback | None = None
    wrap_model: Callable[[nn.Module], nn.Module] | None = None
    # Test-only fault injection: called at the start of each epoch (1-based).
    before_epoch: Callable[[int], None] | None = None


@dataclass
class FitResult:
    """The outcome of :func:`fit`; ``final`` is the last epoch's metrics."""

    spec: RunSpec
    model: nn.Module
    curve: list[dict[str, float]]
    device: str
    wall_seconds: float
    train_images_per_s: float
    final: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.final = dict(self.curve[-1]) if self.curve else {}


def resolve_device(requested: str | None) -> torch.device:
    """``None`` → cuda if available else cpu; asking for absent CUDA is a DeviceError."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceError(f"unknown device {requested!r}; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} was asked for but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {requested!r}; expected cpu, cuda or cuda:N")
    return device


def device_label(device: torch.device) -> str:
    """A human-readable device name for records, e.g. ``cuda:NVIDIA H200``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def _generator(device: torch.device, *parts: int) -> torch.Generator:
    """A generator on ``device`` seeded from integers, stable across processes."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


class _Run:
    """State of one training run; one instance per rank."""

    def __init__(self, spec: RunSpec, data: DataArrays, opts: TrainOptions, hooks: Hooks):
        self.spec, self.opts, self.hooks = spec, opts, hooks
        self.device = resolve_device(opts.device)
        # (N, C, H, W) uint8 on the training device; int64 labels beside them.
        self.train_x = data.train_x.to(self.device)
        self.train_y = data.train_y.to(self.device)
        self.val_x = data.val_x.to(self.device)
        self.val_y = data.val_y.to(self.device)
        self.train_tf, self.val_tf = build_transforms(spec.transforms, data.channels)
        torch.manual_seed(spec.seed)  # model initialisation is the seed's first use
        self.model = ToyNet(data.channels, data.num_classes, spec.bn).to(self.device)
        if opts.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=spec.epochs)
        self.net = hooks.wrap_model(self.model) if hooks.wrap_model else self.model
        if opts.compile:
            # Only the training forward/backward is compiled: validation and checkpoints use
            # self.model, so state_dict keys stay plain. Static shapes: the tail batch gets
            # its own graph once instead of making every step dynamic.
            self.net = torch.compile(self.net, mode=opts.compile, dynamic=False)
        self.curve: list[dict[str, float]] = []
        self.start_epoch = 1

    # -- checkpoint state ----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to resume after the last finished epoch (weights_only-safe)."""
        return {
            "version": CHECKPOINT_VERSION,
            "spec": self.spec.to_dict(),
            "epoch": self.start_epoch - 1,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            # deepcopy: the optimizer's state_dict shares its live momentum buffers.
            "optimizer": _to_cpu(copy.deepcopy(self.optimizer.state_dict())),
            "scheduler": self.scheduler.state_dict(),
            "curve": [dict(row) for row in self.curve],
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION or state.get("spec") != self.spec.to_dict():
            raise WeightsError(
                f"checkpoint does not belong to run {self.spec.run_id} "
                f"(version {state.get('version')}, expected {CHECKPOINT_VERSION} and the same spec)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.curve = [dict(row) for row in state["curve"]]
        self.start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])

    # -- one epoch -----------------------------------------------------------------

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One pass over the training split; returns (loss, acc, samples) summed over ranks."""
        opts, spec = self.opts, self.spec
        self.net.train()
        n = self.train_x.shape[0]
        order = torch.randperm(n, generator=_generator(torch.device("cpu"), spec.seed, epoch)).to(self.device)
        aug = _generator(self.device, spec.seed, epoch, opts.rank, 1)
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss·n, correct, n
        for start in range(0, n, spec.batch_size):
            global_idx = order[start : start + spec.batch_size]
            if global_idx.numel() < opts.world_size:
                break  # every rank must step together; a tail smaller than the world is dropped
            idx = global_idx[opts.rank :: opts.world_size]
            self._step(self.train_tf(self.train_x[idx], aug), self.train_y[idx], sums)
        sums = _all_reduce(sums)
        _sync_buffers(self.model)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2]), int(sums[2])

    def _step(self, x: Tensor, y: Tensor, sums: Tensor) -> None:
        if self.opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.opts.bf16_autocast):
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            # Accumulate on device; one host sync per epoch instead of one per step.
            sums[0] += loss.detach().double() * y.numel()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()

    def validate(self) -> tuple[float, float]:
        """Mean loss and accuracy over the whole validation split (this rank's share, summed)."""
        idx = torch.arange(self.opts.rank, self.val_x.shape[0], self.opts.world_size, device=self.device)
        sums = _evaluate_sums(
            self.model, self.val_x[idx], self.val_y[idx], self.val_tf, self.opts.eval_batch_size, self.opts
        )
        sums = _all_reduce(sums)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def run(self) -> None:
        for epoch in range(self.start_epoch, self.spec.epochs + 1):
            if self.hooks.before_epoch:
                self.hooks.before_epoch(epoch)
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            loss, acc, seen = self.train_epoch(epoch)
            train_s = time.perf_counter() - t0
            val_loss, val_acc = self.validate()
            self.scheduler.step()
            row = {
                "epoch": epoch, "loss": loss, "acc": acc, "val_loss": val_loss, "val_acc": val_acc,
                "lr": lr, "seconds": time.perf_counter() - t0, "train_seconds": train_s,
                "train_images": seen,
            }
            self.curve.append(row)
            self.start_epoch = epoch + 1
            log.info("epoch %d/%d %s", epoch, self.spec.epochs, _fmt(row))
            if self.hooks.on_epoch:
                self.hooks.on_epoch(epoch, row, self.state())


def _to_cpu(obj: Any) -> Any:
    """Move every tensor in a nested dict/list to the CPU (checkpoints are device-neutral)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm running statistics.

    DDP broadcasts buffers before each forward, so after the last step each rank
    holds stats from its own shard; validating (and checkpointing) one model needs
    them equal.
    """
    if _distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _all_reduce(t: Tensor) -> Tensor:
    """Sum a tensor across ranks when a process group exists; identity otherwise."""
    if _distributed():
        dist.all_reduce(t)  # float64 sums: exact sample counts, both gloo and NCCL reduce them
    return t


def _evaluate_sums(
    model: nn.Module, x: Tensor, y: Tensor, tf: BatchTransform, batch_size: int, opts: TrainOptions
) -> Tensor:
    """(loss·n, correct, n) of ``model`` over uint8 ``x`` (N, C, H, W) in eval mode."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=x.device, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = tf(x[start : start + batch_size], None)
            yb = y[start : start + batch_size]
            if opts.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=opts.bf16_autocast):
                logits = model(xb)
            sums[0] += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            sums[1] += (logits.argmax(1) == yb).sum()
            sums[2] += yb.numel()
    model.train(was_training)
    return sums


def evaluate(
    model: nn.Module, data: DataArrays, transforms: str, *, batch_size: int = 1024, device: str | None = "cpu"
) -> dict[str, float]:
    """``val_loss`` and ``val_acc`` of ``model`` on ``data``'s validation split (eval mode)."""
    dev = resolve_device(device)
    _, val_tf = build_transforms(transforms, data.channels)
    model = model.to(dev)
    sums = _evaluate_sums(model, data.val_x.to(dev), data.val_y.to(dev), val_tf, batch_size, TrainOptions())
    return {"val_loss": float(sums[0] / sums[2]), "val_acc": float(sums[1] / sums[2])}


def fit(
    spec: RunSpec,
    data: DataArrays,
    opts: TrainOptions = TrainOptions(),
    hooks: Hooks | None = None,
    resume: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``spec`` on ``data`` to its last epoch and return the result.

    ``resume`` is a state passed earlier to ``hooks.on_epoch``: training continues
    after that epoch and ends with the same metrics and weights as an uninterrupted
    run (same device and world size). On every rank the returned model is the
    unwrapped ToyNet.
    """
    run = _Run(spec, data, opts, hooks or Hooks())
    if resume is not None:
        run.load_state(resume)
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    # Throughput over the whole curve (resumed epochs included): images per training second.
    images = sum(r["train_images"] for r in run.curve)
    train_s = sum(r["train_seconds"] for r in run.curve)
    return FitResult(
        spec=spec,
        model=run.model,
        curve=run.curve,
        device=device_label(run.device),
        wall_seconds=wall,
        train_images_per_s=images / train_s if train_s > 0 else 0.0,
    )


def _fmt(row: dict[str, float]) -> str:
    return (
        f"loss {row['loss']:.4f} acc {row['acc']:.4f} val_loss {row['val_loss']:.4f} "
        f"val_acc {row['val_acc']:.4f} lr {row['lr']:.4g} {row['seconds']:.1f}s"
    )


# -- single-run command line ---------------------------------------------------------


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m toynet.train", description="Train one ToyNet run.")
    p.add_argument("--dataset", required=True, help="digits (embedded), mnist or cifar10")
    p.add_argument("--bn", action=argparse.BooleanOptionalAction, default=True, help="BatchNorm (default on)")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--transforms", default="none", help="none, basic or normal")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="class-balanced training subset size")
    p.add_argument("--val-limit", type=int, default=None, help="class-balanced validation subset size")
    p.add_argument("--data-dir", default=None, help="dataset root (default: $TOYNET_DATA, then the user cache)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download missing data")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU speed)")
    p.add_argument("--bf16", "--bf16-autocast", dest="bf16", action="store_true",
                   help="bf16 autocast; changes numerics, off by default")
    p.add_argument("--compile", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode for the training step (reduce-overhead: CUDA graphs)")
    p.add_argument("--out", default=None, help="output directory (default: toynet-runs/<run id>)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    return p


def _spec_from_args(args: argparse.Namespace) -> RunSpec:
    fields = ("dataset", "bn", "batch_size", "transforms", "epochs", "lr", "momentum",
              "weight_decay", "seed", "train_limit", "val_limit")
    return RunSpec.from_dict({f: getattr(args, f) for f in fields}, where="arguments")


def _write_outputs(out: Path, result: FitResult) -> None:
    """weights.pt (a plain state_dict) first, metrics.json last: its presence means complete."""
    atomic_torch_save(result.model.state_dict(), out / "weights.pt")
    summary = {
        "run_id": result.spec.run_id,
        "spec": result.spec.to_dict(),
        "final": {k: result.final[k] for k in ("loss", "acc", "val_loss", "val_acc")},
        "curve": result.curve,
        "device": result.device,
        "wall_seconds": result.wall_seconds,
        "train_images_per_s": result.train_images_per_s,
    }
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "metrics.json")


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    spec = _spec_from_args(args)
    resolve_device(args.device)  # fail before loading data
    out = Path(args.out or Path("toynet-runs") / spec.run_id).resolve()
    if (out / "metrics.json").exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already holds a result; pass --overwrite or choose another directory")
    data = load_dataset(spec.dataset, args.data_dir, download=args.download,
                        train_limit=spec.train_limit, val_limit=spec.val_limit)
    print(f"run {spec.run_id}: {data.train_x.shape[0]} train / {data.val_x.shape[0]} val images")

    def show(epoch: int, row: dict[str, float], _state: dict[str, Any]) -> None:
        print(f"epoch {epoch:>3}/{spec.epochs} {_fmt(row)}", flush=True)

    opts = TrainOptions(device=args.device, channels_last=args.channels_last, bf16_autocast=args.bf16,
                        compile=args.compile)
    result = fit(spec, data, opts, Hooks(on_epoch=show))
    _write_outputs(out, result)
    print(f"{result.train_images_per_s:,.0f} train images/s on {result.device}; wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m toynet.train``: train one run, write metrics.json and weights.pt."""
    return run_main(_main, argv)


def script() -> NoReturn:
    """Entry point of ``python -m toynet.train`` and the ``toynet-train`` script: exits."""
    exit_process(main)


if __name__ == "__main__":
    script()
