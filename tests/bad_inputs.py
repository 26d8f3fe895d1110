"""Write a corpus of broken and unusual videos and caption files, as real data lakes hold them.

Every file is generated here with PyAV and NumPy, so the corpus can be rebuilt on any
machine. Real broken files, where a checkout has them, only add to it. The video frames are ``render_frame`` patterns (see ``grdr_core.testing.videos``), so a
test can tell from a decoded frame which source frame it is and which way it faces.

Run ``python tests/bad_inputs.py OUT_DIR`` to write the corpus for a manual build with
the limits below, for example
``grdr-index build OUT_DIR/videos --out INDEX --max-pixels 8294400 --max-duration 300``.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from grdr_core.testing.videos import render_frame, write_audio_only, write_test_video

# Bytes kept of the truncated H.264 files, and the bytes cut off the end of the last one.
TRUNCATION_CUTS = (200, 1_000, 5_000, 20_000)
TRUNCATION_TAIL = 2_048
# Timestamps in milliseconds of the variable-frame-rate clip: 10 frames at 10 fps,
# a 2 s gap, then 10 more frames.
VFR_GAP_PTS_MS = tuple(range(0, 1000, 100)) + tuple(range(2900, 3900, 100))
# Presentation times in seconds of the three frames of the long, tiny clip.
LONG_CLIP_TIMES_S = (0, 300, 600)
UHD_SIZE = (3840, 2160)
UHD_FRAMES = 20
# Build limits under which the UHD clip passes and the larger and longer clips are too_large.
BUILD_MAX_PIXELS = UHD_SIZE[0] * UHD_SIZE[1]
BUILD_MAX_DURATION_S = 300.0
OVER_LIMIT_SIZE = (4096, 2304)
# Not valid UTF-8: 0xE9 is "é" in Latin-1.
LATIN1_NAME = b"caf\xe9 latin1.mp4"
WORDS = "a person slowly walks a brown dog along the beach while waves roll in".split()


def write_h264(
    path: Path,
    frames: int = 30,
    width: int = 320,
    height: int = 240,
    fps: int = 10,
    faststart: bool = False,
    gop: int = 10,
    pts_ms: tuple[int, ...] | None = None,
    noise: bool = True,
) -> Path:
    """Encode ``render_frame`` patterns as H.264 in MP4 and return the path.

    ``noise`` adds a fixed random texture below the pattern's white block, so the file
    is tens of KB and truncation cuts land inside its media data. ``faststart`` puts the
    ``moov`` box before the media data. ``pts_ms`` gives each frame's presentation time
    in milliseconds instead of a constant rate.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    texture = np.random.default_rng(0).integers(0, 48, size=(height, width, 3), dtype=np.uint8)
    texture[: height // 2] = 0
    time_base = Fraction(1, 1000) if pts_ms is not None else Fraction(1, fps)
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "12", "threads": "1"}
        stream.codec_context.gop_size = gop
        if pts_ms is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        count = len(pts_ms) if pts_ms is not None else frames
        for index in range(count):
            image = render_frame(index, width, height)
            if noise:
                image = np.clip(image.astype(np.int16) + texture, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = pts_ms[index] if pts_ms is not None else index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_undecodable(path: Path, codec: str, packets: int = 10) -> Path:
    """Write a video stream of ``codec`` whose packets are random bytes, so no frame decodes."""
    rng = np.random.default_rng(1)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = 64
        stream.height = 48
        stream.pix_fmt = "yuv420p"
        for index in range(packets):
            packet = av.Packet(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
            packet.stream = stream
            packet.pts = index
            packet.dts = index
            packet.time_base = Fraction(1, 10)
            packet.is_keyframe = True
            container.mux(packet)
    return path


def write_uhd_high_gop(path: Path) -> Path:
    """Write a 3840x2160 H.264 clip with a single keyframe, the worst case for seeking.

    Two alternating pictures are converted once and encoded ``UHD_FRAMES`` times, which
    keeps the encoding to about 2 s of one CPU core.
    """
    width, height = UHD_SIZE
    pictures = [
        av.VideoFrame.from_ndarray(render_frame(i, width, height), format="rgb24").reformat(format="yuv420p")
        for i in range(2)
    ]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30", "threads": "1"}
        stream.codec_context.gop_size = 1000
        for index in range(UHD_FRAMES):
            picture = pictures[index % 2]
            picture.pts = index
            picture.time_base = Fraction(1, 10)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return path


def write_long_clip(path: Path) -> Path:
    """Write three frames shown at ``LONG_CLIP_TIMES_S``: a ten-minute video of a few KB."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width = 64
        stream.height = 48
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1)
        stream.codec_context.time_base = Fraction(1, 1)
        for index, seconds in enumerate(LONG_CLIP_TIMES_S):
            frame = av.VideoFrame.from_ndarray(render_frame(index, 64, 48), format="rgb24").reformat(format="yuv420p")
            frame.pts = seconds
            frame.time_base = Fraction(1, 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def overwrite_middle(source: Path, target: Path, length: int = 2_048) -> Path:
    """Copy ``source`` to ``target`` with ``length`` random bytes written over its middle."""
    data = bytearray(source.read_bytes())
    start = len(data) // 2 - length // 2
    data[start : start + length] = np.random.default_rng(2).integers(0, 256, length, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def write_video_corpus(root: Path) -> dict[str, Path]:
    """Write one file per kind of broken or unusual video under ``root``; return them by case name.

    The Latin-1 file's path is a ``str`` with a surrogate escape, as ``os.walk`` names it.
    """
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Path] = {}

    # Truncated H.264 MP4s, with the moov box last (the muxer's default) and first.
    for layout, faststart in (("moov_last", False), ("faststart", True)):
        source = write_h264(root / "sources" / f"{layout}.mp4.src", faststart=faststart)
        data = source.read_bytes()
        cuts = {f"cut_{cut}": cut for cut in TRUNCATION_CUTS}
        cuts["minus_2k"] = len(data) - TRUNCATION_TAIL
        for label, cut in cuts.items():
            if cut >= len(data):
                raise ValueError(f"{source} has only {len(data)} bytes, so a cut at {cut} truncates nothing")
            target = root / "truncated" / f"{layout}_{label}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[:cut])
            cases[f"truncated_{layout}_{label}"] = target
        if layout == "moov_last":
            cases["overwritten_middle"] = overwrite_middle(source, root / "overwritten_middle.mp4")

    cases["empty"] = root / "empty.mp4"
    cases["empty"].write_bytes(b"")
    cases["text_named_mp4"] = root / "notes.mp4"
    cases["text_named_mp4"].write_text("These are meeting notes, not a video.\n" * 40)
    cases["audio_only_m4a"] = write_audio_only(root / "tone.m4a")
    cases["audio_only_mp4"] = write_audio_only(root / "tone.mp4")
    cases["zero_frames_mkv"] = write_undecodable(root / "undecodable.mkv", "mpeg4")
    cases["zero_frames_mp4"] = write_undecodable(root / "undecodable.mp4", "mpeg4")
    cases["one_frame"] = write_test_video(root / "one_frame.mp4", frames=1)
    cases["vfr_gap"] = write_h264(root / "vfr_gap.mp4", width=64, height=48, pts_ms=VFR_GAP_PTS_MS, noise=False)
    for degrees in (90, 180, 270):
        cases[f"rotated_{degrees}"] = write_test_video(
            root / f"rotated_{degrees}.mp4", frames=6, width=96, height=64, rotation=degrees
        )
    cases["one_pixel_tall"] = write_test_video(root / "one_pixel_tall.mkv", frames=6, width=64, height=1, codec="ffv1", pix_fmt="yuv444p")
    cases["three_by_three"] = write_test_video(root / "three_by_three.mkv", frames=6, width=3, height=3, codec="ffv1", pix_fmt="yuv444p")
    cases["grayscale"] = write_test_video(root / "grayscale.mkv", frames=6, codec="ffv1", pix_fmt="gray")
    cases["alpha"] = write_test_video(root / "alpha.webm", frames=6, codec="libvpx-vp9", pix_fmt="yuva420p")
    cases["uhd_high_gop"] = write_uhd_high_gop(root / "uhd_high_gop.mp4")
    cases["long_clip"] = write_long_clip(root / "long_clip.mp4")
    width, height = OVER_LIMIT_SIZE
    cases["over_pixel_limit"] = write_test_video(root / "over_pixel_limit.mp4", frames=1, width=width, height=height)

    names = {"name_spaces": "name with spaces.mp4", "name_non_ascii": "vidéo ünïcode 视频.mp4", "name_leading_dash": "-leading-dash.mp4"}
    for case, name in names.items():
        cases[case] = write_test_video(root / "names" / name, frames=4)
    latin1 = os.path.join(os.fsencode(root / "names"), LATIN1_NAME)
    os.rename(write_test_video(root / "names" / "latin1.tmp.mp4", frames=4), latin1)
    cases["name_latin1"] = Path(os.fsdecode(latin1))

    fifo = root / "named_pipe.mp4"
    os.mkfifo(fifo)
    cases["named_pipe"] = fifo
    return cases


def long_caption(words: int = 500) -> str:
    """Return a caption of ``words`` words, far beyond CLIP's 77-token context."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def write_caption_corpus(root: Path, video_ids: list[str]) -> dict[str, Path]:
    """Write one caption file per kind of caption damage under ``root``; return them by case name.

    ``video_ids[0]`` and ``video_ids[1]`` name two indexed videos, which the captions
    describe; every other indexed video gets no caption.
    """
    root.mkdir(parents=True, exist_ok=True)
    first, second = video_ids[0], video_ids[1]
    files = {
        "utf8_bom": ("bom.csv", f"\ufeffvideo_id,caption\n{first},a dog runs\n{second},a cat sleeps\n".encode("utf-8")),
        "crlf": ("crlf.csv", f"video_id,caption\r\n{first},a dog runs\r\n{second},a cat sleeps\r\n".encode("utf-8")),
        "quoted_newlines": (
            "quoted.csv",
            f'video_id,caption\n{first},"a dog, brown,\nruns ""fast"""\n{second},"two\r\nlines"\n'.encode("utf-8"),
        ),
        "cp1252": ("cp1252.csv", f"video_id,caption\n{first},a café – “crème brûlée”\n{second},plain text\n".encode("cp1252")),
        # A lone high surrogate as CESU-8 bytes in CSV, and as a JSON escape in JSON Lines.
        "lone_surrogate_csv": ("surrogate.csv", f"video_id,caption\n{first},bad \xed\xa0\x80 text\n{second},fine\n".encode("latin-1")),
        "lone_surrogate_jsonl": (
            "surrogate.jsonl",
            f'{{"video_id": "{first}", "caption": "bad \\ud800 text"}}\n{{"video_id": "{second}", "caption": "fine"}}\n'.encode(),
        ),
        "empty_caption": ("empty.csv", f'video_id,caption\n{first},""\n{second},   \n{second},a cat\n'.encode()),
        "long_caption": ("long.csv", f"video_id,caption\n{first},{long_caption()}\n{second},a cat\n".encode()),
        "duplicate_rows": ("duplicates.csv", f"video_id,caption\n{first},a dog\n{first},a dog\n{second},a cat\n".encode()),
        "conflicting_ids": (
            "conflicting.csv",
            f"video_id,caption\n{first},a dog on a beach\n{first},a cat on a sofa\n{second},a bird\n".encode(),
        ),
        "coverage": (
            "coverage.csv",
            f"video_id,caption\n{first},a dog\nno_such_video.mp4,a ghost\nmissing/clip.avi,nothing\n".encode(),
        ),
    }
    paths = {}
    for case, (name, data) in files.items():
        paths[case] = root / name
        paths[case].write_bytes(data)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    videos = write_video_corpus(out / "videos")
    captions = write_caption_corpus(out / "captions", ["one_frame.mp4", "grayscale.mkv"])
    print(f"Wrote {len(videos)} video cases under {out / 'videos'} and {len(captions)} caption files under {out / 'captions'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
