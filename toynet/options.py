"""How a run executes (device, distribution, memory format, precision, compilation).

None of these change what a run *means* (that is :class:`toynet.spec.RunSpec`, whose
hash is the run id); some change its numerics slightly, which the store records.
This module imports no torch, so configuration code can validate options cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from toynet.errors import ConfigError

COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes; ``reduce-overhead`` replays the training step as CUDA graphs on a GPU."""


@dataclass(frozen=True)
class TrainOptions:
    """Execution options of one run; the defaults reproduce the seed's numerics.

    - ``channels_last``: NHWC memory format for the model and batches (GPU speed;
      same results up to float rounding).
    - ``bf16_autocast``: bfloat16 autocast for forward passes. Changes numerics, so it
      is off by default to keep results comparable with the seed.
    - ``compile``: a ``torch.compile`` mode (see :data:`COMPILE_MODES`) for the training
      forward/backward, or None for eager. Fused kernels round differently, so results
      match eager only approximately; compiling costs seconds to a minute up front.
    """

    device: str | None = None  # None: cuda when available, else cpu
    rank: int = 0
    world_size: int = 1
    eval_batch_size: int = 1024
    channels_last: bool = False
    bf16_autocast: bool = False
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ConfigError(
                f"compile mode {self.compile!r} is unknown; expected one of {list(COMPILE_MODES)} or none")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"rank {self.rank} is outside world size {self.world_size}; expected 0 <= rank < world_size")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")

    def numerics(self) -> dict[str, Any]:
        """The options that can change a run's numbers, as stored with its record."""
        return {k: v for k, v in asdict(self).items() if k in ("channels_last", "bf16_autocast", "compile")}
