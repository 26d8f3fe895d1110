"""grdr: text-to-video retrieval with generative recall and dense reranking.

This package is the library. It never imports from ``grdr_pipelines`` or ``grdr_jobs``,
and importing it loads no decoder, model or engine: submodules are imported on use.
"""

from grdr_core.errors import (
    GrdrError,
    IndexExistsError,
    IndexFormatError,
    InvalidInputError,
    ModelLoadError,
    NothingIndexedError,
    VideoDecodeError,
)

__all__ = [
    "GrdrError",
    "IndexExistsError",
    "IndexFormatError",
    "InvalidInputError",
    "ModelLoadError",
    "NothingIndexedError",
    "VideoDecodeError",
]
