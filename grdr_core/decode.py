"""Decode videos into a few uniformly sampled RGB frames.

``decode_video`` works in the calling process. It probes the file with PyAV, reads the
sampled frames with decord and falls back to PyAV when decord cannot open, count or
decode the file. Failures raise ``VideoDecodeError`` with a manifest status.

``DecodePool`` runs a decode function in long-lived worker processes, so that a decoder
that aborts, segfaults or hangs on one file costs that file only. It returns every
per-file failure as a ``DecodeResult`` with a status instead of raising it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import decord
import numpy as np
from pebble import ProcessExpired, ProcessFuture, ProcessPool

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


@dataclass(frozen=True)
class DecodeConfig:
    """Frame sampling and resource limits for decoding one video."""

    num_frames: int = 12  # frames sampled uniformly over the video; fewer when it has fewer
    short_side: int = 224  # pixels of the shorter display side of output frames; never upscaled
    timeout_s: float = 120.0  # wall-clock seconds per file, enforced only by DecodePool

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise InvalidInputError(f"num_frames must be an integer >= 1, got {self.num_frames!r}")
        if isinstance(self.short_side, bool) or not isinstance(self.short_side, int) or self.short_side < 1:
            raise InvalidInputError(f"short_side must be an integer >= 1, got {self.short_side!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise InvalidInputError(f"timeout_s must be a number of seconds > 0, got {self.timeout_s!r}")


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
    display_width: int
    display_height: int
    rotation: int  # degrees counterclockwise to turn a decoded frame for display: 0, 90, 180 or 270
    fps: float | None
    duration_s: float | None
    num_frames: int | None


# --- sampling and sizes -------------------------------------------------------------


def sample_frame_indices(frame_count: int, num_samples: int) -> list[int]:
    """Return ``min(num_samples, frame_count)`` distinct, increasing frame indices.

    The video is cut into that many equal segments and the frame at the centre of each
    segment is picked, the usual uniform sampling of video-text retrieval models.
    """
    if frame_count < 1 or num_samples < 1:
        raise ValueError(f"frame_count and num_samples must be >= 1, got {frame_count} and {num_samples}")
    k = min(num_samples, frame_count)
    return ((np.arange(k) + 0.5) * frame_count / k).astype(np.int64).tolist()


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
    """Decode ``config.num_frames`` uniformly sampled RGB frames of the video at ``path``.

    Frames are scaled so that their shorter display side is ``config.short_side`` and
    turned upright according to the file's display matrix. decord reads them first.
    PyAV reads them when decord fails, and one INFO log line gives decord's error.

    Raises ``VideoDecodeError`` whose ``status`` is a ``VideoStatus`` value: EMPTY_FILE,
    READ_ERROR, NO_VIDEO_STREAM or DECODE_ERROR. ``config.timeout_s`` is not enforced
    here. Run the call in a ``DecodePool`` for that.
    """
    path = os.fspath(path)
    _check_readable(path)
    probe = _probe_stream(path)
    out_width, out_height = scaled_size(probe.display_width, probe.display_height, config.short_side)

    try:
        frames, frame_count = _read_with_decord(path, out_width, out_height, config.num_frames)
        decoder = DECORD
        duration_s = probe.duration_s
    # decord raises DECORDError, RuntimeError or ValueError depending on the stage that
    # failed. Every one of them has the same remedy, so any exception falls back to PyAV.
    except Exception as exc:
        decord_error = _first_line(f"{type(exc).__name__}: {exc}")
        logger.info("decord failed to decode %s (%s); decoding with PyAV", path, decord_error)
        frames, frame_count, duration_s = _read_with_pyav(
            path, probe, out_width, out_height, config.num_frames, decord_error
        )
        decoder = PYAV

    return DecodedVideo(
        frames=frames,
        decoder=decoder,
        duration_s=duration_s,
        fps=probe.fps,
        width=probe.display_width,
        height=probe.display_height,
        num_frames=frame_count,
    )


def _check_readable(path: str) -> None:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise VideoDecodeError(VideoStatus.READ_ERROR.value, f"failed to read {path}: {exc}") from exc
    if size == 0:
        raise VideoDecodeError(VideoStatus.EMPTY_FILE.value, f"{path} is empty (0 bytes)")


def _open_container(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except av.error.FFmpegError as exc:
        # PyAV's OS-level errors (file not found, permission denied) also derive from OSError.
        status = VideoStatus.READ_ERROR if isinstance(exc, OSError) else VideoStatus.DECODE_ERROR
        raise VideoDecodeError(status.value, f"FFmpeg failed to open {path}: {exc}") from exc


def _select_video_stream(container: av.container.InputContainer, path: str) -> av.VideoStream:
    # A cover image in an audio file is a one-frame "video" stream, not a video.
    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        raise VideoDecodeError(VideoStatus.NO_VIDEO_STREAM.value, f"{path} has no video stream")
    best = container.streams.best("video")
    return best if best in moving else moving[0]


def _probe_stream(path: str) -> _StreamProbe:
    """Read the video stream's header and decode its first frame to learn the rotation."""
    with _open_container(path) as container:
        stream = _select_video_stream(container, path)
        if stream.codec_context is None:
            raise VideoDecodeError(
                VideoStatus.DECODE_ERROR.value, f"FFmpeg has no decoder for the video codec of {path}"
            )
        width = stream.codec_context.width
        height = stream.codec_context.height
        if width < 1 or height < 1:
            raise VideoDecodeError(
                VideoStatus.DECODE_ERROR.value, f"the video stream of {path} has an invalid size {width}x{height}"
            )

        rotation = _normalize_rotation(_first_frame_rotation(container, stream, path), path)
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        if sar is not None and sar > 0 and sar != 1:
            width = max(1, round(width * sar))
        if rotation in (90, 270):
            width, height = height, width

        return _StreamProbe(
            stream_index=stream.index,
            display_width=width,
            display_height=height,
            rotation=rotation,
            fps=float(stream.average_rate) if stream.average_rate else None,
            duration_s=_header_duration(container, stream),
            num_frames=stream.frames if stream.frames > 0 else None,
        )


