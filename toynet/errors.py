"""User-facing errors: one clear line, no traceback.

Every error a user can cause (bad config, flag, data file, weights file, store path)
is raised as a :class:`ToyNetError` subclass whose message names what was wrong and
what was expected. Entry points catch :class:`ToyNetError`, print ``error: <message>``
to stderr and exit with status 2.
"""

from __future__ import annotations


class ToyNetError(Exception):
    """Base class of errors caused by user input; the message is shown as is."""


class ConfigError(ToyNetError):
    """A configuration value, CLI flag or run spec is invalid."""


class DataError(ToyNetError):
    """A dataset is missing, truncated or corrupt."""


class WeightsError(ToyNetError):
    """A weights or checkpoint file is missing, corrupt or fails verification."""


class DeviceError(ToyNetError):
    """The requested device is not available."""
