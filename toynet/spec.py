"""RunSpec: one grid point, frozen, validated and hashable into a stable run id.

A RunSpec holds everything that decides a run's result (dataset, model, data
subset, optimiser, seed) and nothing that only decides where or how fast it runs
(data directory, device, worker count). Its canonical JSON hashes into ``run_id``,
so the same grid point always maps to the same record in the artifacts store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from toynet.errors import ConfigError

DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10")
TRANSFORMS: tuple[str, ...] = ("none", "basic", "normal")
# (channels, height, width) of each dataset's images; all have 10 classes.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 28, 28),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
NUM_CLASSES = 10


@dataclass(frozen=True)
class RunSpec:
    """One training run. Construct through :meth:`from_dict` to validate user input."""

    dataset: str
    bn: bool
    batch_size: int
    transforms: str
    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    train_limit: int | None = None
    val_limit: int | None = None

    def __post_init__(self) -> None:
        _check_spec(self)

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of the canonical JSON; stable across processes."""
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:10]
        bn = "bn" if self.bn else "nobn"
        return f"{self.dataset}-{bn}-b{self.batch_size}-{self.transforms}-e{self.epochs}-s{self.seed}-{digest}"

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "run") -> "RunSpec":
        """Build from plain data (YAML, JSON, CLI); unknown keys and bad types are errors.

        ``where`` names the source in messages, e.g. ``"configs/seed.yaml: runs[3]"``.
        """
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(names)}")
        missing = [n for n, f in names.items() if f.default is dataclasses.MISSING and n not in data]
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r}")
        values = {k: _coerce(k, v, where) for k, v in data.items()}
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


_INT_FIELDS = {"batch_size", "epochs", "seed", "train_limit", "val_limit"}
_FLOAT_FIELDS = {"lr", "momentum", "weight_decay"}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check one field's type; ints are accepted for floats, nothing else is converted."""
    if key in _INT_FIELDS:
        if value is None and key in ("train_limit", "val_limit"):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    elif key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    elif key == "bn":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: bn must be true or false, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _check_spec(spec: RunSpec) -> None:
    if spec.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {spec.dataset!r}; expected one of {list(DATASETS)}")
    if spec.transforms not in TRANSFORMS:
        raise ConfigError(f"unknown transforms {spec.transforms!r}; expected one of {list(TRANSFORMS)}")
    for name in ("batch_size", "epochs"):
        if getattr(spec, name) <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {getattr(spec, name)}")
    for name in ("train_limit", "val_limit"):
        value = getattr(spec, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be a positive integer or null, got {value}")
    if not spec.lr > 0:
        raise ConfigError(f"lr must be positive, got {spec.lr}")
    if not 0 <= spec.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {spec.momentum}")
    if spec.weight_decay < 0:
        raise ConfigError(f"weight_decay must be non-negative, got {spec.weight_decay}")
