"""Exceptions with messages that name the culprit (path, class, key)."""
from __future__ import annotations

__all__ = ["CCDError", "DatasetError", "ConfigError", "CheckpointError", "TeacherError", "DataSetupError",
           "OutputError"]


class CCDError(Exception):
    """Base class of every error ccdlib raises on purpose."""


class DatasetError(CCDError, ValueError):
    """Bad or missing data set files, splits, class names or annotations."""


class ConfigError(CCDError, ValueError):
    """A configuration value out of range, an unknown key, a bad device."""


class CheckpointError(CCDError, ValueError):
    """A checkpoint that does not exist or does not fit the model asked for."""


class TeacherError(CCDError, ValueError):
    """A teacher that cannot be built (unknown architecture, bad checkpoint path)."""


class DataSetupError(CCDError, RuntimeError):
    """The embedded data's sources (Debian packages) cannot be found or fetched."""


class OutputError(CCDError, OSError):
    """Results (or a run's training state) cannot be written: the folder is not writable, the disk is full."""
