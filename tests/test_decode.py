"""Tests of grdr_core.decode: frame sampling, both decoders, real files and the worker pool."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import grdr_core.decode as decode_module
from grdr_core.containers import find_truncation, sniff_container
from grdr_core.decode import (
    DecodeConfig,
    DecodedVideo,
    DecodePool,
    decode_video,
    sample_frame_indices,
    sample_frame_times,
    scaled_size,
)
from grdr_core.errors import InvalidInputError, VideoDecodeError
from grdr_core.testing.videos import (
    decode_or_abort,
    decode_or_hang,
    decode_or_raise,
    frame_index_from_red,
    render_frame,
    write_audio_only,
    write_test_video,
)
from grdr_schemas import VideoStatus

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SKIP_REASON = f"real test videos not found at {DATA_DIR} (only checkouts with ../shared/data have them)"

# Mean absolute difference, in 8-bit levels, between a decoded test frame and the frame
# that was encoded. Codec and colour-conversion error is about 1.5. A frame turned the
# wrong way misplaces its white block and differs by about 20.
MAX_MEAN_ERROR = 4.0


def _real_files(*parts: str) -> list[Path]:
    folder = DATA_DIR.joinpath(*parts)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file())


def _bad_video(name: str) -> Path:
    path = DATA_DIR / "bad_videos" / name
    if not path.exists():
        pytest.skip(SKIP_REASON)
    return path


def _raise_in_decord(*args: object, **kwargs: object) -> None:
    raise RuntimeError("decord disabled by the test")


@pytest.fixture(params=["decord", "pyav"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Name of the decoder that ``decode_video`` must use. For "pyav", decord is made to fail."""
    if request.param == "pyav":
        monkeypatch.setattr(decode_module, "_read_with_decord", _raise_in_decord)
    return request.param


def _sampled_indices(video: DecodedVideo) -> list[int]:
    # Read the red level at a pixel outside the white block of the test pattern.
    height, width = video.frames.shape[1:3]
    return [frame_index_from_red(frame[height // 2, width // 2, 0]) for frame in video.frames]


# --- sampling and sizes -------------------------------------------------------------


def test_sample_indices_are_segment_centres():
    assert sample_frame_indices(30, 12) == [1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28]
    assert sample_frame_indices(3, 12) == [0, 1, 2]
    assert sample_frame_indices(1, 5) == [0]
    assert sample_frame_indices(100, 1) == [50]


def test_sample_indices_distinct_and_in_range():
    for frame_count in range(1, 80):
        for num_samples in (1, 2, 7, 12, 50):
            indices = sample_frame_indices(frame_count, num_samples)
            assert len(indices) == min(frame_count, num_samples)
            assert indices == sorted(set(indices))
            assert 0 <= indices[0]
            assert indices[-1] < frame_count


def test_sample_indices_reject_zero():
    with pytest.raises(ValueError):
        sample_frame_indices(0, 12)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 0)


def test_sample_times_equal_indices_at_constant_rate():
    for frame_count in range(1, 80):
        for num_samples in (1, 2, 7, 12, 50):
            for fps in (10, 29.97):
                # decord gives timestamps as float32, so rounding must not move a pick.
                starts = (np.arange(frame_count) / fps).astype(np.float32)
                picked = sample_frame_times(starts, frame_count / fps, num_samples)
                assert picked == sample_frame_indices(frame_count, num_samples), (frame_count, num_samples, fps)


def test_sample_times_hold_frame_through_gap():
    starts = np.array([0.0, 0.1, 0.2, 2.0, 2.1, 2.2, 2.3])

    # Centres of 4 segments of [0, 2.4): 0.3, 0.9, 1.5 and 2.1 s. Frame 2 is on screen until 2.0 s.
    assert sample_frame_times(starts, 2.4, 4) == [2, 2, 2, 4]
    assert sample_frame_indices(7, 4) == [0, 2, 4, 6]


@pytest.mark.parametrize(
    "starts, end",
    [([0.0, float("nan"), 0.2], 0.3), ([0.0, 0.2, 0.1], 0.3), ([0.5, 0.5, 0.5], 0.5), ([0.0, 0.1], float("inf"))],
)
def test_sample_times_reject_unusable(starts, end):
    assert sample_frame_times(np.array(starts), end, 3) is None


def test_sample_times_single_frame_without_duration():
    assert sample_frame_times(np.array([4.0]), 4.0, 12) == [0]


def test_scaled_size_keeps_aspect():
    assert scaled_size(640, 360, 224) == (398, 224)
    assert scaled_size(360, 640, 224) == (224, 398)
    assert scaled_size(1280, 720, 224) == (398, 224)
    assert scaled_size(300, 300, 224) == (224, 224)


def test_scaled_size_never_upscales():
    assert scaled_size(64, 48, 224) == (64, 48)
    assert scaled_size(400, 224, 224) == (400, 224)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": 2.5},
        {"short_side": 0},
        {"timeout_s": 0},
        {"timeout_s": -1.0},
        {"timeout_s": float("nan")},
        {"max_pixels": 0},
        {"max_pixels": True},
        {"max_pixels": 1.5},
        {"max_duration_s": 0},
        {"max_duration_s": -3.0},
        {"max_duration_s": float("nan")},
    ],
)
def test_decode_config_rejects_invalid(kwargs):
    with pytest.raises(InvalidInputError):
        DecodeConfig(**kwargs)


