"""Errors a user can act on. The CLI prints their message without a traceback."""


class CosmicAIError(Exception):
    """An expected failure with an actionable message (what is wrong, where, how to fix it)."""

    exit_code = 1


class DataFormatError(CosmicAIError):
    """A partition or dataset file is missing, corrupt, truncated, or has wrong shapes/dtypes."""


class CheckpointError(CosmicAIError):
    """A model checkpoint cannot be loaded safely or does not match the model."""
