"""Errors that carry a message a user can act on.

Every error raised for bad input names the file, the field and what was expected.
The command line prints ``error: <message>`` and exits with status 2, no traceback.
"""


class VfnbError(Exception):
    """Base class: a problem the user can fix; the message says where and what."""


class DatasetError(VfnbError):
    """A dataset file or folder is missing, malformed or inconsistent."""


class CheckpointError(VfnbError):
    """A checkpoint cannot be read safely or does not match the model."""


class ParamsError(VfnbError):
    """A parameter file or value is wrong."""