def _first_frame_rotation(container: av.container.InputContainer, stream: av.VideoStream, path: str) -> float:
    # PyAV 18 reports the display matrix of a decoded frame as VideoFrame.rotation, in
    # degrees counterclockwise. Its stream objects have no such attribute.
    first_error: str | None = None
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            first_error = first_error or str(exc)
            continue
        if frames:
            return frames[0].rotation
    raise VideoDecodeError(
        VideoStatus.DECODE_ERROR.value,
        f"no frame of {path} could be decoded (first FFmpeg error: {first_error or 'none, the stream is empty'})",
    )


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


def _read_with_decord(path: str, out_width: int, out_height: int, num_samples: int) -> tuple[np.ndarray, int]:
    """Read the sampled frames with decord. Returns them, (n, out_height, out_width, 3) uint8, and the frame count.

    decord 0.6.0 applies the stream's rotation itself, read from the ``rotate`` tag or the
    display matrix. Its ``width`` and ``height`` are those of the rotated output. So the
    frames come back upright at the display size and must not be rotated again.
    """
    # NOTE: this relies on decord's own rotation, which the tests compare with the PyAV
    # path at 90, 180 and 270 degrees. A decord build that stops rotating would return
    # sideways frames here.
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=out_width, height=out_height, num_threads=1)
    frame_count = len(reader)
    if frame_count < 1:
        raise RuntimeError(f"decord counted {frame_count} frames")

    indices = sample_frame_indices(frame_count, num_samples)
    frames = reader.get_batch(indices).asnumpy()

    expected_shape = (len(indices), out_height, out_width, 3)
    if frames.shape != expected_shape or frames.dtype != np.uint8:
        raise RuntimeError(
            f"decord returned {frames.dtype} frames of shape {frames.shape}, expected uint8 {expected_shape}"
        )
    return np.ascontiguousarray(frames), frame_count


# --- PyAV ---------------------------------------------------------------------------


