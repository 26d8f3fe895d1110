"""Robustness on the inputs real data lakes contain: one test per kind of broken or unusual file.

The corpus comes from ``bad_inputs.py``, generated once per session, plus the real
broken files of ``REAL_BAD_DIR`` when the checkout has them. One
``grdr-index build`` runs over all of it, as a user would run it. Each test checks a
kind's manifest row (status and the key words of its error), decodes the file again
where the frames matter, and checks that the build's counts add up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from click.testing import CliRunner, Result

import bad_inputs
import grdr_core.decode as decode_module
from grdr_core.captions import match_captions
from grdr_core.decode import DecodeConfig, DecodePool, decode_video, sample_frame_indices, sampling_times
from grdr_core.discovery import VIDEO_EXTENSIONS, path_text
from grdr_core.errors import VideoDecodeError
from grdr_core.manifest import read_manifest
from grdr_core.testing.videos import frame_index_from_red, render_frame, write_test_video
from grdr_core.versions import resolve_version
from grdr_jobs.cli import cli
from grdr_schemas import VideoStatus

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_BAD_DIR = DATA_DIR / "bad_videos"
SKIP_REASON = f"real test videos not found at {DATA_DIR} (only checkouts with ../shared/data have them)"
# Mean absolute difference in 8-bit levels between a decoded and an encoded frame, as in test_decode.py.
MAX_MEAN_ERROR = 4.0


@dataclass(frozen=True)
class Corpus:
    root: Path  # the folder that is built
    cases: dict[str, Path]  # generated files by case name
    captions: dict[str, Path]
    real_bad: list[str]  # video_ids of the linked real broken files


@dataclass(frozen=True)
class CorpusBuild:
    result: Result
    out: Path
    rows: dict[str, dict[str, Any]]  # manifest rows by video_id
    row_count: int
    header: dict[str, Any]
    video_files: int  # files with a video extension under the root, counted independently


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("bad_inputs")
    cases = bad_inputs.write_video_corpus(root / "videos")
    captions = bad_inputs.write_caption_corpus(root / "captions", ["one_frame.mp4", "grayscale.mkv"])
    real_bad = []
    if REAL_BAD_DIR.is_dir():
        linked = root / "videos" / "real_bad"
        linked.mkdir()
        for path in sorted(REAL_BAD_DIR.iterdir()):
            (linked / path.name).symlink_to(path)
            real_bad.append(f"real_bad/{path.name}")
    return Corpus(root / "videos", cases, captions, real_bad)


@pytest.fixture(scope="session")
def corpus_build(corpus: Corpus, tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CorpusBuild:
    out = tmp_path_factory.mktemp("bad_inputs_index") / "index"
    arguments = [
        "build", str(corpus.root), "--out", str(out), "--model", str(tiny_clip_dir),
        "--frames", "4", "--workers", "2", "--levels", "2", "--codes", "4",
        "--max-pixels", str(bad_inputs.BUILD_MAX_PIXELS), "--max-duration", str(bad_inputs.BUILD_MAX_DURATION_S),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    rows = read_manifest(resolve_version(out) / "manifest").to_pylist()
    header = json.loads((resolve_version(out) / "index.json").read_text())
    return CorpusBuild(result, out, {row["video_id"]: row for row in rows}, len(rows), header, _count_video_files(corpus.root))


def _count_video_files(root: Path) -> int:
    return sum(
        1 for _, _, names in os.walk(root) for name in names if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS
    )


def _row(corpus: Corpus, build: CorpusBuild, case: str) -> dict[str, Any]:
    video_id, _ = path_text(corpus.cases[case].relative_to(corpus.root).as_posix())
    return build.rows[video_id]


def _assert_counts_conserved(build: CorpusBuild) -> None:
    counts = build.header["counts"]
    statuses = Counter(row["status"] for row in build.rows.values())

    assert build.row_count == len(build.rows), "two manifest rows share a video_id"
    assert build.row_count == build.video_files
    assert counts["discovered"] == build.row_count
    assert counts["indexed"] + counts["failed"] == counts["discovered"]
    assert counts["by_status"] == dict(statuses)
    assert statuses[VideoStatus.OK.value] == counts["indexed"] == build.header["shards"]["count"]
    assert set(statuses) <= {status.value for status in VideoStatus}


def _assert_failed(row: dict[str, Any], status: str, words: list[str]) -> None:
    assert row["status"] == status, row["error"]
    assert row["ordinal"] is None
    for word in words:
        assert word in row["error"]


def _assert_ok(row: dict[str, Any]) -> None:
    assert row["status"] == VideoStatus.OK.value, row["error"]
    assert row["error"] is None
    assert row["ordinal"] is not None


def _decode_error(path: Path, config: DecodeConfig | None = None) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError) as info:
        decode_video(str(path), config or DecodeConfig())
    return info.value


def _raise_in_decord(*args: object, **kwargs: object) -> None:
    raise RuntimeError("decord disabled by the test")


@pytest.fixture(params=["decord", "pyav"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Name of the decoder that ``decode_video`` must use. For "pyav", decord is made to fail."""
    if request.param == "pyav":
        monkeypatch.setattr(decode_module, "_read_with_decord", _raise_in_decord)
    return request.param


