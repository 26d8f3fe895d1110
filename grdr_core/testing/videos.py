"""Write small synthetic videos for tests, and decode functions that fail on purpose.

Every frame that ``write_test_video`` writes is ``render_frame(index, width, height)``.
Its solid background has a red level that encodes the frame index, and a white block
sits in its top-left corner. A test can then check which frames were sampled and which
way a frame was rotated.

The ``decode_or_*`` functions wrap ``grdr_core.decode.decode_video`` and misbehave only
on files whose name starts with a marker. They are module-level so that they pickle by
reference into ``DecodePool`` worker processes.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from grdr_core.decode import DecodeConfig, DecodedVideo, decode_video

# Red channel step between consecutive frames. Lossy codecs shift a solid colour by
# a level or two, so a step of 8 keeps neighbouring frames apart. 32 frames fit in 0-255.
RED_STEP = 8
BACKGROUND_GREEN = 64
BACKGROUND_BLUE = 160
MAX_TEST_FRAMES = 256 // RED_STEP

ABORT_MARKER = "abort"
HANG_MARKER = "hang"
RAISE_MARKER = "raise"


def frame_color(index: int) -> tuple[int, int, int]:
    """Return the RGB background colour of frame ``index`` of a test video."""
    return (RED_STEP * index, BACKGROUND_GREEN, BACKGROUND_BLUE)


def frame_index_from_red(red: float) -> int:
    """Return the frame index whose background red level is closest to ``red``."""
    return int(round(red / RED_STEP))


def render_frame(index: int, width: int, height: int) -> np.ndarray:
    """Return frame ``index`` of a test video as a (height, width, 3) uint8 RGB array.

    The white block covers the top-left quarter of each side, so its position after
    decoding shows the orientation.
    """
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, :] = frame_color(index)
    frame[: max(1, height // 4), : max(1, width // 4)] = 255
    return frame


def write_test_video(
    path: str | os.PathLike[str],
    frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    with_audio: bool = False,
) -> Path:
    """Encode ``frames`` frames of ``render_frame`` into ``path`` with PyAV and return the path.

    Missing parent folders are created. The container format follows the file
    extension. ``rotation`` stores a display matrix that rotates the picture by that
    many degrees counterclockwise on playback, the convention of PyAV's ``VideoFrame.rotation``. ``with_audio`` adds one AAC track
    of a 440 Hz tone as long as the video.
    """
    if not 1 <= frames <= MAX_TEST_FRAMES:
        raise ValueError(
            f"frames must be in [1, {MAX_TEST_FRAMES}] so that every frame gets its own red level, got {frames}"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    path = Path(path)

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = pix_fmt
        if codec == "mpeg4":
            # A small fixed quantiser keeps solid colours within a level or two.
            stream.codec_context.qscale = 2
        if rotation is not None:
            stream.set_display_rotation(rotation)

        audio_stream = None
        if with_audio:
            audio_stream = container.add_stream("aac", rate=16000)
            audio_stream.layout = "mono"

        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(render_frame(index, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

        if audio_stream is not None:
            _encode_tone(container, audio_stream, seconds=frames / fps)
    return path


def write_audio_only(path: str | os.PathLike[str], seconds: float = 1.0, codec: str = "aac") -> Path:
    """Write a file with one audio track of a 440 Hz tone and no video track, and return the path."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        audio_stream = container.add_stream(codec, rate=16000)
        audio_stream.layout = "mono"
        _encode_tone(container, audio_stream, seconds=seconds)
    return path


def _encode_tone(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    sample_rate = stream.codec_context.sample_rate
    total = int(seconds * sample_rate)
    chunk = 1024
    for start in range(0, total, chunk):
        t = np.arange(start, min(start + chunk, total)) / sample_rate
        samples = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[np.newaxis, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _has_marker(path: str, marker: str) -> bool:
    return Path(path).name.startswith(marker)


def decode_or_abort(path: str, config: DecodeConfig) -> DecodedVideo:
    """Decode like ``decode_video``, but kill the process with SIGABRT on files named ``abort*``."""
    if _has_marker(path, ABORT_MARKER):
        os.abort()
    return decode_video(path, config)


def decode_or_hang(path: str, config: DecodeConfig) -> DecodedVideo:
    """Decode like ``decode_video``, but never return on files named ``hang*``."""
    if _has_marker(path, HANG_MARKER):
        while True:
            time.sleep(60)
    return decode_video(path, config)


def decode_or_raise(path: str, config: DecodeConfig) -> DecodedVideo:
    """Decode like ``decode_video``, but raise ``RuntimeError`` on files named ``raise*``."""
    if _has_marker(path, RAISE_MARKER):
        raise RuntimeError(f"injected failure for {path}")
    return decode_video(path, config)
