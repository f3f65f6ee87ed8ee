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
