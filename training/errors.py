"""The training package's exception family. Both are ValueErrors: they report bad input, not bugs."""


class TrainingError(Exception):
    """Base class of every error raised on purpose by fedswarm's training package."""


class TaskError(TrainingError, ValueError):
    """A task cannot be loaded: unknown name, bad CSV, missing label column, bad partition, import failure."""


class CheckpointError(TrainingError, ValueError):
    """A checkpoint on disk is corrupt, torn (the pair does not match) or of an unknown format."""
