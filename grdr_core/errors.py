"""The grdr exception hierarchy.

Every error that grdr raises on purpose derives from ``GrdrError``, so a caller
(the ``grdr-index`` CLI included) can catch that one class::

    GrdrError
    ├── InvalidInputError     bad user input: a missing folder, a bad option value
    ├── ModelLoadError        an encoder could not be loaded by name or from a directory
    ├── VideoDecodeError      one video could not be decoded; carries a manifest status
    ├── IndexExistsError      the output directory exists and overwriting was not requested
    ├── IndexFormatError      an index on disk is missing files, corrupt or of another version
    ├── NothingIndexedError   a build finished without a single indexed video
    └── BuildIncompleteError  a build left work unfinished; running it again resumes it
"""

from __future__ import annotations


class GrdrError(Exception):
    """Base class of every error grdr raises on purpose."""


class InvalidInputError(GrdrError, ValueError):
    """A user-supplied value is invalid."""


class ModelLoadError(GrdrError):
    """An encoder model could not be loaded."""


class VideoDecodeError(GrdrError):
    """One video could not be decoded.

    ``status`` is the manifest status to record for the file (a value of
    ``grdr_schemas.VideoStatus``); the message is the human-readable reason.
    """

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuild from both arguments so the error survives pickling across processes.
        return (type(self), (self.status, str(self)))


class IndexExistsError(GrdrError):
    """The output directory of a build already exists."""


class IndexFormatError(GrdrError):
    """An index directory is incomplete, corrupt or of an unsupported format version."""


class NothingIndexedError(GrdrError):
    """A build indexed no video at all."""


class BuildIncompleteError(GrdrError):
    """A build's map stage or work directory was left unfinished; rerunning resumes it."""