# --- generated videos ---------------------------------------------------------------


def test_uniform_sampling_picks_expected_frames(tmp_path, decoder):
    path = write_test_video(tmp_path / "colors.mp4", frames=30, width=64, height=48, fps=10)

    video = decode_video(str(path), DecodeConfig(num_frames=12))

    assert video.decoder == decoder
    assert _sampled_indices(video) == sample_frame_indices(30, 12)
    assert video.frames.shape == (12, 48, 64, 3)
    assert video.frames.dtype == np.uint8
    assert video.frames.flags.c_contiguous
    assert video.width == 64
    assert video.height == 48
    assert video.num_frames == 30
    assert video.fps == pytest.approx(10.0)
    assert video.duration_s == pytest.approx(3.0, abs=0.15)


def test_short_video_returns_every_frame(tmp_path, decoder):
    path = write_test_video(tmp_path / "short.mp4", frames=5)

    video = decode_video(str(path), DecodeConfig(num_frames=12))

    assert video.decoder == decoder
    assert _sampled_indices(video) == [0, 1, 2, 3, 4]


def test_decoded_frames_match_encoded(tmp_path, decoder):
    path = write_test_video(tmp_path / "pattern.mp4", frames=8)

    video = decode_video(str(path), DecodeConfig(num_frames=4))

    expected = np.stack([render_frame(i, 64, 48) for i in sample_frame_indices(8, 4)])
    error = np.abs(video.frames.astype(np.int16) - expected).mean()
    assert error < MAX_MEAN_ERROR


