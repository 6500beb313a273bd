"""Errors meant for people: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (unknown id, bad override, missing data...): the message names the fix."""


class TrainingDiverged(UserError):
    """A non-finite loss or parameter appeared during training."""
