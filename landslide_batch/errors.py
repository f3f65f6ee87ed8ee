"""Exceptions that carry a user-facing message (what was expected, what was found, where)."""


class LandslideBatchError(Exception):
    """Base class; the CLI prints these without a traceback and exits non-zero."""

    exit_code = 2


class InputError(LandslideBatchError):
    """An input file, array or band layout is not what the job needs."""


class ConfigError(LandslideBatchError):
    """A job, ensemble or training config is malformed or inconsistent."""


class ModelError(LandslideBatchError):
    """A model folder, card or checkpoint is missing, inconsistent or incompatible."""


class OutputLockedError(LandslideBatchError):
    """Another job is writing to the same output folder."""

    exit_code = 3


class DownloadError(LandslideBatchError):
    """A download failed: unreachable server, HTTP error, interrupted transfer or checksum mismatch."""


class UnitsMismatchError(InputError):
    """The scene's values are not in the units a model was trained on (off by orders of magnitude)."""


class DiskFullError(LandslideBatchError):
    """The output folder's file system has (or had, mid-job) too little free space; re-running resumes."""

    exit_code = 4


class DeviceError(LandslideBatchError):
    """The job asks for a device (a CUDA GPU) that torch cannot use where the predictor runs."""