def test_grayscale_source_comes_out_rgb(tmp_path, decoder):
    path = write_test_video(tmp_path / "gray.mkv", frames=10, codec="ffv1", pix_fmt="gray")

    video = decode_video(str(path), DecodeConfig(num_frames=4))

    assert video.decoder == decoder
    assert video.frames.shape == (4, 48, 64, 3)
    assert video.frames.dtype == np.uint8
    assert np.array_equal(video.frames[..., 0], video.frames[..., 1])
    assert np.array_equal(video.frames[..., 0], video.frames[..., 2])


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_rotation_is_applied(tmp_path, decoder, rotation):
    # decord 0.6.0 raises on some rotated sizes, such as a 64x48 or 128x72 source turned a
    # quarter, and decode_video then uses PyAV. A 96x64 source stays on decord.
    path = write_test_video(tmp_path / f"rotated_{rotation}.mp4", frames=6, width=96, height=64, rotation=rotation)

    video = decode_video(str(path), DecodeConfig(num_frames=3))

    # The display matrix turns the stored picture counterclockwise, as np.rot90 does.
    expected = np.stack([np.rot90(render_frame(i, 96, 64), k=rotation // 90) for i in sample_frame_indices(6, 3)])
    assert video.decoder == decoder
    assert (video.width, video.height) == (expected.shape[2], expected.shape[1])
    assert video.frames.shape == expected.shape
    assert video.frames.flags.c_contiguous
    error = np.abs(video.frames.astype(np.int16) - expected).mean()
    assert error < MAX_MEAN_ERROR


def test_frames_downscaled_to_short_side(tmp_path, decoder):
    path = write_test_video(tmp_path / "wide.mp4", frames=4, width=640, height=360)

    video = decode_video(str(path), DecodeConfig(num_frames=2, short_side=224))

    assert video.decoder == decoder
    assert video.frames.shape == (2, 224, 398, 3)
    assert (video.width, video.height) == (640, 360)


def test_audio_track_is_ignored(tmp_path):
    path = write_test_video(tmp_path / "with_audio.mp4", frames=10, with_audio=True)

    video = decode_video(str(path), DecodeConfig(num_frames=4))

    assert _sampled_indices(video) == sample_frame_indices(10, 4)


def test_pyav_counts_packets_without_header_count(tmp_path):
    path = str(write_test_video(tmp_path / "uncounted.mp4", frames=20, fps=10))
    config = DecodeConfig(num_frames=5)
    probe = dataclasses.replace(decode_module._probe_stream(path, config), num_frames=None, duration_s=None)

    sampled = decode_module._read_with_pyav(path, probe, 64, 48, config, "not used")

    assert sampled.frame_count == 20
    assert sampled.duration_s == pytest.approx(2.0)
    indices = [frame_index_from_red(frame[24, 32, 0]) for frame in sampled.frames]
    assert indices == sample_frame_indices(20, 5)


def test_pyav_ignores_header_overcount(tmp_path):
    path = str(write_test_video(tmp_path / "overcounted.mp4", frames=20))
    config = DecodeConfig(num_frames=8)
    probe = dataclasses.replace(decode_module._probe_stream(path, config), num_frames=40)

    sampled = decode_module._read_with_pyav(path, probe, 64, 48, config, "not used")

    assert sampled.frame_count == 20
    indices = [frame_index_from_red(frame[24, 32, 0]) for frame in sampled.frames]
    assert indices == sample_frame_indices(20, 8)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = write_audio_only(tmp_path / "audio_only.m4a")

    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(path), DecodeConfig())

    assert info.value.status == VideoStatus.NO_VIDEO_STREAM.value


def test_zero_byte_file_is_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")

    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(path), DecodeConfig())

    assert info.value.status == VideoStatus.EMPTY_FILE.value


def test_garbage_bytes_is_unknown_format(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=8192, dtype=np.uint8).tobytes())

    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(path), DecodeConfig())

    assert info.value.status == VideoStatus.UNKNOWN_FORMAT.value
    assert "garbage.mp4" in str(info.value)


