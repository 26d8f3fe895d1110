"""Decode videos into a few RGB frames sampled uniformly in time.

``decode_video`` works in the calling process. It checks the file's container for
truncation, probes it with PyAV, reads the sampled frames with decord and falls back to
PyAV when decord cannot open, count or decode the file. Failures raise
``VideoDecodeError`` with a manifest status.

``DecodePool`` runs a decode function in worker processes, so that a decoder that
aborts, segfaults or hangs on one file costs that file only. It returns every per-file
failure as a ``DecodeResult`` with a status instead of raising it, and replaces each
worker after a fixed number of files so that leaks cannot accumulate.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import stat
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import av
import decord
import numpy as np
from pebble import ProcessExpired, ProcessFuture, ProcessPool

from grdr_core import remote
from grdr_core.containers import find_truncation, sniff_container
from grdr_core.errors import InvalidInputError, VideoDecodeError
from grdr_schemas import VideoStatus

logger = logging.getLogger(__name__)

DECORD = "decord"
PYAV = "pyav"

# Workers are forked from a forkserver, a fresh interpreter started with exec, so they
# never inherit the threads or locks of a parent that has torch loaded, as plain fork
# would. Replacing a crashed worker also costs less than with spawn: about 0.3 s against
# 0.45 s including imports, measured once with pebble 5.2.3 on a 2-core Linux VM.
_MP_START_METHOD = "forkserver"

# 8K UHD (7680 x 4320) covers the common camera and distribution formats. A larger
# picture is usually a panorama or a broken header, and one decoded frame of it takes
# more than 50 MB.
DEFAULT_MAX_PIXELS = 7680 * 4320
# Four hours covers feature films and long lectures. Longer files are mostly stream or
# surveillance recordings, and the PyAV fallback decodes a file from its start.
DEFAULT_MAX_DURATION_S = 4 * 3600.0
# Files a worker process decodes before the pool replaces it, so that memory or file
# handles leaked by a decoder cannot pile up over a long build. A replacement costs
# about 0.3 s, a few files' worth of decoding.
DEFAULT_TASKS_PER_WORKER = 200


@dataclass(frozen=True)
class DecodeConfig:
    """Frame sampling and resource limits for decoding one video."""

    num_frames: int = 12  # frames sampled uniformly in time over the video; fewer when it has fewer
    short_side: int = 224  # pixels of the shorter display side of output frames; never upscaled
    timeout_s: float = 120.0  # wall-clock seconds per file, enforced only by DecodePool
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # coded width x height above which a file is too_large; None: no limit
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S  # seconds above which a file is too_large; None: no limit

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise InvalidInputError(f"num_frames must be an integer >= 1, got {self.num_frames!r}")
        if isinstance(self.short_side, bool) or not isinstance(self.short_side, int) or self.short_side < 1:
            raise InvalidInputError(f"short_side must be an integer >= 1, got {self.short_side!r}")
        if not _is_positive_number(self.timeout_s):
            raise InvalidInputError(f"timeout_s must be a number of seconds > 0, got {self.timeout_s!r}")
        if self.max_pixels is not None and (
            isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1
        ):
            raise InvalidInputError(f"max_pixels must be an integer >= 1 or None, got {self.max_pixels!r}")
        if self.max_duration_s is not None and not _is_positive_number(self.max_duration_s):
            raise InvalidInputError(f"max_duration_s must be a number of seconds > 0 or None, got {self.max_duration_s!r}")


def _is_positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames of one video and the facts about its video stream."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB, C-contiguous, display orientation, 1 <= n <= num_frames
    decoder: str  # "decord" or "pyav"
    duration_s: float | None
    fps: float | None  # average frame rate
    width: int  # display width of the source: pixel aspect ratio and rotation applied, before scaling
    height: int  # display height of the source, before scaling
    num_frames: int | None  # frames in the video stream, when known
    coded_width: int = 0  # width of the stored picture, before pixel aspect ratio and rotation
    coded_height: int = 0
    rotation: int = 0  # degrees counterclockwise the stored picture was turned for display
    # Presentation time of each sampled frame in seconds after the first frame. A frame
    # that stays on screen through several sampling times appears once for each.
    timestamps_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class DecodeResult:
    """Outcome of decoding one input of ``DecodePool.imap``."""

    index: int  # position in the input sequence
    path: str
    video: DecodedVideo | None  # None unless status is "ok"
    status: str  # a VideoStatus value
    error: str | None  # None when status is "ok"


@dataclass(frozen=True)
class _StreamProbe:
    """Header facts about the video stream of a file, and the rotation of its first frame."""

    stream_index: int
    coded_width: int
    coded_height: int
    display_width: int
    display_height: int
    rotation: int  # degrees counterclockwise to turn a decoded frame for display: 0, 90, 180 or 270
    fps: float | None
    duration_s: float | None
    num_frames: int | None


@dataclass(frozen=True)
class _SampledFrames:
    frames: np.ndarray  # (n, H, W, 3) uint8, display orientation
    frame_count: int  # frames (or packets) in the stream
    timestamps_s: tuple[float, ...]  # per sampled frame, seconds after the first frame
    duration_s: float | None


# --- sampling and sizes -------------------------------------------------------------


def sample_frame_indices(frame_count: int, num_samples: int) -> list[int]:
    """Return ``min(num_samples, frame_count)`` distinct, increasing frame indices.

    The video is cut into that many equal segments and the frame at the centre of each
    segment is picked, the usual uniform sampling of video-text retrieval models. This
    assumes a constant frame rate. ``sample_frame_times`` follows the real timestamps.
    """
    if frame_count < 1 or num_samples < 1:
        raise ValueError(f"frame_count and num_samples must be >= 1, got {frame_count} and {num_samples}")
    k = min(num_samples, frame_count)
    return ((np.arange(k) + 0.5) * frame_count / k).astype(np.int64).tolist()


def sampling_times(start_s: float, end_s: float, count: int) -> np.ndarray:
    """Return the centres of ``count`` equal segments of ``[start_s, end_s)``, in seconds."""
    return start_s + (np.arange(count) + 0.5) * (end_s - start_s) / count


def sample_frame_times(timestamps_s: np.ndarray, end_s: float, num_samples: int) -> list[int] | None:
    """Return the indices of the frames on screen at ``min(num_samples, n)`` times spread uniformly over the video.

    ``timestamps_s`` are the presentation times of all ``n`` frames in presentation
    order, and ``end_s`` is when the last frame leaves the screen. The span from the
    first frame to ``end_s`` is cut into equal segments, and the frame shown at the
    centre of each is picked. At a constant frame rate that is ``sample_frame_indices``.
    A frame that stays on screen through several centres, as in a timestamp gap, is
    picked for each of them, so the indices do not decrease but may repeat.

    Returns None when the timestamps cannot place frames in time: not finite, not in
    order, or all equal although there are several frames.
    """
    times = np.asarray(timestamps_s, dtype=np.float64)
    count = len(times)
    if count < 1 or num_samples < 1:
        raise ValueError(f"timestamps and num_samples must not be empty, got {count} and {num_samples}")
    if not np.all(np.isfinite(times)) or not np.isfinite(end_s) or np.any(np.diff(times) < 0):
        return None
    if count > 1 and times[-1] <= times[0]:
        return None
    end_s = max(end_s, times[-1])
    if end_s <= times[0]:  # one frame without a duration
        return [0]

    targets = sampling_times(times[0], end_s, min(num_samples, count))
    # A thousandth of the mean frame interval absorbs rounding in timestamps that
    # decoders give as float32, so a centre that falls on a frame's start picks that frame.
    tolerance = 1e-3 * (end_s - times[0]) / count
    indices = np.searchsorted(times, targets + tolerance, side="right") - 1
    return np.clip(indices, 0, count - 1).astype(np.int64).tolist()


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Return (width, height) scaled so that the shorter side is ``short_side``, aspect kept.

    Sizes whose shorter side is already at most ``short_side`` are returned unchanged.
    """
    shorter = min(width, height)
    if shorter <= short_side:
        return width, height
    scale = short_side / shorter
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


