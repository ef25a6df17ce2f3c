"""Weight files: a plain CPU ``state_dict`` that ``model.load_state_dict(torch.load(path))`` reads.

Saving records the facts the store keeps (sha256, size, parameter count); loading
never unpickles arbitrary objects (``weights_only=True``) and accepts only a mapping
of names to tensors.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import torch

from orchestration.records import StoreError
from orchestration.tables import one_line, sha256
from toynet.errors import WeightsError

WEIGHTS_FILE = "weights.pt"
# BN running statistics are buffers, not learnable parameters (count_parameters skips them).
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def encode(state_dict: dict[str, torch.Tensor]) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and {file, sha256, bytes, num_parameters} for the run's row."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise StoreError("state_dict must map parameter names to tensors (model.state_dict())")
    cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
    buf = io.BytesIO()
    torch.save(cpu, buf)
    data = buf.getvalue()
    params = sum(v.numel() for k, v in cpu.items() if not k.endswith(_BUFFERS))
    return data, {"file": WEIGHTS_FILE, "sha256": sha256(data), "bytes": len(data), "num_parameters": params}


def decode(data: pa.Buffer, expected_sha256: str, where: str) -> dict[str, torch.Tensor]:
    """Verify the checksum, then load tensors only; any problem is a one-line WeightsError."""
    digest = sha256(data)
    if digest != expected_sha256:
        raise WeightsError(
            f"weights file {where} fails verification: sha256 {digest[:16]}…, expected {expected_sha256[:16]}… as recorded"
        )
    try:
        state = torch.load(io.BytesIO(data.to_pybytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (unpickling raises many types; all mean "unusable")
        raise WeightsError(f"weights file {where} is not a loadable state_dict: {one_line(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {where} does not hold a state_dict of tensors")
    return state