@pytest.mark.parametrize(
    "name, codec",
    [("clip.mp4", "mpeg4"), ("clip.mov", "mpeg4"), ("clip.mkv", "mpeg4"), ("clip.webm", "libvpx-vp9"), ("clip.avi", "mpeg4")],
)
def test_truncation_found_in_container(tmp_path, name, codec):
    data = write_test_video(tmp_path / name, frames=10, codec=codec).read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[:-100])

    with open(tmp_path / name, "rb") as f:
        assert find_truncation(f, len(data)) is None
    with open(cut, "rb") as f:
        reason = find_truncation(f, len(data) - 100)
    error = _decode_error_of(cut)

    assert reason is not None
    assert f"the file has {len(data) - 100}" in reason
    assert error.status == VideoStatus.TRUNCATED.value
    assert reason in str(error)


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\x00\x00\x00\x20ftypisom", "ISO BMFF (MP4/MOV)"),
        (b"\x00\x00\x00\x08free\x00\x00\x00\x08mdat", "ISO BMFF (MP4/MOV)"),
        (b"\x1a\x45\xdf\xa3\x9f", "Matroska/WebM"),
        (b"RIFF\x00\x10\x00\x00AVI LIST", "AVI"),
        (b"OggS\x00\x02", "Ogg"),
        (b"\x00\x00\x01\xba\x44", "MPEG program stream"),
        (b"\x47" + b"\x00" * 187 + b"\x47" + b"\x00" * 10, "MPEG transport stream"),
        (b"These are meeting notes", None),
        (b"", None),
    ],
)
def test_sniff_container(head, expected):
    assert sniff_container(head) == expected


def test_damaged_known_container_is_decode_error(tmp_path):
    path = tmp_path / "no_moov.mp4"
    # A complete ftyp box and an mdat of random bytes: an MP4 without its moov box.
    mdat = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00" + (8 + len(mdat)).to_bytes(4, "big") + b"mdat" + mdat)

    error = _decode_error_of(path)

    assert error.status == VideoStatus.DECODE_ERROR.value
    assert "starts like ISO BMFF" in str(error)


def test_fifo_is_read_error_without_blocking(tmp_path):
    path = tmp_path / "pipe.mp4"
    os.mkfifo(path)

    error = _decode_error_of(path)

    assert error.status == VideoStatus.READ_ERROR.value
    assert "not a regular file" in str(error)


def test_size_limits_checked_before_decoding(tmp_path):
    path = write_test_video(tmp_path / "wide.mp4", frames=30, width=640, height=360, fps=10)

    pixels = _decode_error_of(path, DecodeConfig(max_pixels=640 * 360 - 1))
    duration = _decode_error_of(path, DecodeConfig(max_duration_s=2.5))

    assert pixels.status == duration.status == VideoStatus.TOO_LARGE.value
    assert "640x360 = 230400 pixels per frame" in str(pixels)
    assert "lasts 3.0 s, longer than the limit of 2.5 s" in str(duration)
    assert decode_video(str(path), DecodeConfig(max_pixels=640 * 360, max_duration_s=3.0)).frames.shape[0] == 12


def _decode_error_of(path: Path, config: DecodeConfig | None = None) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(path), config or DecodeConfig())
    return info.value


def test_missing_file_is_read_error(tmp_path):
    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(tmp_path / "missing.mp4"), DecodeConfig())

    assert info.value.status == VideoStatus.READ_ERROR.value


def test_directory_is_read_error(tmp_path):
    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(tmp_path), DecodeConfig())

    assert info.value.status == VideoStatus.READ_ERROR.value


# --- real files ---------------------------------------------------------------------

REAL_CLIPS = _real_files("msvd", "clips") + _real_files("videos")


@pytest.mark.skipif(not REAL_CLIPS, reason=SKIP_REASON)
@pytest.mark.parametrize("path", REAL_CLIPS, ids=lambda p: p.name)
def test_real_clip_decodes(path):
    video = decode_video(str(path), DecodeConfig(num_frames=12, short_side=224))

    assert video.decoder == "decord"
    assert video.frames.shape[0] == 12
    assert min(video.frames.shape[1:3]) == 224
    assert video.frames.shape[3] == 3
    assert video.frames.dtype == np.uint8
    assert video.frames.flags.c_contiguous
    assert video.num_frames is not None and video.num_frames >= 12
    assert video.fps is not None and video.fps > 0
    assert video.duration_s is not None and video.duration_s > 0
    # Output keeps the display aspect ratio within rounding.
    out_height, out_width = video.frames.shape[1:3]
    assert out_width / out_height == pytest.approx(video.width / video.height, abs=0.01)


