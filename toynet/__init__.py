"""ToyNet in pure PyTorch: model, datasets, batched transforms, training loop.

Nothing in this package imports Ray or pyarrow; ``orchestration`` builds on it.

Only the torch-free names (errors, ``RunSpec``) load with the package; the rest load
on first use. Processes that never train (grid.py on a bad config, Ray Tune's
per-trial drivers) then skip ``import torch``: 1.5–3 CPU-s and ~400 MB resident each.
"""

from importlib import import_module

from toynet.errors import ConfigError, DataError, DeviceError, ToyNetError, WeightsError
from toynet.spec import DATASETS, TRANSFORMS, RunSpec

# name → module that defines it, imported on first access.
_LAZY = {
    "DataArrays": "toynet.data",
    "load_dataset": "toynet.data",
    "ToyNet": "toynet.model",
    "count_parameters": "toynet.model",
    "build_transforms": "toynet.transforms",
    **{name: "toynet.train" for name in ("FitResult", "Hooks", "TrainOptions", "evaluate", "fit")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toynet' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "TRANSFORMS",
    "ConfigError",
    "DataError",
    "DeviceError",
    "FitResult",
    "Hooks",
    "RunSpec",
    "ToyNet",
    "ToyNetError",
    "TrainOptions",
    "WeightsError",
    "build_transforms",
    "count_parameters",
    "evaluate",
    "fit",
    "load_dataset",
]
