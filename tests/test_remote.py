"""Tests of cloud paths against a real S3 API: a moto server on 127.0.0.1 (see ``moto_s3``).

Covers discovery over ``s3://``, decoding of remote videos in the worker pool, upload and
download of directory trees and the local cache of remote indexes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pytest
from moto_s3 import moto_endpoint, network_guard, s3_bucket, s3_env, s3_requests  # noqa: F401 (fixtures)

from grdr_core import remote
from grdr_core.decode import DecodeConfig, DecodePool, decode_video
from grdr_core.discovery import discover_videos
from grdr_core.errors import IndexFormatError, InvalidInputError, VideoDecodeError
from grdr_core.remote import download_tree, is_remote, join_url, open_remote_index, upload_tree
from grdr_core.testing.videos import write_test_video
from grdr_schemas import VideoStatus
from small_builds import small_build_config, update_stopped_at

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MSVD_CLIPS = DATA_DIR / "msvd" / "clips"
SKIP_REASON = f"real test videos not found at {MSVD_CLIPS} (only checkouts with ../shared/data have them)"

CONFIG = DecodeConfig(num_frames=4, short_side=64, timeout_s=60.0)


def _msvd_clips(count: int) -> list[Path]:
    clips = sorted(MSVD_CLIPS.glob("*.avi")) if MSVD_CLIPS.is_dir() else []
    if len(clips) < count:
        pytest.skip(SKIP_REASON)
    return clips[:count]


def _put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _index_files(version: str) -> dict[str, bytes]:
    rng = np.random.default_rng(len(version))
    return {
        "index.json": f'{{"version": "{version}"}}\n'.encode(),
        "trie/data.mdb": rng.bytes(50_000),
        "manifest.parquet": rng.bytes(3_000),
    }


# --- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://bucket/videos", True),
        ("gs://bucket", True),
        ("memory://x", True),
        ("simplecache::s3://bucket/k", True),
        ("/data/videos", False),
        ("relative/videos", False),
        ("file:///data/videos", False),
        ("/data/a::b.mp4", False),
        (Path("s3://not-a-url"), False),
    ],
)
def test_is_remote(url, expected):
    assert is_remote(url) is expected


def test_join_url():
    assert join_url("s3://bucket/index/", "versions", "v1") == "s3://bucket/index/versions/v1"
    assert join_url("s3://bucket", "/CURRENT") == "s3://bucket/CURRENT"
    assert join_url("/data/index", "CURRENT") == os.path.join("/data/index", "CURRENT")


def test_local_path_of_file_url(tmp_path):
    assert remote.local_path(f"file://{tmp_path}") == tmp_path
    assert remote.local_path(str(tmp_path)) == tmp_path
    with pytest.raises(InvalidInputError, match="local path"):
        remote.local_path("s3://bucket/x")


@pytest.mark.parametrize("call", [discover_videos, remote.filesystem, open_remote_index, remote.list_files])
def test_unknown_protocol_raises(call):
    with pytest.raises(InvalidInputError, match="Unknown protocol 'nosuchproto'"):
        call("nosuchproto://bucket/videos")


def test_unknown_protocol_on_upload_raises(tmp_path):
    _write_tree(tmp_path, {"a.bin": b"x"})
    with pytest.raises(InvalidInputError, match="Unknown protocol"):
        upload_tree(tmp_path, "nosuchproto://bucket/index")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_missing_backend_names_package():
    with pytest.raises(InvalidInputError, match=r"pip install gcsfs"):
        discover_videos("gs://bucket/videos")


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"ETag": '"abc"', "LastModified": "x"}, "etag:7:abc"),
        ({"etag": "def"}, "etag:7:def"),
        ({"mtime": 1700000000.5}, "mtime:7:1700000000.5"),
        ({}, "size:7"),
    ],
)
def test_fingerprint_from_listing(info, expected):
    assert remote.fingerprint_from_listing(info, 7) == expected


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "cache"))
    assert remote.default_cache_dir() == tmp_path / "cache"

    monkeypatch.delenv("GRDR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert remote.default_cache_dir() == tmp_path / "xdg" / "grdr"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert remote.default_cache_dir() == Path.home() / ".cache" / "grdr"


def test_apply_client_environment(monkeypatch):
    for name in remote.client_environment():
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_PROFILE", "old")
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    before = fsspec.filesystem("memory")

    remote.apply_client_environment({"AWS_DEFAULT_REGION": "eu-west-1"})

    assert os.environ.get("AWS_PROFILE") is None
    assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert os.environ["UNRELATED_VARIABLE"] == "kept"
    assert fsspec.filesystem("memory") is not before  # cached instances were dropped


def test_network_guard_blocks_other_hosts(network_guard):
    assert socket.socket.connect.__name__ == "connect"
    with pytest.raises(PermissionError, match="blocked"):
        network_guard.check(socket.AF_INET, "192.0.2.1", "connection to")
    with pytest.raises(PermissionError, match="blocked"):
        socket.getaddrinfo("s3.amazonaws.com", 443)
    network_guard.check(socket.AF_INET, "127.0.0.1", "connection to")
    network_guard.blocked.clear()  # expected blocks; the fixture fails the test on any left


def test_s3_env_points_at_loopback(s3_env):
    assert s3_env.startswith("http://127.0.0.1:")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_env
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


# --- discovery ------------------------------------------------------------------------


def _video_tree(root: Path) -> Path:
    """Write a folder of real or generated videos in subfolders, with a file that is not a video."""
    clips = sorted(MSVD_CLIPS.glob("*.avi"))[:3] if MSVD_CLIPS.is_dir() else []
    (root / "sub" / "deeper").mkdir(parents=True)
    if len(clips) == 3:
        shutil.copy(clips[0], root / "a.avi")
        shutil.copy(clips[1], root / "sub" / "b.avi")
        shutil.copy(clips[2], root / "sub" / "deeper" / "c.AVI")
    else:
        write_test_video(root / "a.mp4", frames=10)
        write_test_video(root / "sub" / "b.mkv", frames=12)
        write_test_video(root / "sub" / "deeper" / "c.MP4", frames=14)
    (root / "sub" / "notes.txt").write_text("not a video")
    return root


def test_s3_discovery_matches_local(tmp_path, s3_bucket):
    local = _video_tree(tmp_path / "videos")
    prefix = f"{s3_bucket}/lake/videos"
    upload_tree(local, prefix)

    local_videos = discover_videos(local)
    remote_videos = discover_videos(prefix)

    assert len(local_videos) == 3
    assert [(v.video_id, v.size_bytes) for v in remote_videos] == [(v.video_id, v.size_bytes) for v in local_videos]
    for video in remote_videos:
        assert video.uri == f"{prefix}/{video.video_id}"
        assert video.path == video.uri
        assert video.uri_bytes is None
        assert video.fingerprint.startswith(f"etag:{video.size_bytes}:")


def test_s3_discovery_fingerprint_tracks_content(tmp_path, s3_bucket):
    _put(f"{s3_bucket}/v/a.mp4", b"first")
    (before,) = discover_videos(f"{s3_bucket}/v")
    _put(f"{s3_bucket}/v/a.mp4", b"other")
    (after,) = discover_videos(f"{s3_bucket}/v")

    assert before.size_bytes == after.size_bytes == 5
    assert before.fingerprint != after.fingerprint


def test_s3_discovery_of_bucket_root_and_folder_markers(s3_bucket):
    _put(f"{s3_bucket}/top.webm", b"x")
    _put(f"{s3_bucket}/folder/", b"")  # a folder marker, as the S3 console creates them
    _put(f"{s3_bucket}/folder/inner.mov", b"xy")

    videos = discover_videos(s3_bucket)

    assert [(v.video_id, v.size_bytes) for v in videos] == [("folder/inner.mov", 2), ("top.webm", 1)]


def test_s3_discovery_missing_prefix_raises(s3_bucket):
    with pytest.raises(InvalidInputError, match="not found"):
        discover_videos(f"{s3_bucket}/no/such/prefix")


def test_s3_discovery_of_an_object_raises(s3_bucket):
    _put(f"{s3_bucket}/v/a.mp4", b"x")
    with pytest.raises(InvalidInputError, match="not a directory"):
        discover_videos(f"{s3_bucket}/v/a.mp4")


# --- decoding -------------------------------------------------------------------------


@pytest.fixture(params=["generated", "msvd"])
def video_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "msvd":
        return _msvd_clips(1)[0]
    return write_test_video(tmp_path / "generated.mp4", frames=20, width=96, height=64)


def test_decoding_s3_video_matches_local(video_file, s3_bucket, s3_requests, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the pool puts downloads
    url = f"{s3_bucket}/clips/{video_file.name}"
    _put(url, video_file.read_bytes())
    expected = decode_video(str(video_file), CONFIG)

    with DecodePool(CONFIG, workers=2) as pool:
        results = list(pool.imap([url, str(video_file), url]))

    assert [r.status for r in results] == ["ok", "ok", "ok"]
    for result in results:
        np.testing.assert_array_equal(result.video.frames, expected.frames)
        assert result.video.timestamps_s == expected.timestamps_s
    key_path = url.removeprefix("s3:/")
    assert s3_requests.paths("GET").count(key_path) == 2  # the workers downloaded it from the moto server
    assert list(tmp_path.glob("grdr-fetch-*")) == []  # the download folder is gone after close


def test_pool_decodes_local_name_with_double_colon(tmp_path):
    path = write_test_video(tmp_path / "clip::v2.mp4", frames=10)

    with DecodePool(CONFIG, workers=1) as pool:
        (result,) = pool.imap([str(path)])

    assert result.status == "ok"
    assert len(result.video.frames) == CONFIG.num_frames


def test_missing_object_is_read_error(s3_bucket):
    url = f"{s3_bucket}/clips/missing.mp4"

    with DecodePool(CONFIG, workers=1) as pool:
        (result,) = pool.imap([url])

    assert result.status == VideoStatus.READ_ERROR.value
    assert result.video is None
    assert url in result.error
    assert "not found" in result.error


def test_undecodable_object_error_names_url(s3_bucket):
    url = f"{s3_bucket}/clips/text.mp4"
    _put(url, b"this is a text file, not a video " * 20)

    with DecodePool(CONFIG, workers=1) as pool:
        (result,) = pool.imap([url])

    assert result.status == VideoStatus.UNKNOWN_FORMAT.value
    assert url in result.error
    assert "video-" not in result.error  # the temporary file name is replaced by the URL


def test_object_larger_than_free_space_is_too_large(s3_bucket, tmp_path, monkeypatch):
    url = f"{s3_bucket}/clips/big.mp4"
    _put(url, b"\0" * 1000)
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=999))

    with pytest.raises(VideoDecodeError) as caught:
        remote.download_video(url, tmp_path)

    assert caught.value.status == VideoStatus.TOO_LARGE.value
    assert "1000 bytes" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_download_video_keeps_extension(s3_bucket, tmp_path):
    url = f"{s3_bucket}/clips/stream.ts"
    _put(url, b"abc")

    local = remote.download_video(url, tmp_path)

    assert local.parent == tmp_path
    assert local.suffix == ".ts"
    assert local.read_bytes() == b"abc"


def test_pool_follows_environment_changes(s3_bucket, tmp_path, monkeypatch):
    url = f"{s3_bucket}/clips/generated.mp4"
    _put(url, write_test_video(tmp_path / "generated.mp4", frames=10).read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    endpoint = os.environ["AWS_ENDPOINT_URL"]

    # One worker that is never replaced, so the three files run in the same process.
    with DecodePool(CONFIG, workers=1, tasks_per_worker=None) as pool:
        (first,) = pool.imap([url])
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail fast on the refused connection
        (second,) = pool.imap([url])
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.setenv(name, endpoint)
        monkeypatch.delenv("AWS_MAX_ATTEMPTS")
        (third,) = pool.imap([url])

    assert first.status == "ok"
    assert second.status == VideoStatus.READ_ERROR.value
    assert str(closed_port) in second.error
    assert third.status == "ok"


# --- directory trees ----------------------------------------------------------------


def test_upload_download_round_trip(tmp_path, s3_bucket):
    rng = np.random.default_rng(0)
    files = {
        "index.json": b"{}",
        "CURRENT": b"v1\n",
        "versions/v1/index.json": b'{"v": 1}',
        "versions/v1/trie/data.mdb": rng.bytes(200_000),
        "versions/v1/empty.bin": b"",
        "versions/v1/name with spaces.txt": "héllo".encode(),
    }
    source = _write_tree(tmp_path / "source", files)

    uploaded = upload_tree(source, f"{s3_bucket}/idx")
    downloaded = download_tree(f"{s3_bucket}/idx", tmp_path / "copy")

    assert sorted(uploaded) == sorted(f"{s3_bucket}/idx/{name}" for name in files)
    assert sorted(downloaded) == sorted(tmp_path / "copy" / name for name in files)
    assert _tree_bytes(tmp_path / "copy") == files


def test_upload_puts_markers_last(tmp_path, s3_bucket, s3_requests):
    files = {"CURRENT": b"v1\n", "versions/v1/index.json": b"{}", "versions/v1/a.bin": b"a", "versions/v1/z.bin": b"z"}
    upload_tree(_write_tree(tmp_path, files), f"{s3_bucket}/idx")

    bucket_path = s3_bucket.removeprefix("s3:/")
    puts = [p.removeprefix(f"{bucket_path}/idx/") for p in s3_requests.paths("PUT")]
    assert puts[-1] == "CURRENT"
    assert puts[-2] == "versions/v1/index.json"
    assert sorted(puts[:-2]) == ["versions/v1/a.bin", "versions/v1/z.bin"]


def test_upload_to_file_url_creates_folders(tmp_path):
    files = {"a/b/c.bin": b"abc", "index.json": b"{}"}
    _write_tree(tmp_path / "source", files)

    upload_tree(tmp_path / "source", f"file://{tmp_path}/target/index")

    assert _tree_bytes(tmp_path / "target" / "index") == files


def test_upload_to_local_name_with_double_colon(tmp_path):
    files = {"sub/a.bin": b"a", "index.json": b"{}"}
    _write_tree(tmp_path / "source", files)

    upload_tree(tmp_path / "source", str(tmp_path / "index::v2"))
    download_tree(str(tmp_path / "index::v2"), tmp_path / "copy")

    assert _tree_bytes(tmp_path / "index::v2") == files
    assert _tree_bytes(tmp_path / "copy") == files


def test_upload_of_missing_or_empty_folder_raises(tmp_path, s3_bucket):
    with pytest.raises(InvalidInputError, match="not found"):
        upload_tree(tmp_path / "missing", f"{s3_bucket}/idx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="empty"):
        upload_tree(tmp_path / "empty", f"{s3_bucket}/idx")


def test_download_rejects_dot_dot_key(tmp_path, s3_bucket):
    _put(f"{s3_bucket}/idx/ok.bin", b"x")
    s3 = fsspec.filesystem("s3")
    bucket = s3_bucket.removeprefix("s3://")
    # botocore sends the key as given, so the object is stored under "idx/../escape.bin".
    s3.call_s3("put_object", Bucket=bucket, Key="idx/../escape.bin", Body=b"y")

    with pytest.raises(InvalidInputError, match="outside the target folder"):
        download_tree(f"{s3_bucket}/idx", tmp_path / "copy")
    assert not (tmp_path / "escape.bin").exists()


def test_download_of_missing_prefix_raises(tmp_path, s3_bucket):
    with pytest.raises(InvalidInputError, match="not found"):
        download_tree(f"{s3_bucket}/nothing", tmp_path / "copy")


# --- cached remote indexes --------------------------------------------------------------


def _get_paths_below(requests, bucket: str, prefix: str) -> list[str]:
    bucket_path = bucket.removeprefix("s3:/")
    below = f"{bucket_path}/{prefix}/"
    return [path.removeprefix(below) for path in requests.paths("GET") if path.startswith(below)]


def test_open_remote_index_caches_versioned_index(tmp_path, s3_bucket, s3_requests):
    url = f"{s3_bucket}/idx"
    cache = tmp_path / "cache"
    v1 = _index_files("v1")
    upload_tree(_write_tree(tmp_path / "v1" / "versions" / "v1", v1).parents[1], url)
    _put(f"{url}/CURRENT", b"v1\n")

    first = open_remote_index(url, cache_dir=cache)

    assert (first / "CURRENT").read_text().strip() == "v1"
    assert _tree_bytes(first / "versions" / "v1") == v1
    data_file = first / "versions" / "v1" / "trie" / "data.mdb"
    mtime = data_file.stat().st_mtime_ns

    s3_requests.requests.clear()
    second = open_remote_index(url, cache_dir=cache)

    assert second == first
    assert data_file.stat().st_mtime_ns == mtime
    assert sorted(set(_get_paths_below(s3_requests, s3_bucket, "idx"))) == ["CURRENT", "versions/v1/index.json"]

    v2 = _index_files("v2-longer-name")
    upload_tree(_write_tree(tmp_path / "v2" / "versions" / "v2", v2).parents[1], url)
    _put(f"{url}/CURRENT", b"v2\n")
    third = open_remote_index(url, cache_dir=cache)

    assert third != first
    assert (third / "CURRENT").read_text().strip() == "v2"
    assert _tree_bytes(third / "versions" / "v2") == v2
    assert not (third / "versions" / "v1").exists()  # only the current version is copied
    assert not first.exists()  # the outdated copy is removed


def test_open_remote_index_refreshes_changed_header(tmp_path, s3_bucket, s3_requests):
    url = f"{s3_bucket}/plain"
    cache = tmp_path / "cache"
    upload_tree(_write_tree(tmp_path / "one", _index_files("one")), url)
    first = open_remote_index(url, cache_dir=cache)
    assert _tree_bytes(first) == _index_files("one")

    upload_tree(_write_tree(tmp_path / "two", _index_files("two")), url)
    s3_requests.requests.clear()
    second = open_remote_index(url, cache_dir=cache)

    assert second != first
    assert _tree_bytes(second) == _index_files("two")
    assert "trie/data.mdb" in _get_paths_below(s3_requests, s3_bucket, "plain")


def test_open_remote_index_uses_cache_env(tmp_path, s3_bucket, monkeypatch):
    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "env-cache"))
    upload_tree(_write_tree(tmp_path / "one", _index_files("one")), f"{s3_bucket}/plain")

    local = open_remote_index(f"{s3_bucket}/plain")

    assert local.is_relative_to(tmp_path / "env-cache")


def test_open_remote_index_without_header_raises(tmp_path, s3_bucket):
    _put(f"{s3_bucket}/notindex/data.bin", b"x")
    with pytest.raises(IndexFormatError, match="not a grdr index"):
        open_remote_index(f"{s3_bucket}/notindex", cache_dir=tmp_path)


@pytest.mark.parametrize("current", [b"", b"../other\n", b"a/b"])
def test_open_remote_index_rejects_bad_current(tmp_path, s3_bucket, current):
    _put(f"{s3_bucket}/idx/CURRENT", current)
    with pytest.raises(IndexFormatError, match="CURRENT"):
        open_remote_index(f"{s3_bucket}/idx", cache_dir=tmp_path)


def test_open_remote_index_returns_local_paths_unchanged(tmp_path):
    assert open_remote_index(tmp_path, cache_dir=tmp_path / "cache") == tmp_path
    assert open_remote_index(f"file://{tmp_path}", cache_dir=tmp_path / "cache") == tmp_path
    assert not (tmp_path / "cache").exists()


def test_upload_to_missing_bucket_raises(tmp_path, s3_env):
    _write_tree(tmp_path, {"index.json": b"{}"})
    with pytest.raises(InvalidInputError, match="Failed to upload"):
        upload_tree(tmp_path, "s3://grdr-test-no-such-bucket/idx")


def _write_videos(folder: Path, count: int) -> Path:
    for i in range(count):
        write_test_video(folder / f"clip{i}.mp4", frames=6 + i, width=48 + 8 * i, height=40)
    return folder


def _build_lake_index(s3_bucket: str, tmp_path: Path, tiny_clip_dir: Path, videos: int) -> None:
    """Upload ``videos`` small clips to ``s3_bucket/lake`` and build ``s3_bucket/index`` from them."""
    from grdr_core.build import build_index

    upload_tree(_write_videos(tmp_path / "videos", videos), f"{s3_bucket}/lake")
    build_index(small_build_config(f"{s3_bucket}/lake", f"{s3_bucket}/index", tiny_clip_dir))


def test_build_from_s3_to_s3(s3_bucket, network_guard, tiny_clip_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from grdr_core.build import build_index
    from grdr_core.index import open_index
    from grdr_jobs.cli import cli

    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "cache"))
    videos = _write_videos(tmp_path / "videos", 4)
    (videos / "broken.avi").write_bytes(b"not a video" * 50)
    upload_tree(videos, f"{s3_bucket}/lake")

    summary = build_index(small_build_config(f"{s3_bucket}/lake", f"{s3_bucket}/index", tiny_clip_dir))
    local = tmp_path / "local-index"
    build_index(small_build_config(videos, local, tiny_clip_dir))

    assert summary.out_dir == f"{s3_bucket}/index"
    assert summary.discovered == 5
    assert summary.indexed == 4
    assert fsspec.filesystem("s3").exists(f"{s3_bucket}/index/CURRENT")
    index = open_index(f"{s3_bucket}/index")
    try:
        assert index.video_ids.to_pylist() == [f"clip{i}.mp4" for i in range(4)]
        assert index.uri(0) == f"{s3_bucket}/lake/clip0.mp4"
        assert np.array_equal(index.shards.get([0, 1, 2, 3]), open_index(local).shards.get([0, 1, 2, 3]))
    finally:
        index.close()

    result = CliRunner().invoke(cli, ["inspect", f"{s3_bucket}/index", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["index"] == f"{s3_bucket}/index"
    assert Path(report["cached_at"]).is_dir()
    assert report["videos"]["indexed"] == 4
    text = CliRunner().invoke(cli, ["inspect", f"{s3_bucket}/index"]).stdout
    assert text.startswith(f"index        {s3_bucket}/index ")
    # A second build to the same URL is rejected without --overwrite, and adds a version with it.
    again = CliRunner().invoke(cli, ["build", f"{s3_bucket}/lake", "--out", f"{s3_bucket}/index", "--model", str(tiny_clip_dir), "--workers", "1", "--frames", "3", "--codes", "2", "--levels", "2"])
    assert "An index exists" in str(again.exception)
    again = CliRunner().invoke(cli, ["build", f"{s3_bucket}/lake", "--out", f"{s3_bucket}/index", "--model", str(tiny_clip_dir), "--workers", "1", "--frames", "3", "--codes", "2", "--levels", "2", "--overwrite", "--keep-versions", "1"])
    assert again.exit_code == 0, again.output
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    # Only the new version was uploaded, and the older one was pruned from the bucket.
    assert [name.rsplit("/", 1)[-1] for name in fs.ls(f"{s3_bucket}/index/versions")] == ["v000002"]
    assert fs.cat(f"{s3_bucket}/index/CURRENT") == b"v000002\n"
    fs.pipe_file(f"{s3_bucket}/index/versions/v000003/shards/part", b"partial")
    listing = CliRunner().invoke(cli, ["versions", f"{s3_bucket}/index", "--json"])
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.stdout)
    assert [(row["name"], row["current"]) for row in rows] == [("v000002", True), ("v000003", False)]
    assert rows[0]["indexed"] == 4
    assert rows[0]["path"] == f"{s3_bucket}/index/versions/v000002"
    assert rows[1]["created_at"] is None  # no index.json: an upload in progress
    text = CliRunner().invoke(cli, ["versions", f"{s3_bucket}/index"]).stdout
    assert text.splitlines()[0].startswith("* v000002  created ")
    assert "v000003  index.json missing or unreadable" in text
    missing = CliRunner().invoke(cli, ["versions", f"{s3_bucket}/no-index"])
    assert missing.exit_code != 0
    assert "Not a versioned grdr index" in str(missing.exception)
    assert not network_guard.blocked


def test_build_from_features_to_s3(s3_bucket, network_guard, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grdr_core.embedding_index import build_index_from_features
    from grdr_core.index import open_index
    from grdr_core.quantize import QuantizerConfig

    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((12, 8)).astype(np.float32)
    features = tmp_path / "features.parquet"
    pq.write_table(pa.table({"video_id": [f"v{i}" for i in range(12)], "embedding": embeddings.tolist()}), features)

    for expected in ("v000001", "v000002", "v000003"):
        summary = build_index_from_features(
            features, f"{s3_bucket}/emb", encoder_name="test", quantizer=QuantizerConfig(levels=2, codes_per_level=2),
            overwrite=True, keep_versions=2,
        )
        assert summary.out_dir == f"{s3_bucket}/emb"
        assert fsspec.filesystem("s3").cat(f"{s3_bucket}/emb/CURRENT") == f"{expected}\n".encode()
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert [name.rsplit("/", 1)[-1] for name in fs.ls(f"{s3_bucket}/emb/versions")] == ["v000002", "v000003"]
    assert not any(Path.cwd().glob("s3:*"))
    index = open_index(f"{s3_bucket}/emb")
    try:
        assert index.video_ids.to_pylist() == [f"v{i}" for i in range(12)]
        normalized = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        np.testing.assert_allclose(index.shards.get(np.arange(12)), normalized, atol=2e-3)
    finally:
        index.close()
    assert not network_guard.blocked


def test_update_index_at_s3(s3_bucket, network_guard, tiny_clip_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from grdr_core.index import open_index
    from grdr_jobs.cli import cli

    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "cache"))
    _build_lake_index(s3_bucket, tmp_path, tiny_clip_dir, videos=3)
    # Another machine updates the index, so its cache has no local copy yet.
    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "other-cache"))
    write_test_video(tmp_path / "new.mp4", frames=9, width=64, height=48)
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp_path / "new.mp4"), f"{s3_bucket}/lake/new.mp4")
    fs.rm(f"{s3_bucket}/lake/clip0.mp4")

    result = CliRunner().invoke(
        cli, ["update", f"{s3_bucket}/index", "--model", str(tiny_clip_dir), "--workers", "1", "--keep-versions", "1", "--json"]
    )

    assert result.exit_code == 0, result.output
    # The moto server logs its requests on stderr; --json prints on stdout.
    payload = json.loads(result.stdout)
    assert payload["index"] == f"{s3_bucket}/index"
    assert (payload["version"], payload["added"], payload["removed"], payload["unchanged"]) == ("v000002", 1, 1, 2)
    fs.invalidate_cache()
    assert fs.cat(f"{s3_bucket}/index/CURRENT") == b"v000002\n"
    assert [name.rsplit("/", 1)[-1] for name in fs.ls(f"{s3_bucket}/index/versions")] == ["v000002"]
    index = open_index(f"{s3_bucket}/index")
    try:
        assert sorted(index.video_ids.to_pylist()) == ["clip1.mp4", "clip2.mp4", "new.mp4"]
    finally:
        index.close()

    again = CliRunner().invoke(cli, ["update", f"{s3_bucket}/index", "--model", str(tiny_clip_dir), "--workers", "1", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["up_to_date"] is True
    assert not network_guard.blocked


def test_update_at_s3_resumes_upload(s3_bucket, network_guard, tiny_clip_dir, tmp_path, monkeypatch):
    from grdr_core.update import UpdateConfig, update_index

    monkeypatch.setenv("GRDR_CACHE_DIR", str(tmp_path / "cache"))
    _build_lake_index(s3_bucket, tmp_path, tiny_clip_dir, videos=2)
    fs = fsspec.filesystem("s3")
    write_test_video(tmp_path / "new.mp4", frames=9, width=64, height=48)
    fs.put(str(tmp_path / "new.mp4"), f"{s3_bucket}/lake/new.mp4")
    # A folder without index.json, as an upload killed on another machine leaves it.
    fs.pipe_file(f"{s3_bucket}/index/versions/v000002/shards/part", b"partial")
    config = UpdateConfig(index_dir=f"{s3_bucket}/index", model=str(tiny_clip_dir), batch_size=8, workers=1)

    # The update publishes into its local copy and is stopped before the upload.
    with update_stopped_at(monkeypatch, "after-publish"):
        update_index(config)
    fs.invalidate_cache()
    assert fs.cat(f"{s3_bucket}/index/CURRENT") == b"v000001\n"
    # A file left in the version's folder by an upload killed earlier must not stay in it.
    fs.pipe_file(f"{s3_bucket}/index/versions/v000003/manifest/stale.parquet", b"stale")

    decoded: list[str] = []
    summary = update_index(config, progress=lambda file, status: decoded.append(file.video_id))

    assert decoded == []  # the rerun resumed the stopped update's work
    assert summary.version == "v000003"  # above the partial folder
    assert summary.added == 1
    fs.invalidate_cache()
    assert fs.cat(f"{s3_bucket}/index/CURRENT") == b"v000003\n"
    names = [name.rsplit("/", 1)[-1] for name in fs.ls(f"{s3_bucket}/index/versions")]
    assert names == ["v000001", "v000002", "v000003"]
    assert fs.exists(f"{s3_bucket}/index/versions/v000003/index.json")
    assert not fs.exists(f"{s3_bucket}/index/versions/v000003/manifest/stale.parquet")
    # A publish killed after index.json but before CURRENT: the next update finishes it.
    fs.pipe_file(f"{s3_bucket}/index/CURRENT", b"v000001\n")
    summary = update_index(config)
    assert summary.up_to_date
    assert summary.base_version == "v000003"
    fs.invalidate_cache()
    assert fs.cat(f"{s3_bucket}/index/CURRENT") == b"v000003\n"
    # The partial folder is neither counted as a version nor deleted by pruning to one version.
    summary = update_index(replace(config, keep_versions=1))
    assert summary.up_to_date
    fs.invalidate_cache()
    assert [name.rsplit("/", 1)[-1] for name in fs.ls(f"{s3_bucket}/index/versions")] == ["v000002", "v000003"]
    assert not network_guard.blocked