# --- videos -------------------------------------------------------------------------

TRUNCATED_CASES = [
    f"truncated_{layout}_{label}"
    for layout in ("moov_last", "faststart")
    for label in [*(f"cut_{cut}" for cut in bad_inputs.TRUNCATION_CUTS), "minus_2k"]
]


@pytest.mark.parametrize("case", TRUNCATED_CASES)
def test_truncated_mp4(corpus, corpus_build, case):
    row = _row(corpus, corpus_build, case)

    _assert_failed(row, VideoStatus.TRUNCATED.value, ["is truncated", "box at byte", "declares", "incomplete download"])
    assert f"the file has {corpus.cases[case].stat().st_size} bytes" in row["error"]
    _assert_counts_conserved(corpus_build)


def test_overwritten_middle_keeps_good_frames(corpus, corpus_build):
    path = corpus.cases["overwritten_middle"]
    row = _row(corpus, corpus_build, "overwritten_middle")

    video = decode_video(str(path), DecodeConfig(num_frames=12, short_side=240))

    _assert_ok(row)
    assert row["decoder"] == "pyav"  # decord gives up on the damaged packet
    assert video.frames.shape == (12, 240, 320, 3)
    # The random bytes land in the second group of pictures (frames 10-19). Frames of
    # the other groups must come out as encoded. The noise texture is in the bottom half.
    for frame, index in zip(video.frames, sample_frame_indices(30, 12)):
        if 10 <= index < 20:
            continue
        expected = render_frame(index, 320, 240)[:120]
        assert np.abs(frame[:120].astype(np.int16) - expected).mean() < MAX_MEAN_ERROR, index
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("empty", VideoStatus.EMPTY_FILE.value, ["is empty", "0 bytes"]),
        ("text_named_mp4", VideoStatus.UNKNOWN_FORMAT.value, ["not in a video container format", "b'These are meetin'"]),
    ],
)
def test_not_a_video(corpus, corpus_build, case, status, words):
    row = _row(corpus, corpus_build, case)

    _assert_failed(row, status, words)
    assert row["size_bytes"] == corpus.cases[case].stat().st_size
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize("case", ["audio_only_m4a", "audio_only_mp4"])
def test_audio_only(corpus, corpus_build, case):
    path = corpus.cases[case]

    error = _decode_error(path)

    assert error.status == VideoStatus.NO_VIDEO_STREAM.value
    assert "has no video stream; it has 1 audio stream" in str(error)
    video_id, _ = path_text(path.relative_to(corpus.root).as_posix())
    if path.suffix == ".m4a":
        # .m4a names an audio file, so discovery does not treat it as a video input.
        assert video_id not in corpus_build.rows
    else:
        _assert_failed(corpus_build.rows[video_id], VideoStatus.NO_VIDEO_STREAM.value, ["no video stream", "audio stream"])
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize("case", ["zero_frames_mkv", "zero_frames_mp4", "one_frame"])
def test_frame_count(corpus, corpus_build, case):
    row = _row(corpus, corpus_build, case)

    if case == "one_frame":
        video = decode_video(str(corpus.cases[case]), DecodeConfig(num_frames=12))
        _assert_ok(row)
        assert (row["num_frames"], row["frames_sampled"]) == (1, 1)
        assert video.frames.shape == (1, 48, 64, 3)
        assert np.abs(video.frames[0].astype(np.int16) - render_frame(0, 64, 48)).mean() < MAX_MEAN_ERROR
    else:
        _assert_failed(row, VideoStatus.NO_FRAMES.value, ["no frame of", "all 10 packets", "failed to decode"])
    _assert_counts_conserved(corpus_build)


