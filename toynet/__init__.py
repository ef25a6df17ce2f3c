"""ToyNet in pure PyTorch: model, datasets, batched transforms, training loop.

Nothing in this package imports Ray or pyarrow; ``orchestration`` builds on it.
"""

from toynet.data import DataArrays, load_dataset
from toynet.errors import ConfigError, DataError, DeviceError, ToyNetError, WeightsError
from toynet.model import ToyNet, count_parameters
from toynet.spec import DATASETS, TRANSFORMS, RunSpec
from toynet.transforms import build_transforms

# toynet.train is imported lazily so that `python -m toynet.train` runs it only once.
_TRAIN_NAMES = ("FitResult", "Hooks", "TrainOptions", "evaluate", "fit")


def __getattr__(name: str):
    if name in _TRAIN_NAMES:
        from toynet import train

        return getattr(train, name)
    raise AttributeError(f"module 'toynet' has no attribute {name!r}")

__all__ = [
    "DATASETS",
    "TRANSFORMS",
    "ConfigError",
    "DataArrays",
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
