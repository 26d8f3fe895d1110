"""End-to-end builds on generated and real videos, and the CLI around them."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from grdr_core.build import BuildConfig, BuildSummary, build_index
from grdr_core.decode import DecodeConfig
from grdr_core.errors import IndexExistsError, NothingIndexedError
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.index import open_index
from grdr_core.manifest import read_manifest
from grdr_core.quantize import QuantizerConfig
from grdr_core.report import format_report, index_report
from grdr_core.search import exact_dense_search, search_text
from grdr_core.testing.videos import write_audio_only, write_test_video
from grdr_core.versions import list_versions, read_current, resolve_version
from grdr_jobs.cli import cli
from grdr_schemas.manifest import VideoStatus


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return ClipEncoder(EncoderConfig(model=str(tiny_clip_dir)))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Six good generated videos in nested folders plus one of each failure kind."""
    root = tmp_path_factory.mktemp("mixed")
    for i in range(6):
        write_test_video(root / f"group{i % 2}" / f"clip{i}.mp4", frames=10 + 4 * i, width=64 + 16 * i, height=48)
    write_test_video(root / "same_name" / "clip0.mp4", frames=10)
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.avi").write_bytes(b"this is not a video file" * 100)
    write_audio_only(root / "audio_only.mkv")
    (root / "readme.txt").write_text("not a video")
    return root


