"""Weight files: a plain CPU ``state_dict`` that ``model.load_state_dict(torch.load(path))`` reads.

Saving records the facts the store keeps (sha256, size, parameter count); loading
never unpickles arbitrary objects (``weights_only=True``) and accepts only a mapping
of names to tensors.

torch is imported only inside :func:`encode` and :func:`decode`: a process that stores
weights encoded elsewhere (Ray Tune's driver, fed by the Train worker through
:meth:`Encoded.save` / :meth:`Encoded.load`) never imports it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from orchestration.records import StoreError
from orchestration.tables import one_line, sha256
from toynet.errors import WeightsError

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "weights.pt"
# BN running statistics are buffers, not learnable parameters (count_parameters skips them).
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


_INFO_FILE = "weights.json"


@dataclass(frozen=True)
class Encoded:
    """A weights file's bytes and what the run's row records about it:
    ``{file, sha256, bytes, num_parameters}``."""

    data: bytes
    info: dict[str, Any]

    def save(self, directory: Path) -> None:
        """Write the file and its facts into ``directory`` (a Train checkpoint)."""
        (directory / WEIGHTS_FILE).write_bytes(self.data)
        (directory / _INFO_FILE).write_text(json.dumps(self.info))

    @classmethod
    def load(cls, directory: Path) -> Encoded:
        """Read what :meth:`save` wrote; the bytes must match the recorded sha256."""
        try:
            data, info = (directory / WEIGHTS_FILE).read_bytes(), json.loads((directory / _INFO_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"encoded weights in {directory} are unreadable: {one_line(exc)}") from None
        if sha256(data) != info.get("sha256"):
            raise WeightsError(f"encoded weights in {directory} fail verification against their sha256")
        return cls(data, info)


def encode(state_dict: dict[str, torch.Tensor]) -> Encoded:
    """The weights file of a ``state_dict``, with the facts for the run's row."""
    import torch

    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise StoreError("state_dict must map parameter names to tensors (model.state_dict())")
    cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
    buf = io.BytesIO()
    torch.save(cpu, buf)
    data = buf.getvalue()
    params = sum(v.numel() for k, v in cpu.items() if not k.endswith(_BUFFERS))
    return Encoded(data, {"file": WEIGHTS_FILE, "sha256": sha256(data), "bytes": len(data), "num_parameters": params})


def decode(data: pa.Buffer, expected_sha256: str, where: str) -> dict[str, torch.Tensor]:
    """Verify the checksum, then load tensors only; any problem is a one-line WeightsError."""
    import torch

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
