"""Errors a user can act on. The CLI prints them without a traceback."""


class HarnessError(Exception):
    """Bad input or a missing resource: the message says what, where, and what to do."""


class SuiteError(HarnessError):
    """A suite file that does not validate."""


class DataError(HarnessError):
    """Missing or malformed benchmark data."""


class CheckpointError(HarnessError):
    """A checkpoint that is missing or does not fit the model."""


class TrainingError(HarnessError):
    """Training that cannot go on (e.g. a non-finite loss)."""