def _config(root: Path, out: Path, tiny_clip_dir: Path, **overrides) -> BuildConfig:
    fields = dict(
        input_root=root,
        out_dir=out,
        decode=DecodeConfig(num_frames=4, timeout_s=60),
        encoder=EncoderConfig(model=str(tiny_clip_dir), batch_size=8),
        quantizer=QuantizerConfig(levels=2, codes_per_level=4, seed=0),
        workers=2,
        records_per_shard=3,
    )
    fields.update(overrides)
    return BuildConfig(**fields)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mixed_index(mixed_folder, tiny_clip_dir, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "index"
    summary = build_index(_config(mixed_folder, out, tiny_clip_dir), encoder=encoder)
    return out, summary


def test_build_records_every_file(mixed_index):
    out, summary = mixed_index
    manifest = read_manifest(resolve_version(out) / "manifest").to_pylist()
    by_id = {row["video_id"]: row for row in manifest}

    assert summary.discovered == 10
    assert len(manifest) == 10
    assert len(by_id) == 10
    assert summary.indexed + summary.failed == summary.discovered
    assert by_id["empty.mp4"]["status"] == VideoStatus.EMPTY_FILE.value
    assert by_id["garbage.avi"]["status"] == VideoStatus.UNKNOWN_FORMAT.value
    assert by_id["audio_only.mkv"]["status"] == VideoStatus.NO_VIDEO_STREAM.value
    assert "group0/clip0.mp4" in by_id
    assert "same_name/clip0.mp4" in by_id
    for row in manifest:
        if row["status"] == "ok":
            assert row["error"] is None
            assert row["frames_sampled"] == 4
            assert row["ordinal"] is not None
        else:
            assert row["error"]
            assert row["ordinal"] is None


def test_build_rows_follow_discovery_order_and_ordinals(mixed_index):
    out, _ = mixed_index
    manifest = read_manifest(resolve_version(out) / "manifest").to_pylist()
    ids = [row["video_id"] for row in manifest]
    ordinals = [row["ordinal"] for row in manifest if row["ordinal"] is not None]

    assert ids == sorted(ids)
    assert ordinals == list(range(7))


def test_build_metadata_of_generated_video(mixed_index):
    out, _ = mixed_index
    row = next(r for r in read_manifest(resolve_version(out) / "manifest").to_pylist() if r["video_id"] == "group1/clip3.mp4")
    assert row["width"] == 112
    assert row["height"] == 48
    assert (row["coded_width"], row["coded_height"], row["rotation"]) == (112, 48, 0)
    assert row["uri_bytes"] is None
    assert row["num_frames"] == 22
    assert row["fps"] == pytest.approx(10.0)
    assert row["duration_s"] == pytest.approx(2.2, abs=0.2)


def test_index_header_checksums_every_file(mixed_index):
    out, _ = mixed_index
    version = resolve_version(out)
    header = json.loads((version / "index.json").read_text())
    files = {p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()} - {"index.json"}

    assert set(header["files"]) == files
    for name, entry in header["files"].items():
        assert entry["sha256"] == _digest(version / name)
        assert entry["bytes"] == (version / name).stat().st_size
    assert header["counts"]["indexed"] == 7
    assert header["counts"]["discovered"] == 10
    assert header["encoder"]["checksum"].startswith("sha256:")
    assert not list(out.parent.glob(".index.tmp-*"))


def test_inspect_report(mixed_index):
    out, _ = mixed_index
    index = open_index(out)
    report = index_report(index)

    assert report["videos"]["by_status"] == {"empty_file": 1, "no_video_stream": 1, "ok": 7, "unknown_format": 1}
    ids = report["semantic_ids"]
    assert ids["levels"] == 2
    assert 1 <= ids["distinct_ids"] <= 7
    assert ids["largest_posting_list"] >= 1
    assert all(0 < use <= 1 for use in ids["codebook_use_per_level"])
    assert ids["distinct_prefixes"][0] == ids["codes_used_per_level"][0]
    assert ids["distinct_prefixes"][-1] == ids["distinct_ids"]
    assert ids["possible_prefixes"] == [ids["codebook_sizes"][0], ids["codebook_sizes"][0] * ids["codebook_sizes"][1]]
    assert "distinct prefixes  1 codes" in format_report(report)
    assert report["bytes"]["shards"] > 0
    assert report["bytes"]["trie"] > 0


def test_every_video_is_in_one_posting_list(mixed_index):
    out, _ = mixed_index
    index = open_index(out)
    seen = []
    for first in index.trie.children(()):
        for second in index.trie.children((first,)):
            seen.extend(index.trie.postings((first, second)).tolist())
    assert sorted(seen) == list(range(7))


def test_search_ranks_a_stored_embedding_first(mixed_index, encoder):
    out, _ = mixed_index
    index = open_index(out)
    target = 4
    query = index.shards.get([target])
    ordinals, scores = exact_dense_search(index.shards, query, k=3)
    assert ordinals[0, 0] == target
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-3)

    hits = search_text(index, encoder, "a red square", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert len({h.video_id for h in hits}) == 5
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_rebuild_is_byte_identical(mixed_folder, mixed_index, tiny_clip_dir, encoder, tmp_path):
    first, _ = mixed_index
    second = tmp_path / "again"
    build_index(_config(mixed_folder, second, tiny_clip_dir), encoder=encoder)
    first, second = resolve_version(first), resolve_version(second)

    shard_files = sorted(p.name for p in (first / "shards").iterdir())
    assert shard_files == sorted(p.name for p in (second / "shards").iterdir())
    assert len(shard_files) == 3  # 7 records, 3 per shard
    for name in shard_files:
        assert _digest(first / "shards" / name) == _digest(second / "shards" / name)
    assert _digest(first / "trie.lmdb") == _digest(second / "trie.lmdb")


def test_existing_output_needs_overwrite(mixed_folder, tiny_clip_dir, encoder, tmp_path):
    out = tmp_path / "index"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(IndexExistsError, match="--overwrite"):
        build_index(_config(mixed_folder, out, tiny_clip_dir), encoder=encoder)
    assert (out / "keep.txt").exists()

    (out / "keep.txt").unlink()
    out.rmdir()
    build_index(_config(mixed_folder, out, tiny_clip_dir), encoder=encoder)
    build_index(_config(mixed_folder, out, tiny_clip_dir, overwrite=True), encoder=encoder)
    assert list_versions(out) == ["v000001", "v000002"]
    assert read_current(out) == "v000002"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_nothing_indexed_raises_and_publishes_nothing(tiny_clip_dir, encoder, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mkv").write_bytes(b"junk")
    out = tmp_path / "index"

    with pytest.raises(NothingIndexedError, match="2 files discovered, 0 indexed"):
        build_index(_config(root, out, tiny_clip_dir), encoder=encoder)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]


def test_cli_build_inspect_search(mixed_folder, tiny_clip_dir, tmp_path):
    out = tmp_path / "cli-index"
    runner = CliRunner()
    common = ["--model", str(tiny_clip_dir), "--frames", "3", "--workers", "2", "--codes", "4"]

    result = runner.invoke(cli, ["build", str(mixed_folder), "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    assert "10 files discovered, 7 indexed, 3 failed" in result.stdout
    assert result.stdout.splitlines()[-1].split() == ["total", "10"]

    result = runner.invoke(cli, ["inspect", f"{out}/", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["videos"]["indexed"] == 7
    assert report["index"] == str(out)  # a local path, not named as a cached URL
    assert "cached_at" not in report

    result = runner.invoke(cli, ["search", str(out), "a dog runs", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    assert [r["rank"] for r in results] == [1, 2]


def test_cli_errors_print_one_line(tmp_path, tiny_clip_dir):
    import subprocess
    import sys

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    command = [sys.executable, "-m", "grdr_jobs.cli", "build", str(bad), "--out", str(tmp_path / "i"), "--model", str(tiny_clip_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "grdr-index: error: No video was indexed: 1 files discovered, 0 indexed, 1 failed (empty_file: 1)" in result.stderr
    assert "Traceback" not in result.stderr

    result = subprocess.run([sys.executable, "-m", "grdr_jobs.cli", "inspect", str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("grdr-index: error: Not a grdr index")


def test_search_rejects_other_encoder(mixed_index, tmp_path):
    from grdr_core.errors import ModelLoadError
    from grdr_core.search import load_query_encoder
    from grdr_core.testing.tiny_clip import write_tiny_clip

    other = write_tiny_clip(tmp_path / "other", seed=1)
    index = open_index(mixed_index[0])
    with pytest.raises(ModelLoadError, match="was built with"):
        load_query_encoder(index, model=str(other))


def test_status_column_values_are_known(mixed_index):
    out, _ = mixed_index
    statuses = set(pc.unique(read_manifest(resolve_version(out) / "manifest", columns=["status"])["status"]).to_pylist())
    assert statuses <= {s.value for s in VideoStatus}


def test_folder_without_videos_raises(tiny_clip_dir, encoder, tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.txt").write_text("no videos here")
    with pytest.raises(NothingIndexedError, match="No video files found"):
        build_index(_config(root, tmp_path / "index", tiny_clip_dir), encoder=encoder)


def test_overwrite_never_deletes_what_is_not_an_index(mixed_folder, tiny_clip_dir, encoder, tmp_path):
    file_path = tmp_path / "notes.txt"
    file_path.write_text("not an index")
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("keep me")

    # A folder that merely contains a file named index.json is not an index either.
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "index.json").write_text("{}")
    (lookalike / "precious.txt").write_text("keep me")

    for out in (file_path, folder, lookalike):
        with pytest.raises(IndexExistsError, match="not a grdr index"):
            build_index(_config(mixed_folder, out, tiny_clip_dir, overwrite=True), encoder=encoder)
    assert file_path.read_text() == "not an index"
    assert (folder / "chapter1.tex").read_text() == "keep me"
    assert (lookalike / "precious.txt").read_text() == "keep me"


def test_output_cannot_be_the_input_or_contain_it(mixed_folder, tiny_clip_dir, encoder):
    from grdr_core.errors import InvalidInputError

    for out in (mixed_folder, mixed_folder.parent):
        with pytest.raises(InvalidInputError, match="input folder"):
            build_index(_config(mixed_folder, out, tiny_clip_dir, overwrite=True), encoder=encoder)
    assert (mixed_folder / "group0" / "clip0.mp4").is_file()


def test_index_files_are_readable_by_others(mixed_index):
    out, _ = mixed_index
    for path in out.rglob("*"):
        assert path.stat().st_mode & 0o044, path


def test_status_table_lists_every_status():
    summary = BuildSummary(Path("out"), 6, 3, {"ok": 3, "truncated": 2, "empty_file": 1}, 1.0)

    assert summary.status_table().splitlines() == [
        "status        files",
        "ok                3",
        "truncated         2",
        "empty_file        1",
        "total             6",
    ]


def test_cli_decode_limits_apply(mixed_folder, tiny_clip_dir, tmp_path):
    command = ["build", str(mixed_folder), "--out", str(tmp_path / "i"), "--model", str(tiny_clip_dir), "--workers", "1"]

    result = CliRunner().invoke(cli, [*command, "--max-pixels", "1000"])

    assert isinstance(result.exception, NothingIndexedError)
    assert "too_large: 7" in str(result.exception)


def test_failure_logs_are_capped_per_status(caplog, monkeypatch):
    import grdr_core.stages as stages
    from grdr_core.discovery import VideoFile

    monkeypatch.setattr(stages, "MAX_LOGGED_FAILURES_PER_STATUS", 2)
    file = VideoFile(video_id="a.mp4", uri="/data/a.mp4", size_bytes=0, fingerprint="x", path="/data/a.mp4")

    with caplog.at_level("WARNING", logger="grdr_core.stages"):
        for earlier in range(5):
            stages.log_failure(file, "truncated", "cut short", earlier)
        stages.log_failure(file, "empty_file", "0 bytes", 0)

    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Failed to index /data/a.mp4: truncated: cut short",
        "Failed to index /data/a.mp4: truncated: cut short",
        "3 files failed with status truncated; further ones are recorded in the manifest without a log line",
        "Failed to index /data/a.mp4: empty_file: 0 bytes",
    ]
