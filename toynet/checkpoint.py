"""Checkpoint and weights files: atomic writes, safe loads.

A checkpoint is a plain dict of tensors and Python primitives (model, optimizer and
scheduler state, epoch, curve so far, RNG state, the run's spec), so it loads with
``torch.load(path, weights_only=True)``: loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from toynet.errors import WeightsError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temporary file beside ``path``, then rename.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike, what: str = "weights file") -> Any:
    """Load a file written by torch.save with ``weights_only=True``.

    Raises WeightsError (one line) when the file is missing, truncated, corrupt or
    holds objects other than tensors and primitives.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist; expected a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{what} {path} could not be loaded ({reason[:160]}); "
            "expected a torch.save file of tensors (loaded with weights_only=True)"
        ) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain ``state_dict`` file (name → tensor); anything else is a WeightsError."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"weights file {path} is not a state_dict; expected a mapping of names to tensors")
    return state