def test_vfr_gap_samples_by_time(corpus, corpus_build, decoder):
    row = _row(corpus, corpus_build, "vfr_gap")
    pts_s = np.array(bad_inputs.VFR_GAP_PTS_MS) / 1000
    end_s = pts_s[-1] + 0.1
    # The frame on screen at each of 12 evenly spaced times: frame 9 stays up through the gap.
    expected = (np.searchsorted(pts_s, sampling_times(0.0, end_s, 12), side="right") - 1).tolist()

    video = decode_video(str(corpus.cases["vfr_gap"]), DecodeConfig(num_frames=12))

    assert video.decoder == decoder
    assert expected == [1, 4, 8, 9, 9, 9, 9, 9, 9, 11, 15, 18]
    assert [frame_index_from_red(frame[24, 32, 0]) for frame in video.frames] == expected
    assert video.timestamps_s == pytest.approx(pts_s[expected].tolist(), abs=1e-3)
    _assert_ok(row)
    assert row["num_frames"] == 20
    assert row["duration_s"] == pytest.approx(end_s, abs=0.05)
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation(corpus, corpus_build, degrees):
    row = _row(corpus, corpus_build, f"rotated_{degrees}")
    quarter = degrees in (90, 270)

    video = decode_video(str(corpus.cases[f"rotated_{degrees}"]), DecodeConfig(num_frames=3))

    _assert_ok(row)
    assert (row["coded_width"], row["coded_height"]) == (96, 64)
    assert (row["width"], row["height"]) == ((64, 96) if quarter else (96, 64))
    assert row["rotation"] == degrees
    # The display matrix turns the stored picture counterclockwise, as np.rot90 does.
    expected = np.stack([np.rot90(render_frame(i, 96, 64), k=degrees // 90) for i in sample_frame_indices(6, 3)])
    assert video.frames.shape == expected.shape
    assert np.abs(video.frames.astype(np.int16) - expected).mean() < MAX_MEAN_ERROR
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize(
    "case, size",
    [("one_pixel_tall", (64, 1)), ("three_by_three", (3, 3)), ("grayscale", (64, 48)), ("alpha", (64, 48))],
)
def test_unusual_pixels(corpus, corpus_build, case, size):
    width, height = size
    row = _row(corpus, corpus_build, case)

    video = decode_video(str(corpus.cases[case]), DecodeConfig(num_frames=12))

    _assert_ok(row)
    assert (row["coded_width"], row["coded_height"]) == size
    assert video.frames.shape == (6, height, width, 3)
    assert video.frames.dtype == np.uint8
    if case == "grayscale":
        assert np.array_equal(video.frames[..., 0], video.frames[..., 1])
        assert np.array_equal(video.frames[..., 0], video.frames[..., 2])
    else:
        # Alpha is dropped: the colour channels come out as encoded.
        expected = np.stack([render_frame(i, width, height) for i in range(6)])
        assert np.abs(video.frames.astype(np.int16) - expected).mean() < MAX_MEAN_ERROR
    _assert_counts_conserved(corpus_build)


# Decodes the UHD clip in a fresh interpreter and prints the frames' shape and the peak
# RSS in KiB. VmHWM starts afresh at exec, but ru_maxrss would keep the forked pytest's peak.
PEAK_RSS_SCRIPT = """
import re, sys
import grdr_core.decode as decode
if sys.argv[2] == "pyav":
    decode._read_with_decord = None  # calling None raises TypeError, so decode_video falls back to PyAV
video = decode.decode_video(sys.argv[1], decode.DecodeConfig(num_frames=12))
peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(video.decoder, video.frames.shape, peak)
"""
# All 20 frames of the UHD clip as RGB would take 20 x 3840 x 2160 x 3 bytes = 475 MiB.
# Measured once with this script on a 2-core x86-64 Linux VM: 137 MiB peak with decord,
# 185 MiB with PyAV.
MAX_UHD_PEAK_RSS_MIB = 400


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
@pytest.mark.parametrize("which", ["decord", "pyav"])
def test_uhd_high_gop_memory_bounded(corpus, corpus_build, which):
    row = _row(corpus, corpus_build, "uhd_high_gop")

    output = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(corpus.cases["uhd_high_gop"]), which],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip

    _assert_ok(row)
    assert (row["coded_width"], row["coded_height"]) == bad_inputs.UHD_SIZE
    assert row["frames_sampled"] == 4
    assert output[0] == which
    assert " ".join(output[1:-1]) == "(12, 224, 398, 3)"
    assert int(output[-1]) / 1024 < MAX_UHD_PEAK_RSS_MIB
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize(
    "case, words",
    [
        ("over_pixel_limit", ["4096x2304 = 9437184 pixels per frame", f"limit of {bad_inputs.BUILD_MAX_PIXELS}", "max_pixels"]),
        ("long_clip", ["lasts 601.0 s", f"limit of {bad_inputs.BUILD_MAX_DURATION_S:g} s", "max_duration_s"]),
    ],
)
def test_size_limits(corpus, corpus_build, case, words):
    row = _row(corpus, corpus_build, case)

    _assert_failed(row, VideoStatus.TOO_LARGE.value, words)
    assert decode_video(str(corpus.cases[case]), DecodeConfig(max_pixels=None, max_duration_s=None)).frames.shape[0] >= 1
    _assert_counts_conserved(corpus_build)


@pytest.mark.parametrize("case", ["name_spaces", "name_non_ascii", "name_leading_dash", "name_latin1"])
def test_file_names(corpus, corpus_build, case):
    path = corpus.cases[case]
    row = _row(corpus, corpus_build, case)

    _assert_ok(row)
    assert row["decoder"] == "decord"  # decord opens a name that is not UTF-8 through /proc/self/fd
    row["video_id"].encode("utf-8")  # valid UTF-8, or this raises
    if case == "name_latin1":
        assert row["video_id"] == "names/caf\\xe9 latin1.mp4"
        assert row["uri_bytes"] == os.fsencode(path)
        assert os.path.samefile(row["uri_bytes"], path)
    else:
        assert row["video_id"] == f"names/{path.name}"
        assert row["uri"] == str(path)
        assert row["uri_bytes"] is None
    _assert_counts_conserved(corpus_build)


def test_named_pipe_is_not_opened(corpus, corpus_build):
    row = _row(corpus, corpus_build, "named_pipe")

    _assert_failed(row, VideoStatus.READ_ERROR.value, ["is not a regular file", "prw"])
    assert row["fingerprint"] == "not-a-regular-file"
    _assert_counts_conserved(corpus_build)


REAL_BAD_STATUSES = {
    "alpha_channel.webm": "ok",
    "corrupted.mp4": "ok",
    "empty.webm": "empty_file",
    "failing_audio.mp4": "ok",
    "no_duration.webm": "ok",
    "rotated_90.mov": "ok",
}


@pytest.mark.parametrize("name", sorted(REAL_BAD_STATUSES))
def test_real_bad_videos(corpus, corpus_build, name):
    if not corpus.real_bad:
        pytest.skip(SKIP_REASON)
    row = corpus_build.rows[f"real_bad/{name}"]

    assert row["status"] == REAL_BAD_STATUSES[name], row["error"]
    assert (row["error"] is None) == (row["status"] == "ok")
    _assert_counts_conserved(corpus_build)


def test_cli_prints_status_table(corpus_build):
    lines = corpus_build.result.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("status"))) :]
    by_status = corpus_build.header["counts"]["by_status"]

    assert table[0].split() == ["status", "files"]
    assert {line.split()[0]: int(line.split()[1]) for line in table[1:-1]} == by_status
    assert table[-1].split() == ["total", str(corpus_build.video_files)]
    assert f"{corpus_build.video_files} files discovered" in corpus_build.result.stdout
    _assert_counts_conserved(corpus_build)


