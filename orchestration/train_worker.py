"""What trains one grid point: the only Ray-side module that imports torch.

:func:`run` is the body of each Ray Train worker; :func:`run_in_trial` runs a
one-worker run inside its Tune trial's process (orchestration.in_trial). Both load the
node-cached dataset, resume from the latest checkpoint if there is one, and run
``toynet.train.fit`` with a hook that reports metrics every epoch. Rank 0 attaches
a checkpoint holding the resume state (``state.pt``); the last epoch's also holds
what the Tune driver stores when the run ends: the curve as JSON and the weights
already encoded for the store (:class:`orchestration.weights.Encoded`). The driver
reads those two without importing torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from orchestration import weights as weights_io
from orchestration.in_trial import Report
from orchestration.ray_train import CURVE_FILE, STATE_FILE
from toynet.checkpoint import atomic_torch_save, safe_torch_load
from toynet.data import load_dataset
from toynet.spec import RunSpec
from toynet.train import Hooks, TrainOptions, device_label, fit


@dataclass(frozen=True)
class Session:
    """Where one process of a run trains and what it reports to.

    ``report(metrics, checkpoint)`` hands on each epoch's metrics (every rank: a barrier
    on Train workers) and rank 0's checkpoint; ``checkpoint`` is the latest one to
    resume from, if any.
    """

    rank: int
    world_size: int
    device: torch.device
    report: Report
    checkpoint: ray.train.Checkpoint | None


def run(config: dict[str, Any]) -> None:
    """Ray Train worker body; ``config`` is a grid point's ``worker`` part (orchestration.tuning)."""
    ctx = ray.train.get_context()
    session = Session(
        rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), device=ray.train.torch.get_device(),
        report=lambda metrics, checkpoint: ray.train.report(metrics, checkpoint=checkpoint),
        checkpoint=ray.train.get_checkpoint(),
    )
    train(config, session)


def run_in_trial(config: dict[str, Any], report: Report, checkpoint: ray.train.Checkpoint | None) -> None:
    """The whole run in this process, a Tune trial's (orchestration.in_trial)."""
    # Ray gives a trial's process only its own GPUs (CUDA_VISIBLE_DEVICES): the first is ours.
    device = torch.device("cuda:0") if config["gpu"] else torch.device("cpu")
    train(config, Session(rank=0, world_size=1, device=device, report=report, checkpoint=checkpoint))


def train(config: dict[str, Any], session: Session) -> None:
    """Load the node-cached dataset and train the run, resuming from ``session.checkpoint``."""
    spec = RunSpec.from_dict(config["spec"])
    data = load_dataset(
        spec.dataset, config["data_dir"], download=config["download"],
        train_limit=spec.train_limit, val_limit=spec.val_limit, cache_dir=config["cache_dir"],
    )
    rank, world_size = session.rank, session.world_size
    opts = TrainOptions(device=str(session.device), rank=rank, world_size=world_size, **config["train_options"])
    hooks = Hooks(
        on_epoch=_epoch_reporter(session, device_label(session.device), spec.epochs),
        wrap_model=(lambda m: ray.train.torch.prepare_model(m, move_to_device=False)) if world_size > 1 else None,
        before_epoch=_fault_hook(config.get("fault"), rank, spec.run_id),
    )
    fit(spec, data, opts, hooks, resume=_resume_state(session.checkpoint))


def _resume_state(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any] | None:
    """The state saved with ``checkpoint``, if any."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return safe_torch_load(Path(directory) / STATE_FILE, what="checkpoint")


def _epoch_reporter(session: Session, device: str, last_epoch: int):
    """on_epoch hook: every rank reports; rank 0 also saves the checkpoint, and at
    ``last_epoch`` the files the driver stores."""

    def report(epoch: int, row: dict[str, float], state: dict[str, Any]) -> None:
        metrics = {**row, "device": device, "num_workers": session.world_size}
        if session.rank != 0:
            session.report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as name:
            directory = Path(name)
            atomic_torch_save(state, directory / STATE_FILE)
            if epoch == last_epoch:
                weights_io.encode(state["model"]).save(directory)
                (directory / CURVE_FILE).write_text(json.dumps(state["curve"]))
            session.report(metrics, ray.train.Checkpoint.from_directory(directory))

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
