"""Parquet manifest: one row per discovered input file, failed files included."""

from __future__ import annotations

import enum

import pyarrow as pa

# Version 2 added the columns uri_bytes, coded_width, coded_height and rotation, and the
# statuses unknown_format, truncated, no_frames and too_large. Readers fill the added
# columns of version 1 parts with nulls.
MANIFEST_SCHEMA_VERSION = 2


class VideoStatus(str, enum.Enum):
    """Outcome of indexing one file, stored in the manifest's ``status`` column."""

    OK = "ok"
    EMPTY_FILE = "empty_file"  # zero bytes on disk
    READ_ERROR = "read_error"  # the file could not be opened or read, or is not a regular file
    UNKNOWN_FORMAT = "unknown_format"  # not a container format FFmpeg or grdr recognises (text, random bytes)
    TRUNCATED = "truncated"  # the container declares more bytes than the file has (an incomplete copy)
    NO_VIDEO_STREAM = "no_video_stream"  # a container without a video track
    NO_FRAMES = "no_frames"  # a video stream in which no frame decodes
    TOO_LARGE = "too_large"  # more pixels per frame or a longer duration than the decode limits allow
    DECODE_ERROR = "decode_error"  # every decoder failed on the file
    TIMEOUT = "timeout"  # decoding ran past the wall-clock limit
    DECODER_CRASHED = "decoder_crashed"  # the decoder process died (abort, segfault)
    ENCODE_ERROR = "encode_error"  # frames decoded but the image encoder failed
    INVALID_EMBEDDING = "invalid_embedding"  # a precomputed embedding that is null, not finite or all zeros


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # POSIX path relative to the input root
        pa.field("uri", pa.string(), nullable=False),  # absolute path of the source file, valid UTF-8
        # The raw path bytes when the path is not valid UTF-8, whose bytes ``uri`` and
        # ``video_id`` show as \xNN escapes; null otherwise.
        pa.field("uri_bytes", pa.binary()),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),  # see grdr_core.discovery
        pa.field("status", pa.string(), nullable=False),  # a VideoStatus value
        pa.field("error", pa.string()),  # null when status is "ok"
        pa.field("decoder", pa.string()),  # "decord" or "pyav"; null when decoding failed
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),  # display width, rotation applied
        pa.field("height", pa.int32()),  # display height, rotation applied
        pa.field("coded_width", pa.int32()),  # width of the stored picture, before aspect ratio and rotation
        pa.field("coded_height", pa.int32()),
        pa.field("rotation", pa.int32()),  # display rotation in degrees counterclockwise: 0, 90, 180 or 270
        pa.field("num_frames", pa.int64()),  # frames in the stream, when known
        pa.field("frames_sampled", pa.int32()),
        pa.field("ordinal", pa.int64()),  # record in the shard store; null when not ok
    ],
    metadata={"grdr.manifest_schema_version": str(MANIFEST_SCHEMA_VERSION)},
)
