"""Grid configuration: read a YAML file, validate it, expand it into RunSpecs.

This module runs before Ray starts and never imports ``ray``: every mistake a user
can make in a config file or a command-line override is reported here as one
:class:`~toynet.errors.ConfigError` line that names the file (or flag), the key
path, what was found and what was expected, e.g.::

    configs/x.yaml: resources.gpus_per_worker must be a number >= 0, got 'two'

Schema (every section except ``experiment`` and one of ``grid``/``runs`` is optional;
docs/configs.md has the long version)::

    experiment: seed            # store name: [A-Za-z0-9._-]+, not starting with '.'
    grid:                       # axes, each a scalar or a non-empty list; cartesian product
      dataset: [mnist, cifar10] #   required: dataset, bn, batch_size, transforms, epochs
      bn: [false, true]         #   optional: lr, momentum, weight_decay (RunSpec defaults)
      batch_size: [32, 64]
      transforms: none
      epochs: 10
    # grid may also be a list of such blocks (their union), or use instead
    # runs: [{dataset: mnist, bn: true, batch_size: 32, transforms: none, epochs: 10}, ...]
    seeds: [0]                  # every grid point is repeated once per seed
    data: {dir: null, download: false, train_limit: null, val_limit: null}
    resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0,
                max_concurrent_trials: null, placement_strategy: PACK}
    storage: {artifacts: artifacts}   # store root: a local path or a URI (s3://...)
    failure: {max_retries: 2}
    training: {channels_last: false, bf16_autocast: false, compile: null, eval_batch_size: 1024}

Expansion contract: grid blocks (or runs entries) are expanded in file order; within a
block the product varies ``bn`` fastest, then ``transforms``, ``batch_size``,
``epochs``, ``dataset`` (slowest), with ``lr``/``momentum``/``weight_decay`` faster
still. Seeds are the outermost loop, so a complete grid at the first seed is
scheduled before any repeat. A grid point given twice (two overlapping blocks, two
equal ``runs`` entries) is an error, because in a hand-written file it is almost
always a miscount. ``data.train_limit``/``val_limit`` change results, so they are
copied into every RunSpec (they are part of its run id); ``data.dir`` is not.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import yaml

from toynet.errors import ConfigError
from toynet.options import COMPILE_MODES
from toynet.spec import RunSpec

__all__ = [
    "DEFAULT_CONFIG",
    "DataOptions",
    "Failure",
    "GridConfig",
    "Overrides",
    "PLACEMENT_STRATEGIES",
    "Resources",
    "Storage",
    "Training",
    "apply_overrides",
    "load_config",
    "parse_config",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG: Path = Path(__file__).resolve().parents[1] / "configs" / "seed.yaml"
PLACEMENT_STRATEGIES: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class DataOptions:
    """Where data comes from. ``dir`` None means the default per-user cache."""

    dir: str | None = None
    download: bool = False
    train_limit: int | None = None
    val_limit: int | None = None


@dataclass(frozen=True)
class Resources:
    """Per-trial Ray Train scaling; validated here, checked against the cluster by grid.py."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int | None = None
    placement_strategy: str = "PACK"
    train_in_trial: bool = True

    @property
    def uses_in_trial(self) -> bool:
        """One-worker runs train inside their Tune trial's process (orchestration.in_trial);
        runs with more workers always use Ray Train's worker actors."""
        return self.train_in_trial and self.workers_per_trial == 1


@dataclass(frozen=True)
class Storage:
    """Artifacts store root (path or URI, kept as written) and the experiment name in it."""

    artifacts: str
    experiment: str


@dataclass(frozen=True)
class Failure:
    """Retries per run: Train worker-group restarts and Tune trial retries."""

    max_retries: int = 2


@dataclass(frozen=True)
class Training:
    """Execution options every run's workers use (toynet.options.TrainOptions fields).

    They do not enter run ids: a run's meaning is its RunSpec. The store records them
    with each run, because ``bf16_autocast`` and ``compile`` change numerics slightly.
    """

    channels_last: bool = False
    bf16_autocast: bool = False
    compile: str | None = None
    eval_batch_size: int = 1024


