"""What runs on each Ray Train worker for one grid point: the only Ray-side module that imports torch.

:func:`run` loads the node-cached dataset, resumes from the last Train checkpoint if
there is one, and runs ``toynet.train.fit`` with a hook that reports metrics every
epoch. Rank 0 attaches a checkpoint holding the resume state (``state.pt``); the last
epoch's also holds what the Tune driver stores when the run ends: the curve as JSON
and the weights already encoded for the store (:class:`orchestration.weights.Encoded`).
The driver reads those two without importing torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch

from orchestration import weights as weights_io
from orchestration.ray_train import CURVE_FILE, STATE_FILE
from toynet.checkpoint import atomic_torch_save, safe_torch_load
from toynet.data import load_dataset
from toynet.spec import RunSpec
from toynet.train import Hooks, TrainOptions, device_label, fit


def run(config: dict[str, Any]) -> None:
    """Ray Train worker body; ``config`` is a grid point's ``worker`` part (orchestration.tuning)."""
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    spec = RunSpec.from_dict(config["spec"])
    data = load_dataset(
        spec.dataset, config["data_dir"], download=config["download"],
        train_limit=spec.train_limit, val_limit=spec.val_limit, cache_dir=config["cache_dir"],
    )
    device = ray.train.torch.get_device()
    opts = TrainOptions(device=str(device), rank=rank, world_size=world_size, **config["train_options"])
    hooks = Hooks(
        on_epoch=_epoch_reporter(rank, device_label(device), world_size, spec.epochs),
        wrap_model=(lambda m: ray.train.torch.prepare_model(m, move_to_device=False)) if world_size > 1 else None,
        before_epoch=_fault_hook(config.get("fault"), rank, spec.run_id),
    )
    fit(spec, data, opts, hooks, resume=_resume_state())


def _resume_state() -> dict[str, Any] | None:
    """The state saved with the last registered Train checkpoint, if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return safe_torch_load(Path(directory) / STATE_FILE, what="checkpoint")


def _epoch_reporter(rank: int, device: str, world_size: int, last_epoch: int):
    """on_epoch hook: every rank reports (a barrier); rank 0 also saves the checkpoint,
    and at ``last_epoch`` the files the driver stores."""

    def report(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
        metrics = {**row, "device": device, "num_workers": world_size}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as name:
            directory = Path(name)
            atomic_torch_save(state, directory / STATE_FILE)
            if epoch == last_epoch:
                weights_io.encode(state["model"]).save(directory)
                (directory / CURVE_FILE).write_text(json.dumps(state["curve"]))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    return report


def _fault_hook(fault: dict[str, Any] | None, rank: int, run_id: str):
    """Test-only fault injection, off unless grid.py's hidden --inject-fault is given.

    At the start of ``fault['epoch']``, rank 0 of every run whose id contains
    ``fault['run']`` either crashes hard once (``once``: a marker file remembers) or
    raises on every attempt (``always``). Each firing appends a line to ``log``.
    """
    if not fault or rank != 0 or fault.get("run", "") not in run_id:
        return None
    marker = Path(fault["once"]) if fault.get("once") else None

    def before_epoch(epoch: int) -> None:
        if epoch != fault["epoch"] or (marker is not None and marker.exists()):
            return
        if fault.get("log"):
            with open(fault["log"], "a") as fh:
                fh.write(f"{run_id} epoch {epoch}\n")
        if marker is None:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        marker.write_text("crashed once\n")
        os._exit(1)  # a hard crash, as a killed process would look

    return before_epoch