def _read_with_pyav(
    path: str,
    probe: _StreamProbe,
    out_width: int,
    out_height: int,
    num_samples: int,
    decord_error: str,
) -> tuple[np.ndarray, int, float | None]:
    """Read the sampled frames with PyAV. Returns them, the frame count and the duration in seconds.

    Frames are picked by their position in presentation order. When the header gives no
    frame count, one demuxing pass counts the video packets first. Only the sampled
    frames are converted and kept, so memory stays at ``num_samples`` frames.
    """
    frame_count = probe.num_frames
    duration_s = probe.duration_s
    if frame_count is None:
        frame_count, packet_duration_s = _count_video_packets(path, probe.stream_index)
        duration_s = duration_s if duration_s is not None else packet_duration_s
    if frame_count < 1:
        raise VideoDecodeError(VideoStatus.DECODE_ERROR.value, f"the video stream of {path} has no packets")

    indices = sample_frame_indices(frame_count, num_samples)
    frames, decoded, first_error = _decode_frames_at(path, probe, indices, out_width, out_height)

    if len(frames) < len(indices) and 0 < decoded < frame_count:
        # The header over-counted or some packets failed to decode, so the last sampled
        # positions were never reached. Sample again over the frames that do decode.
        logger.info(
            "%s: %d of %d frames decoded with PyAV; sampling again over the decoded frames", path, decoded, frame_count
        )
        frame_count = decoded
        indices = sample_frame_indices(frame_count, num_samples)
        frames, decoded, first_error = _decode_frames_at(path, probe, indices, out_width, out_height)

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
    return np.ascontiguousarray(batch), frame_count, duration_s


def _count_video_packets(path: str, stream_index: int) -> tuple[int, float | None]:
    """Return the number of video packets and the span of their timestamps in seconds."""
    count = 0
    start: int | None = None
    end: int | None = None
    with _open_container(path) as container:
        stream = container.streams[stream_index]
        for packet in container.demux(stream):
            if packet.size == 0:  # the empty packet at the end that flushes the decoder
                continue
            count += 1
            if packet.pts is not None:
                start = packet.pts if start is None else min(start, packet.pts)
                packet_end = packet.pts + (packet.duration or 0)
                end = packet_end if end is None else max(end, packet_end)
        time_base: Fraction | None = stream.time_base
    if start is None or end is None or not time_base or end <= start:
        return count, None
    return count, float((end - start) * time_base)


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
    first_error: str | None = None
    with _open_container(path) as container:
        stream = container.streams[probe.stream_index]
        stream.codec_context.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                packet_frames = packet.decode()
            except av.error.FFmpegError as exc:
                first_error = first_error or str(exc)
                continue
            for frame in packet_frames:
                if decoded in sampled:
                    # rgb24 drops alpha and expands grey, so every source comes out as 3 channels.
                    frames.append(frame.to_ndarray(width=out_width, height=out_height, format="rgb24"))
                decoded += 1
                if decoded > last:
                    return frames, decoded, first_error
    return frames, decoded, first_error


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
    """Decode videos in long-lived worker processes, one file per task, results in input order.

    A worker that aborts, segfaults or runs past ``config.timeout_s`` fails only its
    current file. The pool replaces the worker and carries on. ``decode_fn`` must be a
    module-level function, because it is pickled by reference into the workers.

    Workers start from a forkserver, so a script that creates a pool needs the usual
    ``if __name__ == "__main__":`` guard. Use the pool as a context manager, or call
    ``close()``.
    """

    def __init__(
        self,
        config: DecodeConfig,
        workers: int,
        max_in_flight: int | None = None,
        decode_fn: Callable[[str, DecodeConfig], DecodedVideo] = decode_video,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidInputError(f"workers must be an integer >= 1, got {workers!r}")
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
        self._pool = ProcessPool(max_workers=workers, context=multiprocessing.get_context(_MP_START_METHOD))

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

    def terminate(self) -> None:
        """Stop the workers now, killing any task in progress."""
        self._pool.stop()
        self._pool.join()

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
                future = self._pool.schedule(
                    _decode_in_worker, args=(self._decode_fn, path, self.config), timeout=self.config.timeout_s
                )
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