@dataclass(frozen=True)
class GridConfig:
    """A validated grid: ``runs`` is the full expansion (seeds × points), in schedule order."""

    source: str
    runs: tuple[RunSpec, ...]
    data: DataOptions
    resources: Resources
    storage: Storage
    failure: Failure
    training: Training = Training()

    @property
    def experiment(self) -> str:
        return self.storage.experiment

    def to_dict(self) -> dict[str, Any]:
        """The resolved config in the YAML schema (explicit ``runs``), ready for yaml.safe_dump.

        ``parse_config(cfg.to_dict(), cfg.source) == cfg`` for every config built by this
        module; write it next to results so a run can be reproduced from its record.
        """
        seeds = list(dict.fromkeys(r.seed for r in self.runs))
        points = list(dict.fromkeys(_point_of(r) for r in self.runs))
        if _expand(points, seeds, self.data) != self.runs:
            raise ValueError("GridConfig.runs is not seeds × points with data limits; build it with parse_config")
        keep = [f.name for f in dataclasses.fields(RunSpec) if f.name not in _RUN_ONLY_ELSEWHERE]
        return {
            "experiment": self.storage.experiment,
            "runs": [{k: getattr(p, k) for k in keep} for p in points],
            "seeds": seeds,
            "data": dataclasses.asdict(self.data),
            "resources": dataclasses.asdict(self.resources),
            "storage": {"artifacts": self.storage.artifacts},
            "failure": dataclasses.asdict(self.failure),
            "training": dataclasses.asdict(self.training),
        }


@dataclass(frozen=True)
class Overrides:
    """Command-line values that replace config values; None means "keep the config's".

    Errors in a value name the flag as ``--`` + the field name with dashes
    (``gpus_per_worker`` → ``--gpus-per-worker``), so CLI flags should be named that way.
    ``epochs`` sets every run's epochs (runs that become identical are merged);
    ``seeds`` replaces the seed list.
    """

    experiment: str | None = None
    artifacts: str | None = None
    workers_per_trial: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    max_concurrent_trials: int | None = None
    placement_strategy: str | None = None
    train_in_trial: bool | None = None
    data_dir: str | None = None
    download: bool | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    max_retries: int | None = None
    channels_last: bool | None = None
    bf16_autocast: bool | None = None
    compile: str | None = None
    epochs: int | None = None
    seeds: tuple[int, ...] | None = None


# ---------------------------------------------------------------- value validators
# A validator takes (value, where) and returns the normalised value or raises a
# ConfigError "<where> must be <expected>, got <value>"; ``where`` is
# "<file>: <key.path>" for config files and "--flag" for overrides.
Validator = Callable[[Any, str], Any]


def _fail(where: str, expected: str, value: Any) -> NoReturn:
    raise ConfigError(f"{where} must be {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


def _int_at_least(minimum: int, nullable: bool = False) -> Validator:
    expected = f"an integer >= {minimum}" + (" or null" if nullable else "")

    def check(value: Any, where: str) -> int | None:
        if value is None and nullable:
            return None
        if not _is_int(value) or value < minimum:
            _fail(where, expected, value)
        return value

    return check


def _positive_number(value: Any, where: str) -> float:
    if not _is_number(value) or value <= 0:
        _fail(where, "a number > 0", value)
    return float(value)


def _gpus(value: Any, where: str) -> float:
    """Fractions of one GPU share it between trials; more than one GPU must be whole."""
    if not _is_number(value) or value < 0:
        _fail(where, "a number >= 0", value)
    if value > 1 and value != int(value):
        _fail(where, "a fraction <= 1 or a whole number of GPUs", value)
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, "true or false", value)
    return value


def _nonempty_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(where, "a non-empty string", value)
    return value


