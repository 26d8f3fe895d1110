"""Parquet manifest: one row per discovered input file, failed files included."""

from __future__ import annotations

import enum

import pyarrow as pa

MANIFEST_SCHEMA_VERSION = 1


class VideoStatus(str, enum.Enum):
    """Outcome of indexing one file, stored in the manifest's ``status`` column."""

    OK = "ok"
    EMPTY_FILE = "empty_file"  # zero bytes on disk
    READ_ERROR = "read_error"  # the file could not be opened or read
    NO_VIDEO_STREAM = "no_video_stream"  # a container without a video track
    DECODE_ERROR = "decode_error"  # every decoder failed on the file
    TIMEOUT = "timeout"  # decoding ran past the wall-clock limit
    DECODER_CRASHED = "decoder_crashed"  # the decoder process died (abort, segfault)
    ENCODE_ERROR = "encode_error"  # frames decoded but the image encoder failed


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # POSIX path relative to the input root
        pa.field("uri", pa.string(), nullable=False),  # absolute path of the source file
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),  # see grdr_core.discovery
        pa.field("status", pa.string(), nullable=False),  # a VideoStatus value
        pa.field("error", pa.string()),  # null when status is "ok"
        pa.field("decoder", pa.string()),  # "decord" or "pyav"; null when decoding failed
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),  # display width, rotation applied
        pa.field("height", pa.int32()),  # display height, rotation applied
        pa.field("num_frames", pa.int64()),  # frames in the stream, when known
        pa.field("frames_sampled", pa.int32()),
        pa.field("ordinal", pa.int64()),  # record in the shard store; null when not ok
    ],
    metadata={"grdr.manifest_schema_version": str(MANIFEST_SCHEMA_VERSION)},
)
