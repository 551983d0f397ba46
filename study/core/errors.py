"""Errors a user can cause and fix: the CLI prints the message (no traceback) and exits 2."""


class UserError(Exception):
    """A mistake in the user's input; the message is one sentence naming the file and the fix."""


class DataError(UserError):
    """A data set is missing, incomplete or malformed."""


class CheckpointError(UserError):
    """A model checkpoint is missing, corrupt or of the wrong kind."""


class SpaceError(UserError):
    """A search-space file is invalid."""