def _optional_path(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        _fail(where, "a directory path or null", value)
    return value


def _compile_mode(value: Any, where: str) -> str | None:
    if value is not None and value not in COMPILE_MODES:
        _fail(where, f"null or one of {list(COMPILE_MODES)}", value)
    return value


def _placement(value: Any, where: str) -> str:
    if value not in PLACEMENT_STRATEGIES:
        _fail(where, f"one of {list(PLACEMENT_STRATEGIES)}", value)
    return value


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _experiment_name(value: Any, where: str) -> str:
    """The name becomes a directory in the store, so no separators and no leading dot."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > 100:
        _fail(where, "a name of letters, digits, '.', '_', '-' (not starting with '.')", value)
    return value


def _artifacts(value: Any, where: str) -> str:
    _nonempty_str(value, where)
    if "://" in value and not _URI.fullmatch(value):
        _fail(where, "a local path or a URI like s3://bucket/prefix", value)
    return value


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    """A seed or a non-empty list of distinct seeds >= 0."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(_is_int(s) and s >= 0 for s in items):
        _fail(where, "an integer >= 0 or a non-empty list of them", value)
    if len(set(items)) != len(items):
        _fail(where, "a list of distinct seeds", value)
    return tuple(items)


# ---------------------------------------------------------------- sections
# Each optional section: key -> (validator, default). The dataclass defaults mirror these.
_SECTIONS: dict[str, dict[str, tuple[Validator, Any]]] = {
    "data": {
        "dir": (_optional_path, None),
        "download": (_bool, False),
        "train_limit": (_int_at_least(1, nullable=True), None),
        "val_limit": (_int_at_least(1, nullable=True), None),
    },
    "resources": {
        "workers_per_trial": (_int_at_least(1), 1),
        "cpus_per_worker": (_positive_number, 1.0),
        "gpus_per_worker": (_gpus, 0.0),
        "max_concurrent_trials": (_int_at_least(1, nullable=True), None),
        "placement_strategy": (_placement, "PACK"),
        "train_in_trial": (_bool, True),
    },
    "storage": {"artifacts": (_artifacts, "artifacts")},
    "failure": {"max_retries": (_int_at_least(0), 2)},
    "training": {
        "channels_last": (_bool, False),
        "bf16_autocast": (_bool, False),
        "compile": (_compile_mode, None),
        "eval_batch_size": (_int_at_least(1), 1024),
    },
}
_TOP_LEVEL = ("experiment", "grid", "runs", "seeds", *_SECTIONS)


def _check_keys(raw: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    """Reject the first key not in ``allowed``; ``where`` is "<file>: <path prefix>"."""
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}{key} is not a known key; expected one of {list(allowed)}")


def _parse_section(raw: Any, name: str, source: str) -> dict[str, Any]:
    """Validate one optional section (absent = all defaults) into constructor kwargs."""
    fields = _SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        _fail(f"{source}: {name}", f"a mapping with keys {list(fields)}", raw)
    _check_keys(raw, tuple(fields), f"{source}: {name}.")
    return {
        key: check(raw[key], f"{source}: {name}.{key}") if key in raw else default
        for key, (check, default) in fields.items()
    }


# ---------------------------------------------------------------- grid points
_REQUIRED_AXES = ("dataset", "epochs", "batch_size", "transforms", "bn")  # slowest → fastest
_OPTIONAL_AXES = ("lr", "momentum", "weight_decay")
_AXES = _REQUIRED_AXES + _OPTIONAL_AXES
_RUN_ONLY_ELSEWHERE = {"seed": "seeds", "train_limit": "data.train_limit", "val_limit": "data.val_limit"}
_YAML_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _spec(point: Mapping[str, Any], where: str) -> RunSpec:
    """RunSpec.from_dict plus a hint for YAML 1.1's ``1e-3`` (read as a string)."""
    for key in _OPTIONAL_AXES:
        value = point.get(key)
        if isinstance(value, str) and _YAML_FLOAT.fullmatch(value):
            _fail(f"{where}: {key}", "a number (YAML reads 1e-3 as text: write 1.0e-3)", value)
    return RunSpec.from_dict(point, where=where)


def _check_point_keys(raw: Any, where: str, what: str) -> None:
    if not isinstance(raw, Mapping):
        _fail(where, f"a mapping of {what}", raw)
    for key, target in _RUN_ONLY_ELSEWHERE.items():
        if key in raw:
            raise ConfigError(f"{where}.{key} is not allowed here; set it once in top-level {target}")
    _check_keys(raw, _AXES, f"{where}.")
    if not raw:
        raise ConfigError(f"{where} is empty; expected {what} {list(_REQUIRED_AXES)}")


def _axis_values(value: Any, where: str) -> list[Any]:
    """A scalar is a one-value axis; a list must be non-empty, flat and without repeats."""
    values = value if isinstance(value, list) else [value]
    if not values:
        _fail(where, "a value or a non-empty list of values", value)
    for item in values:
        if isinstance(item, (list, dict)):
            _fail(where, "a value or a flat list of values", value)
    if len({repr(v) for v in values}) != len(values):
        _fail(where, "a list without repeated values", value)
    return values


def _expand_block(raw: Any, where: str) -> list[RunSpec]:
    """One grid block → its points (seed 0, no limits), bn varying fastest."""
    _check_point_keys(raw, where, "axes")
    missing = [axis for axis in _REQUIRED_AXES if axis not in raw]
    if missing:
        raise ConfigError(f"{where} is missing axis {missing[0]!r}; expected axes {list(_REQUIRED_AXES)}")
    axes = {axis: _axis_values(raw[axis], f"{where}.{axis}") for axis in _AXES if axis in raw}
    return [_spec(dict(zip(axes, combo)), where) for combo in itertools.product(*axes.values())]


def _grid_points(raw: Any, source: str) -> list[tuple[RunSpec, str]]:
    """``grid`` as one block or a list of blocks → (point, where it came from)."""
    if isinstance(raw, Mapping):
        blocks = [(f"{source}: grid", raw)]
    elif isinstance(raw, list) and raw:
        blocks = [(f"{source}: grid[{i}]", block) for i, block in enumerate(raw)]
    else:
        _fail(f"{source}: grid", "a mapping of axes or a non-empty list of them", raw)
    return [(p, where) for where, block in blocks for p in _expand_block(block, where)]


def _run_points(raw: Any, source: str) -> list[tuple[RunSpec, str]]:
    """``runs`` as an explicit non-empty list of run mappings → (point, where)."""
    if not isinstance(raw, list) or not raw:
        _fail(f"{source}: runs", "a non-empty list of run mappings", raw)
    points = []
    for i, item in enumerate(raw):
        where = f"{source}: runs[{i}]"
        _check_point_keys(item, where, "run fields")
        points.append((_spec(item, where), where))
    return points


def _unique_points(located: list[tuple[RunSpec, str]]) -> list[RunSpec]:
    """Keep file order; a point given twice is an error naming both places."""
    first: dict[RunSpec, str] = {}
    for point, where in located:
        if point in first:
            raise ConfigError(
                f"{where} repeats run ({_describe(point)}) already given by "
                f"{first[point].split(': ', 1)[1]}; each grid point must appear once"
            )
        first[point] = where
    return list(first)


def _describe(point: RunSpec) -> str:
    return ", ".join(f"{axis}={getattr(point, axis)}" for axis in _AXES)


def _point_of(run: RunSpec) -> RunSpec:
    return dataclasses.replace(run, seed=0, train_limit=None, val_limit=None)


def _expand(points: list[RunSpec], seeds: list[int] | tuple[int, ...], data: DataOptions) -> tuple[RunSpec, ...]:
    """Seeds outermost, so the whole grid at the first seed is scheduled first."""
    return tuple(
        dataclasses.replace(p, seed=s, train_limit=data.train_limit, val_limit=data.val_limit)
        for s in seeds
        for p in points
    )


# ---------------------------------------------------------------- public API
def parse_config(data: Any, source: str) -> GridConfig:
    """Validate plain data (as read from YAML) into a GridConfig; ``source`` prefixes errors."""
    if not isinstance(data, Mapping):
        _fail(f"{source}: top level", f"a mapping with keys {list(_TOP_LEVEL)}", data)
    _check_keys(data, _TOP_LEVEL, f"{source}: ")
    if "experiment" not in data:
        raise ConfigError(f"{source}: experiment is missing; expected a name like 'seed'")
    experiment = _experiment_name(data["experiment"], f"{source}: experiment")
    if ("grid" in data) == ("runs" in data):
        found = "both" if "grid" in data else "neither"
        raise ConfigError(f"{source}: grid/runs: found {found}; expected exactly one of them")
    located = _grid_points(data["grid"], source) if "grid" in data else _run_points(data["runs"], source)
    points = _unique_points(located)
    seeds = _seeds(data.get("seeds", 0), f"{source}: seeds")
    sections = {name: _parse_section(data.get(name), name, source) for name in _SECTIONS}
    data_options = DataOptions(**sections["data"])
    return GridConfig(
        source=source,
        runs=_expand(points, seeds, data_options),
        data=data_options,
        resources=Resources(**sections["resources"]),
        storage=Storage(experiment=experiment, **sections["storage"]),
        failure=Failure(**sections["failure"]),
        training=Training(**sections["training"]),
    )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)):
            continue  # unhashable or odd keys are rejected later as unknown keys
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file; expected a YAML grid config (see configs/)") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory; expected a YAML grid config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: {at}malformed YAML: {' '.join(str(problem).split())}") from None


