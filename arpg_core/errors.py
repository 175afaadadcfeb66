"""Typed exceptions for everything a user can trigger."""


class ARPGError(Exception):
    """Base class of every error raised on purpose by arpg_core."""


class ConfigError(ARPGError, ValueError):
    """A config name, dict or value that does not describe a valid component."""


class CheckpointError(ARPGError):
    """A checkpoint that cannot be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path or hub file does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A torch pickle that needs arbitrary code to unpickle; refused."""


class CorruptCheckpointError(CheckpointError):
    """A file that is truncated or not a checkpoint at all."""


class ShapeMismatchError(CheckpointError):
    """Parameter names or shapes differ between a checkpoint and the config."""


class HubUnavailableError(CheckpointError):
    """A hf:// source that cannot be fetched (offline, unknown repo or file)."""


class SamplingError(ARPGError, ValueError):
    """Sampling options or known tokens that cannot be honoured."""


class DataError(ARPGError):
    """A data set that cannot be built or read."""
