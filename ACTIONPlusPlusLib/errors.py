"""Exceptions whose messages name the problem and the file or case it is about."""


class ActionError(Exception):
    """Base class of every error the trainer raises on purpose."""


class DataError(ActionError, ValueError):
    """Bad input data or job: wrong shapes/geometry, label values, NaNs, missing files..."""


class TrainingError(ActionError, RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the last good checkpoint is left intact."""


class ModelFileError(ActionError, ValueError):
    """A model or checkpoint file that is missing, corrupt, or made for another preset."""