def load_config(path: str | Path) -> GridConfig:
    """Read and validate a YAML grid config; every user error is a one-line ConfigError."""
    source = str(path)
    data = _read_yaml(Path(path), source)
    if data is None:
        raise ConfigError(f"{source}: file is empty; expected a mapping with 'experiment' and 'grid' or 'runs'")
    return parse_config(data, source)


# Override field -> key path in the YAML schema.
_OVERRIDE_PATHS: dict[str, tuple[str, str]] = {
    "artifacts": ("storage", "artifacts"),
    "workers_per_trial": ("resources", "workers_per_trial"),
    "cpus_per_worker": ("resources", "cpus_per_worker"),
    "gpus_per_worker": ("resources", "gpus_per_worker"),
    "max_concurrent_trials": ("resources", "max_concurrent_trials"),
    "placement_strategy": ("resources", "placement_strategy"),
    "train_in_trial": ("resources", "train_in_trial"),
    "data_dir": ("data", "dir"),
    "download": ("data", "download"),
    "train_limit": ("data", "train_limit"),
    "val_limit": ("data", "val_limit"),
    "max_retries": ("failure", "max_retries"),
    "channels_last": ("training", "channels_last"),
    "bf16_autocast": ("training", "bf16_autocast"),
    "compile": ("training", "compile"),
}