# --- worker recycling ---------------------------------------------------------------

DECODES = 2_000
TASKS_PER_WORKER = 250


def test_pool_resources_stay_bounded(tmp_path):
    path = str(write_test_video(tmp_path / "tiny.mp4", frames=2, width=16, height=16))
    me = psutil.Process()
    samples: list[tuple[int, int, int, list[tuple[int, int, int]]]] = []
    worker_pids: set[int] = set()

    with DecodePool(DecodeConfig(num_frames=1), workers=2, tasks_per_worker=TASKS_PER_WORKER) as pool:
        for position, result in enumerate(pool.imap([path] * DECODES)):
            assert result.status == "ok", result.error
            if position % 100 == 50:
                workers = [(c.pid, c.memory_info().rss, c.num_fds()) for c in me.children(recursive=True)]
                worker_pids.update(pid for pid, _, _ in workers)
                samples.append((position, me.memory_info().rss, me.num_fds(), workers))

    early, late = samples[:3], samples[-3:]
    mib = 1 << 20
    assert len(worker_pids) >= DECODES // TASKS_PER_WORKER  # the pool replaced its workers
    assert max(s[2] for s in late) <= max(s[2] for s in early) + 2
    assert max(s[1] for s in late) <= max(s[1] for s in early) + 32 * mib
    early_workers = [w for s in early for w in s[3]]
    late_workers = [w for s in late for w in s[3]]
    assert max(rss for _, rss, _ in late_workers) <= max(rss for _, rss, _ in early_workers) + 32 * mib
    assert max(fds for _, _, fds in late_workers) <= max(fds for _, _, fds in early_workers) + 2