# --- in-process decoding ------------------------------------------------------------


def decode_video(path: str, config: DecodeConfig) -> DecodedVideo:
    """Decode ``config.num_frames`` RGB frames of the video at ``path``, sampled uniformly in time.

    Frames are scaled so that their shorter display side is ``config.short_side`` and
    turned upright according to the file's display matrix. decord reads them first.
    PyAV reads them when decord fails, and one INFO log line gives decord's error.

    Raises ``VideoDecodeError`` whose ``status`` is a ``VideoStatus`` value: EMPTY_FILE,
    READ_ERROR, UNKNOWN_FORMAT, TRUNCATED, NO_VIDEO_STREAM, NO_FRAMES, TOO_LARGE or
    DECODE_ERROR. ``config.timeout_s`` is not enforced here. Run the call in a
    ``DecodePool`` for that.
    """
    path = os.fspath(path)
    _check_file(path)
    probe = _probe_stream(path, config)
    out_width, out_height = scaled_size(probe.display_width, probe.display_height, config.short_side)

    try:
        sampled = _read_with_decord(path, probe, out_width, out_height, config)
        decoder = DECORD
    except VideoDecodeError:
        raise
    # decord raises DECORDError, RuntimeError or ValueError depending on the stage that
    # failed. Every one of them has the same remedy, so any exception falls back to PyAV.
    except Exception as exc:
        decord_error = _first_line(f"{type(exc).__name__}: {exc}")
        logger.info("decord failed to decode %s (%s); decoding with PyAV", path, decord_error)
        sampled = _read_with_pyav(path, probe, out_width, out_height, config, decord_error)
        decoder = PYAV

    return DecodedVideo(
        frames=sampled.frames,
        decoder=decoder,
        duration_s=sampled.duration_s,
        fps=probe.fps,
        width=probe.display_width,
        height=probe.display_height,
        num_frames=sampled.frame_count,
        coded_width=probe.coded_width,
        coded_height=probe.coded_height,
        rotation=probe.rotation,
        timestamps_s=sampled.timestamps_s,
    )


