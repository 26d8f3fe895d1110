"""Builds over the real videos kept beside the repository in ``../shared/data``."""

import json
from pathlib import Path

import pytest

from grdr_core.build import BuildConfig, build_index
from grdr_core.decode import DecodeConfig
from grdr_core.features import EncoderConfig
from grdr_core.index import open_index
from grdr_core.manifest import read_manifest
from grdr_core.quantize import QuantizerConfig
from grdr_core.report import index_report
from grdr_core.versions import resolve_version

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "msvd" / "clips").is_dir(),
    reason=f"real test videos not found at {SHARED_DATA} (present only in the development checkout)",
)

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".webm", ".mov"}


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def _build(root: Path, out: Path, model: Path) -> None:
    config = BuildConfig(
        input_root=root,
        out_dir=out,
        decode=DecodeConfig(num_frames=12, timeout_s=120),
        encoder=EncoderConfig(model=str(model)),
        quantizer=QuantizerConfig(seed=0),
        workers=2,
    )
    build_index(config)


def test_msvd_clips_all_index_ok(tiny_clip_dir, tmp_path):
    out = tmp_path / "msvd"
    _build(SHARED_DATA / "msvd" / "clips", out, tiny_clip_dir)
    rows = read_manifest(resolve_version(out) / "manifest").to_pylist()

    assert len(rows) == 11
    assert [r["status"] for r in rows] == ["ok"] * 11
    assert all(r["frames_sampled"] == 12 for r in rows)
    assert all(r["video_id"].endswith(".avi") for r in rows)
    report = index_report(open_index(out))
    assert report["videos"]["indexed"] == 11


def test_whole_data_folder_gets_one_row_per_file(tiny_clip_dir, tmp_path):
    out = tmp_path / "all"
    _build(SHARED_DATA, out, tiny_clip_dir)
    rows = {r["video_id"]: r for r in read_manifest(resolve_version(out) / "manifest").to_pylist()}
    expected_files = _files_under(SHARED_DATA)

    assert sorted(rows) == expected_files
    assert {name.split("/")[0] for name in rows} == {"bad_videos", "msvd", "videos"}

    assert rows["bad_videos/empty.webm"]["status"] == "empty_file"
    assert "0 bytes" in rows["bad_videos/empty.webm"]["error"]
    for name in ("rotated_90.mov", "alpha_channel.webm", "failing_audio.mp4", "no_duration.webm"):
        assert rows[f"bad_videos/{name}"]["status"] == "ok", rows[f"bad_videos/{name}"]["error"]
    rotated = rows["bad_videos/rotated_90.mov"]
    assert (rotated["width"], rotated["height"]) == (320, 568)
    assert rotated["frames_sampled"] == 3
    assert rows["bad_videos/no_duration.webm"]["decoder"] == "pyav"
    # The damaged H.264 stream fails in decord; PyAV skips the broken packets.
    assert rows["bad_videos/corrupted.mp4"]["status"] == "ok"
    assert rows["bad_videos/corrupted.mp4"]["decoder"] == "pyav"

    for name, row in rows.items():
        if name.startswith(("videos/", "msvd/")):
            assert row["status"] == "ok", (name, row["error"])

    header = json.loads((resolve_version(out) / "index.json").read_text())
    assert header["counts"]["discovered"] == len(expected_files)
    assert header["counts"]["indexed"] + header["counts"]["failed"] == len(expected_files)