# --- captions -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def index_ids(corpus_build: CorpusBuild) -> np.ndarray:
    ok = sorted((row["ordinal"], video_id) for video_id, row in corpus_build.rows.items() if row["ordinal"] is not None)
    return np.array([video_id for _, video_id in ok], dtype=object)


def _assert_rows_conserved(report) -> None:
    assert report.rows == report.used + report.unknown_video + report.empty + report.duplicate


@pytest.mark.parametrize(
    "case, texts, repaired",
    [
        ("utf8_bom", ["a dog runs", "a cat sleeps"], 0),
        ("crlf", ["a dog runs", "a cat sleeps"], 0),
        ("quoted_newlines", ['a dog, brown,\nruns "fast"', "two\r\nlines"], 0),
        ("cp1252", ["a café – “crème brûlée”", "plain text"], 1),
        ("lone_surrogate_csv", ["bad \ufffd text", "fine"], 1),
        ("lone_surrogate_jsonl", ["bad \ufffd text", "fine"], 1),
    ],
)
def test_caption_encodings(corpus, index_ids, case, texts, repaired):
    captions = match_captions(corpus.captions[case], index_ids)
    ordinal = {video_id: i for i, video_id in enumerate(index_ids)}

    assert captions.texts == texts
    assert captions.ordinals.tolist() == [ordinal["one_frame.mp4"], ordinal["grayscale.mkv"]]
    assert captions.report.repaired_text == repaired
    if repaired:
        assert "not valid UTF-8" in captions.report.describe()
    _assert_rows_conserved(captions.report)


@pytest.mark.parametrize(
    "case, counts, words",
    [
        # counts: rows, used, unknown_video, empty, duplicate, videos_with_several_captions, videos_with_captions
        ("empty_caption", (3, 1, 0, 2, 0, 0, 1), ["2 empty"]),
        ("duplicate_rows", (3, 2, 0, 0, 1, 0, 2), ["1 duplicates"]),
        ("conflicting_ids", (3, 3, 0, 0, 0, 1, 2), ["1 videos have several distinct captions, each kept"]),
        ("coverage", (3, 1, 2, 0, 0, 0, 1), ["2 with a video_id not in the index", "'no_such_video.mp4'", "'missing/clip.avi'"]),
    ],
)
def test_caption_rows(corpus, index_ids, case, counts, words):
    report = match_captions(corpus.captions[case], index_ids).report

    assert (
        report.rows, report.used, report.unknown_video, report.empty, report.duplicate,
        report.videos_with_several_captions, report.videos_with_captions,
    ) == counts  # fmt: skip
    assert report.videos_without_captions == len(index_ids) - report.videos_with_captions
    assert f"{report.videos_without_captions} indexed videos have no caption" in report.describe()
    assert "one_frame.mp4" not in report.uncaptioned_examples
    for word in words:
        assert word in report.describe()
    _assert_rows_conserved(report)


def test_long_caption_truncation_recorded(corpus, corpus_build, tmp_path):
    from grdr_core.train_index import train_index
    from grdr_core.training import TrainConfig

    index_dir = tmp_path / "index"
    shutil.copytree(corpus_build.out, index_dir)
    config = TrainConfig(views=1, levels=1, codes_per_level=2, hidden=16, epochs_per_level=1, polish_epochs=1, batch_size=8)

    summary = train_index(index_dir, config, captions=corpus.captions["long_caption"])

    header = json.loads((resolve_version(index_dir) / "index.json").read_text())
    assert summary.captions.used == 2
    assert summary.captions.truncated == 1
    assert header["tokenizer"]["caption_report"]["truncated"] == 1
    assert "1 captions exceed the text encoder's context and were truncated" in summary.describe()
    _assert_rows_conserved(summary.captions)