def _check_file(path: str) -> None:
    """Reject a file that is missing, special, empty or truncated, before FFmpeg opens it."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise VideoDecodeError(VideoStatus.READ_ERROR.value, f"failed to read {path}: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        # Opening a FIFO would block until a writer appears, and a device may never end.
        raise VideoDecodeError(VideoStatus.READ_ERROR.value, f"{path} is not a regular file (mode {stat.filemode(info.st_mode)})")
    if info.st_size == 0:
        raise VideoDecodeError(VideoStatus.EMPTY_FILE.value, f"{path} is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            truncation = find_truncation(f, info.st_size)
    except OSError as exc:
        raise VideoDecodeError(VideoStatus.READ_ERROR.value, f"failed to read {path}: {exc}") from exc
    if truncation is not None:
        raise VideoDecodeError(
            VideoStatus.TRUNCATED.value, f"{path} is truncated: {truncation}; it may be an incomplete download or copy"
        )


def _open_container(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except av.error.InvalidDataError as exc:
        format_name = _sniff_file(path)
        if format_name is None:
            raise VideoDecodeError(
                VideoStatus.UNKNOWN_FORMAT.value,
                f"{path} is not in a video container format that FFmpeg recognises ({exc.strerror}); "
                f"its first bytes are {_head_preview(path)}",
            ) from exc
        raise VideoDecodeError(
            VideoStatus.DECODE_ERROR.value, f"FFmpeg failed to open {path}, which starts like {format_name}: {exc}"
        ) from exc
    except av.error.FFmpegError as exc:
        # PyAV's OS-level errors (file not found, permission denied) also derive from OSError.
        status = VideoStatus.READ_ERROR if isinstance(exc, OSError) else VideoStatus.DECODE_ERROR
        raise VideoDecodeError(status.value, f"FFmpeg failed to open {path}: {exc}") from exc


def _read_head(path: str, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _sniff_file(path: str) -> str | None:
    return sniff_container(_read_head(path))


def _head_preview(path: str) -> str:
    return repr(_read_head(path, 16))


def _select_video_stream(container: av.container.InputContainer, path: str) -> av.VideoStream:
    # A cover image in an audio file is a one-frame "video" stream, not a video.
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        audio = len(container.streams.audio)
        detail = f"; it has {audio} audio stream{'s' if audio != 1 else ''}" if audio else ""
        raise VideoDecodeError(VideoStatus.NO_VIDEO_STREAM.value, f"{path} has no video stream{detail}")
    best = container.streams.best("video")
    return best if best in moving else moving[0]


def _check_pixels(path: str, width: int, height: int, config: DecodeConfig) -> None:
    if config.max_pixels is not None and width * height > config.max_pixels:
        raise VideoDecodeError(
            VideoStatus.TOO_LARGE.value,
            f"{path} has {width}x{height} = {width * height} pixels per frame, more than the limit of "
            f"{config.max_pixels} (max_pixels); raise the limit to index it",
        )


def _check_duration(path: str, duration_s: float | None, config: DecodeConfig) -> None:
    if config.max_duration_s is not None and duration_s is not None and duration_s > config.max_duration_s:
        raise VideoDecodeError(
            VideoStatus.TOO_LARGE.value,
            f"{path} lasts {duration_s:.1f} s, longer than the limit of {config.max_duration_s:g} s "
            "(max_duration_s); raise the limit to index it",
        )


def _probe_stream(path: str, config: DecodeConfig) -> _StreamProbe:
    """Read the video stream's header and decode its first frame to learn the rotation.

    The size and duration limits are checked on the header first, so that an
    oversized file is rejected before any of its frames is decoded.
    """
    with _open_container(path) as container:
        stream = _select_video_stream(container, path)
        if stream.codec_context is None:
            raise VideoDecodeError(
                VideoStatus.DECODE_ERROR.value, f"FFmpeg has no decoder for the video codec of {path}"
            )
        coded_width = stream.codec_context.width
        coded_height = stream.codec_context.height
        if coded_width > 0 and coded_height > 0:
            _check_pixels(path, coded_width, coded_height, config)
        duration_s = _header_duration(container, stream)
        _check_duration(path, duration_s, config)

        first = _first_frame(container, stream, path)
        if coded_width < 1 or coded_height < 1:
            # Some containers leave the size to the codec's first frame.
            coded_width, coded_height = first.width, first.height
            _check_pixels(path, coded_width, coded_height, config)

        rotation = _normalize_rotation(first.rotation, path)
        width, height = coded_width, coded_height
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        if sar is not None and sar > 0 and sar != 1:
            width = max(1, round(width * sar))
        if rotation in (90, 270):
            width, height = height, width

        return _StreamProbe(
            stream_index=stream.index,
            coded_width=coded_width,
            coded_height=coded_height,
            display_width=width,
            display_height=height,
            rotation=rotation,
            fps=float(stream.average_rate) if stream.average_rate else None,
            duration_s=duration_s,
            num_frames=stream.frames if stream.frames > 0 else None,
        )


def _first_frame(container: av.container.InputContainer, stream: av.VideoStream, path: str) -> av.VideoFrame:
    # PyAV 18 reports the display matrix of a decoded frame as VideoFrame.rotation, in
    # degrees counterclockwise. Its stream objects have no such attribute.
    first_error: str | None = None
    packets = 0
    for packet in container.demux(stream):
        if packet.size:
            packets += 1
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            first_error = first_error or str(exc)
            continue
        if frames:
            return frames[0]
    if packets == 0:
        reason = "its video stream has no packets"
    else:
        reason = f"all {packets} packets of its video stream failed to decode (first FFmpeg error: {first_error or 'none'})"
    raise VideoDecodeError(VideoStatus.NO_FRAMES.value, f"no frame of {path} could be decoded: {reason}")


def _normalize_rotation(degrees: float, path: str) -> int:
    quarter_turns = round(degrees / 90)
    if abs(degrees - 90 * quarter_turns) > 1e-3:
        logger.warning(
            "%s has a display rotation of %.1f degrees; rounding it to %d", path, degrees, 90 * quarter_turns
        )
    return (90 * quarter_turns) % 360


def _header_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


# --- decord -------------------------------------------------------------------------


@contextlib.contextmanager
def _decord_reader(path: str, out_width: int, out_height: int) -> Iterator[decord.VideoReader]:
    if _is_utf8(path):
        yield decord.VideoReader(path, ctx=decord.cpu(0), width=out_width, height=out_height, num_threads=1)
        return
    # decord 0.6.0 encodes paths as strict UTF-8, which fails on a name that is not
    # valid UTF-8. Linux also names an open file /proc/self/fd/N, which is ASCII.
    with open(path, "rb") as f:
        alias = f"/proc/self/fd/{f.fileno()}"
        if not os.path.exists(alias):
            raise RuntimeError(f"decord cannot open {path!r}: its name is not valid UTF-8 and {alias} does not exist")
        yield decord.VideoReader(alias, ctx=decord.cpu(0), width=out_width, height=out_height, num_threads=1)


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_with_decord(
    path: str, probe: _StreamProbe, out_width: int, out_height: int, config: DecodeConfig
) -> _SampledFrames:
    """Read the sampled frames with decord, at the times its frame timestamps give.

    decord 0.6.0 applies the stream's rotation itself, read from the ``rotate`` tag or the
    display matrix. Its ``width`` and ``height`` are those of the rotated output. So the
    frames come back upright at the display size and must not be rotated again.
    """
    # NOTE: this relies on decord's own rotation, which the tests compare with the PyAV
    # path at 90, 180 and 270 degrees. A decord build that stops rotating would return
    # sideways frames here.
    with _decord_reader(path, out_width, out_height) as reader:
        frame_count = len(reader)
        if frame_count < 1:
            raise RuntimeError(f"decord counted {frame_count} frames")

        # (n, 2) float32 start and end times in seconds, in presentation order.
        spans = reader.get_frame_timestamp(np.arange(frame_count)).astype(np.float64)
        starts = spans[:, 0]
        end_s = float(spans[-1, 1])
        duration_s = probe.duration_s if probe.duration_s is not None else end_s - float(starts[0])
        _check_duration(path, duration_s, config)
        indices = sample_frame_times(starts, end_s, config.num_frames)
        if indices is None:
            logger.info("%s: decord's frame timestamps are unusable; sampling by frame index", path)
            indices = sample_frame_indices(frame_count, config.num_frames)
        frames = reader.get_batch(indices).asnumpy()

    expected_shape = (len(indices), out_height, out_width, 3)
    if frames.shape != expected_shape or frames.dtype != np.uint8:
        raise RuntimeError(
            f"decord returned {frames.dtype} frames of shape {frames.shape}, expected uint8 {expected_shape}"
        )
    timestamps = tuple(float(starts[i] - starts[0]) for i in indices)
    return _SampledFrames(np.ascontiguousarray(frames), frame_count, timestamps, duration_s)


# --- PyAV ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _PacketTiming:
    count: int  # packets that carry data
    starts_s: np.ndarray | None  # sorted presentation times in seconds; None when a packet has no timestamp
    end_s: float | None  # when the last frame leaves the screen


def _read_with_pyav(
    path: str,
    probe: _StreamProbe,
    out_width: int,
    out_height: int,
    config: DecodeConfig,
    decord_error: str,
) -> _SampledFrames:
    """Read the sampled frames with PyAV.

    One demuxing pass reads the packet timestamps first. Frames are then picked by
    their presentation times or, when packets lack timestamps, by their position in
    presentation order. Only the sampled frames are converted and kept, so memory stays
    at ``num_frames`` frames.
    """
    timing = _packet_timing(path, probe.stream_index)
    if timing.count < 1:
        raise VideoDecodeError(VideoStatus.NO_FRAMES.value, f"the video stream of {path} has no packets")
    duration_s = probe.duration_s
    if duration_s is None and timing.starts_s is not None and timing.end_s is not None:
        duration_s = timing.end_s - float(timing.starts_s[0])
    _check_duration(path, duration_s, config)

    if timing.starts_s is not None and timing.end_s is not None and timing.end_s > timing.starts_s[0]:
        start = float(timing.starts_s[0])
        targets = sampling_times(start, timing.end_s, min(config.num_frames, timing.count))
        tolerance = 1e-3 * (timing.end_s - start) / timing.count
        frames, times, first_error = _decode_frames_at_times(path, probe, targets + tolerance, out_width, out_height)
        timestamps = tuple(t - start for t in times)
    else:
        frames, first_error = _decode_frames_by_position(path, probe, timing.count, out_width, out_height, config.num_frames)
        timestamps = ()

    if not frames:
        raise VideoDecodeError(
            VideoStatus.DECODE_ERROR.value,
            f"no frame of {path} could be decoded (decord: {decord_error}, PyAV: {first_error or 'no frames'})",
        )
    if first_error is not None:
        logger.info("%s: PyAV skipped packets that failed to decode (first error: %s)", path, first_error)

    batch = np.stack(frames)
    if probe.rotation:
        batch = np.rot90(batch, k=probe.rotation // 90, axes=(1, 2))
    return _SampledFrames(np.ascontiguousarray(batch), timing.count, timestamps, duration_s)


def _packet_timing(path: str, stream_index: int) -> _PacketTiming:
    """Demux the video stream once and return its packet count and presentation times."""
    starts: list[int] = []
    missing_pts = False
    last_end: int | None = None
    with _open_container(path) as container:
        stream = container.streams[stream_index]
        for packet in container.demux(stream):
            if packet.size == 0:  # the empty packet at the end that flushes the decoder
                continue
            if packet.pts is None:
                missing_pts = True
                starts.append(0)
                continue
            starts.append(packet.pts)
            if packet.duration:
                end = packet.pts + packet.duration
                last_end = end if last_end is None else max(last_end, end)
        time_base = stream.time_base

    if missing_pts or not starts or not time_base:
        return _PacketTiming(len(starts), None, None)
    ticks = np.sort(np.asarray(starts, dtype=np.int64))
    if last_end is not None and last_end > ticks[-1]:
        end = last_end
    else:  # the container gives no packet durations
        end = int(ticks[-1]) + _typical_interval(ticks)
    return _PacketTiming(len(ticks), ticks.astype(np.float64) * float(time_base), float(end * time_base))


def _typical_interval(ticks: np.ndarray) -> int:
    """Return the median positive interval between timestamps, or 0 for a single frame."""
    gaps = np.diff(ticks)
    gaps = gaps[gaps > 0]
    return int(np.median(gaps)) if len(gaps) else 0


def _decode_frames_at_times(
    path: str, probe: _StreamProbe, targets_s: np.ndarray, out_width: int, out_height: int
) -> tuple[list[np.ndarray], list[float], str | None]:
    """Decode the frames on screen at ``targets_s`` (ascending seconds) as RGB, not yet rotated.

    The frame on screen at a time is the last one that starts at or before it. A packet
    that fails to decode is skipped, so the frame before it stays on screen longer, as
    in a player. Returns the frames, their presentation times and the first FFmpeg error.
    """
    # Frames are converted before rotation, so a quarter turn swaps the target size.
    if probe.rotation in (90, 270):
        out_width, out_height = out_height, out_width

    frames: list[np.ndarray] = []
    times: list[float] = []
    previous: tuple[av.VideoFrame, float] | None = None
    converted: tuple[av.VideoFrame, np.ndarray] | None = None

    def take(frame: av.VideoFrame, time_s: float) -> None:
        nonlocal converted
        if converted is None or converted[0] is not frame:
            # rgb24 drops alpha and expands grey, so every source comes out as 3 channels.
            converted = (frame, frame.to_ndarray(width=out_width, height=out_height, format="rgb24"))
        frames.append(converted[1])
        times.append(time_s)

    errors: list[str] = []
    with contextlib.closing(_decodable_frames(path, probe, errors)) as decoded_frames:
        for frame in decoded_frames:
            time_s = frame.time
            if time_s is None:  # a frame without a timestamp keeps the previous frame's time
                time_s = previous[1] if previous is not None else 0.0
            while len(frames) < len(targets_s) and targets_s[len(frames)] < time_s:
                # Times before the first decodable frame get that frame.
                take(*(previous or (frame, time_s)))
            previous = (frame, time_s)
            if len(frames) == len(targets_s):
                return frames, times, _first(errors)
    while previous is not None and len(frames) < len(targets_s):
        take(*previous)
    return frames, times, _first(errors)


def _decodable_frames(path: str, probe: _StreamProbe, errors: list[str]) -> Iterator[av.VideoFrame]:
    """Yield the probed stream's frames as the decoder outputs them, skipping packets that fail to decode.

    Each failure's FFmpeg message is appended to ``errors``. Close the generator to close
    the file early.
    """
    with _open_container(path) as container:
        stream = container.streams[probe.stream_index]
        stream.codec_context.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                packet_frames = packet.decode()
            except av.error.FFmpegError as exc:
                errors.append(str(exc))
                continue
            yield from packet_frames


def _first(errors: list[str]) -> str | None:
    return errors[0] if errors else None


def _decode_frames_by_position(
    path: str, probe: _StreamProbe, frame_count: int, out_width: int, out_height: int, num_samples: int
) -> tuple[list[np.ndarray], str | None]:
    """Decode frames picked by position in presentation order, for streams without timestamps."""
    indices = sample_frame_indices(frame_count, num_samples)
    frames, decoded, first_error = _decode_frames_at(path, probe, indices, out_width, out_height)
    if len(frames) < len(indices) and 0 < decoded < frame_count:
        # Some packets failed to decode, so the last sampled positions were never
        # reached. Sample again over the frames that do decode.
        logger.info(
            "%s: %d of %d frames decoded with PyAV; sampling again over the decoded frames", path, decoded, frame_count
        )
        indices = sample_frame_indices(decoded, num_samples)
        frames, decoded, first_error = _decode_frames_at(path, probe, indices, out_width, out_height)
    return frames, first_error


def _decode_frames_at(
    path: str, probe: _StreamProbe, indices: list[int], out_width: int, out_height: int
) -> tuple[list[np.ndarray], int, str | None]:
    """Decode the frames at ``indices`` (presentation order) as RGB, not yet rotated.

    Returns the frames found, how many frames were decoded (all of them, unless the
    last index was reached first) and the first FFmpeg error. Packets that fail to
    decode are skipped, so a damaged stretch costs only its own frames.
    """
    sampled = set(indices)
    last = indices[-1]
    # Frames are converted before rotation, so a quarter turn swaps the target size.
    if probe.rotation in (90, 270):
        out_width, out_height = out_height, out_width

    frames: list[np.ndarray] = []
    decoded = 0
    errors: list[str] = []
    with contextlib.closing(_decodable_frames(path, probe, errors)) as decoded_frames:
        for frame in decoded_frames:
            if decoded in sampled:
                # rgb24 drops alpha and expands grey, so every source comes out as 3 channels.
                frames.append(frame.to_ndarray(width=out_width, height=out_height, format="rgb24"))
            decoded += 1
            if decoded > last:
                return frames, decoded, _first(errors)
    return frames, decoded, _first(errors)


# --- worker pool --------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerFailure:
    status: str
    message: str


def _decode_in_worker(
    decode_fn: Callable[[str, DecodeConfig], DecodedVideo], path: str, config: DecodeConfig
) -> DecodedVideo | _WorkerFailure:
    # Failures travel back as a plain value because VideoDecodeError cannot be unpickled:
    # its __init__ takes two arguments but it pickles only the message. An arbitrary
    # exception from a decoder may not pickle at all.
    try:
        return decode_fn(path, config)
    except VideoDecodeError as exc:
        return _WorkerFailure(exc.status, str(exc))
    except Exception as exc:
        return _WorkerFailure(VideoStatus.DECODE_ERROR.value, f"{type(exc).__name__}: {exc}")


def _fetch_and_decode_in_worker(
    decode_fn: Callable[[str, DecodeConfig], DecodedVideo],
    url: str,
    config: DecodeConfig,
    fetch_dir: str,
    client_env: dict[str, str],
) -> DecodedVideo | _WorkerFailure:
    # The worker downloads its own file, so downloads run in parallel like decoding.
    # The pool's timeout covers the download and the decoding together.
    remote.apply_client_environment(client_env)
    try:
        local = remote.download_video(url, fetch_dir)
    except VideoDecodeError as exc:
        return _WorkerFailure(exc.status, str(exc))
    try:
        outcome = _decode_in_worker(decode_fn, str(local), config)
    finally:
        local.unlink(missing_ok=True)
    if isinstance(outcome, _WorkerFailure):
        # Name the object, not the temporary file, in the recorded error.
        return _WorkerFailure(outcome.status, outcome.message.replace(str(local), url))
    return outcome


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the decoder process died with an unknown exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the decoder process was killed by {name} (exit code {exitcode})"
    return f"the decoder process exited with code {exitcode}"


class DecodePool:
    """Decode videos in worker processes, one file per task, results in input order.

    A worker that aborts, segfaults or runs past ``config.timeout_s`` fails only its
    current file. The pool replaces the worker and carries on. It also replaces each
    worker after ``tasks_per_worker`` files, so that memory and file handles leaked by
    a decoder stay bounded over any number of files. ``decode_fn`` must be a
    module-level function, because it is pickled by reference into the workers.

    Workers start from a forkserver, so a script that creates a pool needs the usual
    ``if __name__ == "__main__":`` guard. Use the pool as a context manager, or call
    ``close()``.

    An input that is a remote URL (see ``grdr_core.remote.is_remote``) is downloaded by
    the worker into a temporary folder of the pool, decoded from there and deleted. The
    worker uses the object-store environment variables of this process at the time the
    file is scheduled. ``close()`` and ``terminate()`` delete the folder, with any file
    left by a worker that was killed.
    """

    def __init__(
        self,
        config: DecodeConfig,
        workers: int,
        max_in_flight: int | None = None,
        decode_fn: Callable[[str, DecodeConfig], DecodedVideo] = decode_video,
        tasks_per_worker: int | None = DEFAULT_TASKS_PER_WORKER,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidInputError(f"workers must be an integer >= 1, got {workers!r}")
        if tasks_per_worker is not None and (
            isinstance(tasks_per_worker, bool) or not isinstance(tasks_per_worker, int) or tasks_per_worker < 1
        ):
            raise InvalidInputError(f"tasks_per_worker must be an integer >= 1 or None, got {tasks_per_worker!r}")
        if max_in_flight is None:
            max_in_flight = 2 * workers + 2
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise InvalidInputError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        try:
            pickle.dumps(decode_fn)
        except Exception as exc:
            raise InvalidInputError(
                f"decode_fn must be a picklable module-level function, got {decode_fn!r}: {exc}"
            ) from exc

        self.config = config
        self.workers = workers
        self.max_in_flight = max_in_flight
        self._decode_fn = decode_fn
        self.tasks_per_worker = tasks_per_worker
        self._fetch_dir: str | None = None  # created when the first remote input is scheduled
        self._pool = ProcessPool(
            max_workers=workers,
            max_tasks=tasks_per_worker or 0,  # pebble reads 0 as no limit
            context=multiprocessing.get_context(_MP_START_METHOD),
        )

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def close(self) -> None:
        """Wait for scheduled tasks to finish, then stop the workers."""
        self._pool.close()
        self._pool.join()
        self._remove_fetch_dir()

    def terminate(self) -> None:
        """Stop the workers now, killing any task in progress."""
        self._pool.stop()
        self._pool.join()
        self._remove_fetch_dir()

    def _remove_fetch_dir(self) -> None:
        if self._fetch_dir is not None:
            shutil.rmtree(self._fetch_dir, ignore_errors=True)
            self._fetch_dir = None

    def _schedule(self, path: str) -> ProcessFuture:
        if not remote.is_remote(path):
            return self._pool.schedule(
                _decode_in_worker, args=(self._decode_fn, path, self.config), timeout=self.config.timeout_s
            )
        if self._fetch_dir is None:
            self._fetch_dir = tempfile.mkdtemp(prefix="grdr-fetch-")
        return self._pool.schedule(
            _fetch_and_decode_in_worker,
            args=(self._decode_fn, path, self.config, self._fetch_dir, remote.client_environment()),
            timeout=self.config.timeout_s,
        )

    def imap(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[DecodeResult]:
        """Yield one ``DecodeResult`` per input path, in input order.

        ``paths`` is consumed lazily, and at most ``max_in_flight`` files are scheduled or
        finished but not yet yielded. So when result ``i`` is yielded, at most
        ``i + max_in_flight`` inputs have been read. A per-file failure becomes a result
        with its status: "timeout", "decoder_crashed", the status of a
        ``VideoDecodeError``, or "decode_error" for any other exception.
        """
        pending: deque[tuple[int, str, ProcessFuture]] = deque()
        try:
            for index, path in enumerate(paths):
                path = os.fspath(path)
                future = self._schedule(path)
                pending.append((index, path, future))
                if len(pending) >= self.max_in_flight:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:
            # Reached with tasks still pending only when the caller stops iterating early.
            for _, _, future in pending:
                future.cancel()

    def _collect(self, index: int, path: str, future: ProcessFuture) -> DecodeResult:
        try:
            outcome = future.result()
        except TimeoutError:
            message = f"decoding timed out after {self.config.timeout_s:g} s and the worker process was killed"
            return self._failure(index, path, VideoStatus.TIMEOUT.value, message)
        except ProcessExpired as exc:
            return self._failure(index, path, VideoStatus.DECODER_CRASHED.value, _describe_exit(exc.exitcode))
        # A task can also fail in the pool itself, for example when its result cannot be
        # pickled. That is still a failure of this one file.
        except Exception as exc:
            return self._failure(index, path, VideoStatus.DECODE_ERROR.value, f"{type(exc).__name__}: {exc}")

        if isinstance(outcome, _WorkerFailure):
            return self._failure(index, path, outcome.status, outcome.message)
        return DecodeResult(index=index, path=path, video=outcome, status=VideoStatus.OK.value, error=None)

    @staticmethod
    def _failure(index: int, path: str, status: str, message: str) -> DecodeResult:
        # DEBUG only: the caller records the failure and logs the one WARNING line per file.
        logger.debug("Decoding %s failed with status %s: %s", path, status, message)
        return DecodeResult(index=index, path=path, video=None, status=status, error=message)