def _with_epochs(runs: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    """Set every run's epochs; runs that become identical are merged (first kept)."""
    merged: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for run in runs:
        new = {**run, "epochs": epochs}
        key = tuple(sorted(new.items()))
        if key not in seen:
            seen.add(key)
            merged.append(new)
    if len(merged) < len(runs):
        log.info("--epochs %d merged %d runs that became identical", epochs, len(runs) - len(merged))
    return merged


def apply_overrides(cfg: GridConfig, overrides: Overrides) -> GridConfig:
    """Return ``cfg`` with the given overrides, fully re-validated.

    Each value is checked first with the flag's name in the message (``--workers-per-trial
    must be an integer >= 1, got 0``), then the whole config is parsed again.
    """
    raw = cfg.to_dict()
    if overrides.experiment is not None:
        raw["experiment"] = _experiment_name(overrides.experiment, "--experiment")
    for name, (section, key) in _OVERRIDE_PATHS.items():
        value = getattr(overrides, name)
        if value is not None:
            check = _SECTIONS[section][key][0]
            raw[section][key] = check(value, "--" + name.replace("_", "-"))
    if overrides.seeds is not None:
        raw["seeds"] = list(_seeds(list(overrides.seeds), "--seeds"))
    if overrides.epochs is not None:
        raw["runs"] = _with_epochs(raw["runs"], _int_at_least(1)(overrides.epochs, "--epochs"))
    return parse_config(raw, cfg.source)