def test_real_non_square_pixels_widen_display():
    path = DATA_DIR / "videos" / "mmaction2_demo.mp4"
    if not path.exists():
        pytest.skip(SKIP_REASON)

    video = decode_video(str(path), DecodeConfig())

    # 340x256 stored with a 64:51 sample aspect ratio displays as 427x256.
    assert (video.width, video.height) == (427, 256)
    assert video.frames.shape[1:] == (224, 374, 3)


@pytest.mark.parametrize("name", ["rotated_90.mov", "fire2.mp4"])
def test_real_rotation_same_in_both_decoders(name):
    path = DATA_DIR / ("bad_videos" if name == "rotated_90.mov" else "videos") / name
    if not path.exists():
        pytest.skip(SKIP_REASON)
    config = DecodeConfig(num_frames=3)

    with_decord = decode_video(str(path), config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode_module, "_read_with_decord", _raise_in_decord)
        with_pyav = decode_video(str(path), config)

    assert with_decord.decoder == "decord"
    assert with_pyav.decoder == "pyav"
    assert with_decord.frames.shape == with_pyav.frames.shape
    error = np.abs(with_decord.frames.astype(np.int16) - with_pyav.frames).mean()
    assert error < 8.0


def test_bad_video_rotated_90_is_portrait():
    video = decode_video(str(_bad_video("rotated_90.mov")), DecodeConfig())

    assert video.decoder == "decord"
    assert (video.width, video.height) == (320, 568)
    assert video.frames.shape == (3, 398, 224, 3)
    assert video.num_frames == 3


def test_bad_video_alpha_channel_is_rgb():
    video = decode_video(str(_bad_video("alpha_channel.webm")), DecodeConfig())

    assert video.frames.shape == (12, 200, 200, 3)
    assert video.frames.dtype == np.uint8


def test_bad_video_failing_audio_decodes():
    video = decode_video(str(_bad_video("failing_audio.mp4")), DecodeConfig())

    assert video.decoder == "decord"
    assert video.frames.shape == (12, 224, 398, 3)
    assert video.num_frames == 280


def test_bad_video_no_duration_uses_pyav():
    video = decode_video(str(_bad_video("no_duration.webm")), DecodeConfig())

    assert video.decoder == "pyav"
    assert video.frames.shape == (12, 224, 398, 3)
    assert video.num_frames == 74
    assert video.duration_s == pytest.approx(4.94, abs=0.1)


def test_bad_video_corrupted_decodes_with_pyav():
    # decord opens and counts the 50 frames, then fails in get_batch on packet 30.
    # PyAV skips that packet and decodes the other 49 frames.
    video = decode_video(str(_bad_video("corrupted.mp4")), DecodeConfig())

    assert video.decoder == "pyav"
    assert video.frames.shape == (12, 224, 398, 3)
    assert video.num_frames == 50


def test_bad_video_empty_is_empty_file():
    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(_bad_video("empty.webm")), DecodeConfig())

    assert info.value.status == VideoStatus.EMPTY_FILE.value


# --- worker pool --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Return paths of small pool test inputs by role. The abort*, hang* and raise* files are valid videos."""
    folder = tmp_path_factory.mktemp("pool_videos")
    paths = {
        "good_a": write_test_video(folder / "good_a.mp4", frames=10),
        "good_b": write_test_video(folder / "good_b.mp4", frames=20),
        "good_c": write_test_video(folder / "good_c.avi", frames=6),
        "abort": write_test_video(folder / "abort_me.mp4", frames=10),
        "hang": write_test_video(folder / "hang_me.mp4", frames=10),
        "raise": write_test_video(folder / "raise_me.mp4", frames=10),
        "audio_only": write_audio_only(folder / "audio_only.m4a"),
        "missing": folder / "missing.mp4",
    }
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(b"\x00\x01not a video" * 500)
    paths["empty"] = folder / "empty.mp4"
    paths["garbage"] = folder / "garbage.mp4"
    return {role: str(path) for role, path in paths.items()}


def _run_pool(
    paths: list[str],
    decode_fn: Callable[..., DecodedVideo] = decode_video,
    config: DecodeConfig | None = None,
    workers: int = 2,
) -> list[decode_module.DecodeResult]:
    with DecodePool(config or DecodeConfig(num_frames=4), workers=workers, decode_fn=decode_fn) as pool:
        return list(pool.imap(paths))


def test_pool_mixed_inputs_in_order(pool_videos):
    roles = ["good_a", "empty", "good_b", "garbage", "audio_only", "missing", "good_c", "good_a"]
    paths = [pool_videos[role] for role in roles]

    results = _run_pool(paths)

    assert len(results) == len(paths)
    assert [r.index for r in results] == list(range(len(paths)))
    assert [r.path for r in results] == paths
    assert [r.status for r in results] == [
        "ok",
        "empty_file",
        "ok",
        "unknown_format",
        "no_video_stream",
        "read_error",
        "ok",
        "ok",
    ]
    for result in results:
        if result.status == "ok":
            assert result.error is None
            assert result.video is not None
            assert result.video.frames.shape == (4, 48, 64, 3)
        else:
            assert result.video is None
            assert result.error


def test_pool_survives_aborting_decoder(pool_videos):
    paths = [pool_videos[role] for role in ["good_a", "abort", "good_b", "good_c", "abort", "good_a"]]

    results = _run_pool(paths, decode_fn=decode_or_abort)

    assert [r.status for r in results] == ["ok", "decoder_crashed", "ok", "ok", "decoder_crashed", "ok"]
    assert "SIGABRT" in results[1].error
    assert "-6" in results[1].error


def test_pool_times_out_hanging_decoder(pool_videos):
    paths = [pool_videos[role] for role in ["good_a", "hang", "good_b", "good_c"]]
    config = DecodeConfig(num_frames=4, timeout_s=1.0)

    started = time.monotonic()
    results = _run_pool(paths, decode_fn=decode_or_hang, config=config)
    elapsed = time.monotonic() - started

    assert [r.status for r in results] == ["ok", "timeout", "ok", "ok"]
    assert "1 s" in results[1].error
    assert elapsed < 20


def test_pool_reports_other_exceptions(pool_videos):
    paths = [pool_videos[role] for role in ["raise", "good_a"]]

    results = _run_pool(paths, decode_fn=decode_or_raise)

    assert [r.status for r in results] == ["decode_error", "ok"]
    assert "RuntimeError" in results[0].error
    assert "injected failure" in results[0].error


def test_pool_bounds_inputs_in_flight(pool_videos):
    total = 12
    max_in_flight = 3
    pulled = 0

    def inputs() -> Iterator[str]:
        nonlocal pulled
        for _ in range(total):
            pulled += 1
            yield pool_videos["good_a"]

    lead = []
    with DecodePool(DecodeConfig(num_frames=2), workers=1, max_in_flight=max_in_flight) as pool:
        for position, result in enumerate(pool.imap(inputs())):
            assert result.status == "ok"
            lead.append(pulled - position)

    assert len(lead) == total
    assert max(lead) == max_in_flight
    assert all(1 <= ahead <= max_in_flight for ahead in lead)


def test_pool_stops_early_without_hanging(pool_videos):
    with DecodePool(DecodeConfig(num_frames=2), workers=2) as pool:
        results = pool.imap([pool_videos["good_a"]] * 20)
        first = next(results)
        results.close()

    assert first.index == 0
    assert first.status == "ok"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"workers": 2, "max_in_flight": 0},
        {"workers": 2, "decode_fn": lambda path, config: None},
        {"workers": 2, "tasks_per_worker": 0},
    ],
)
def test_pool_rejects_invalid_arguments(kwargs):
    with pytest.raises(InvalidInputError):
        DecodePool(DecodeConfig(), **kwargs)
