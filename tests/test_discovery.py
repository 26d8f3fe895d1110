import os
from pathlib import Path

import pytest

from grdr_core.discovery import discover_videos, fingerprint_file, path_text
from grdr_core.errors import InvalidInputError


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discovery_walks_recursively_by_extension(tmp_path):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "sub" / "b.MKV")
    _touch(tmp_path / "sub" / "deeper" / "c.webm")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "sub" / "captions.json")

    ids = [v.video_id for v in discover_videos(tmp_path)]

    assert ids == ["a.mp4", "sub/b.MKV", "sub/deeper/c.webm"]


def test_same_names_in_different_folders_get_distinct_ids(tmp_path):
    _touch(tmp_path / "x" / "clip.mp4", b"1")
    _touch(tmp_path / "y" / "clip.mp4", b"2")
    _touch(tmp_path / "clip.mp4", b"3")
    _touch(tmp_path / "clip.avi", b"4")

    videos = discover_videos(tmp_path)
    ids = [v.video_id for v in videos]

    assert len(ids) == 4
    assert len(set(ids)) == 4


def test_ids_are_stable_across_roots_and_runs(tmp_path):
    _touch(tmp_path / "data" / "s" / "v.mp4")
    first = discover_videos(tmp_path / "data")
    second = discover_videos(str(tmp_path / "data" / ".." / "data"))

    assert first == second
    assert first[0].video_id == "s/v.mp4"
    assert first[0].uri == str((tmp_path / "data" / "s" / "v.mp4").resolve())


def test_fingerprint_tracks_content(tmp_path):
    a = _touch(tmp_path / "a.mp4", b"hello")
    b = _touch(tmp_path / "b.mp4", b"hello")
    c = _touch(tmp_path / "c.mp4", b"hellp")

    assert fingerprint_file(a, 5) == fingerprint_file(b, 5)
    assert fingerprint_file(a, 5) != fingerprint_file(c, 5)


def test_large_file_fingerprint_samples_the_middle(tmp_path):
    size = 8 << 20
    data = bytearray(size)
    a = _touch(tmp_path / "a.mp4", bytes(data))
    data[size // 2] = 1
    b = _touch(tmp_path / "b.mp4", bytes(data))

    fa = fingerprint_file(a, size)
    fb = fingerprint_file(b, size)

    assert fa.startswith("blake2b-sampled:")
    assert fa != fb


def test_empty_file_is_discovered_with_size_zero(tmp_path):
    _touch(tmp_path / "empty.webm", b"")
    (video,) = discover_videos(tmp_path)
    assert video.size_bytes == 0


def test_missing_root_raises(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        discover_videos(tmp_path / "nope")


def test_folder_symlinks_are_skipped_with_a_log_line(tmp_path, caplog):
    _touch(tmp_path / "elsewhere" / "v.mp4")
    root = tmp_path / "root"
    _touch(root / "a.mp4")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "file_link.mp4").symlink_to(tmp_path / "elsewhere" / "v.mp4")

    with caplog.at_level("INFO", logger="grdr_core.discovery"):
        ids = [v.video_id for v in discover_videos(root)]

    assert ids == ["a.mp4", "file_link.mp4"]
    assert any("linked" in r.getMessage() and "not followed" in r.getMessage() for r in caplog.records)


def test_undecodable_name_gets_utf8_id_and_raw_bytes(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp4")
    with open(raw, "wb") as f:
        f.write(b"x")

    (video,) = discover_videos(tmp_path)

    assert video.video_id == "caf\\xe9.mp4"
    assert video.uri.endswith("/caf\\xe9.mp4")
    assert video.uri.encode("utf-8")  # valid UTF-8, or this raises
    assert video.uri_bytes == os.fsencode(video.path)
    assert os.path.samefile(video.uri_bytes, raw)


def test_valid_names_keep_their_text(tmp_path):
    _touch(tmp_path / "vidéo 视频.mp4")
    _touch(tmp_path / "-dash.mp4")

    videos = discover_videos(tmp_path)

    assert [v.video_id for v in videos] == ["-dash.mp4", "vidéo 视频.mp4"]
    assert all(v.uri_bytes is None and v.uri == v.path for v in videos)


@pytest.mark.parametrize("name, expected", [("a.mp4", ("a.mp4", None)), ("caf\udce9.mp4", ("caf\\xe9.mp4", b"caf\xe9.mp4"))])
def test_path_text(name, expected):
    assert path_text(name) == expected


def test_fifo_is_listed_without_opening(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    _touch(tmp_path / "real.mp4")

    videos = discover_videos(tmp_path)  # opening the FIFO would block here

    assert [(v.video_id, v.fingerprint) for v in videos] == [("pipe.mp4", "not-a-regular-file"), ("real.mp4", fingerprint_file(tmp_path / "real.mp4", 1))]


def test_broken_link_is_listed_as_unreadable(tmp_path):
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "missing.mp4")

    (video,) = discover_videos(tmp_path)

    assert (video.video_id, video.size_bytes, video.fingerprint) == ("gone.mp4", -1, "unreadable")


def test_file_url_equals_local_path(tmp_path):
    _touch(tmp_path / "a.mp4", b"1")
    _touch(tmp_path / "sub" / "b.mkv", b"22")

    assert discover_videos(f"file://{tmp_path}") == discover_videos(tmp_path)


def test_unknown_protocol_raises(tmp_path):
    with pytest.raises(InvalidInputError, match="Unknown protocol 'nosuchproto'"):
        discover_videos("nosuchproto://bucket/videos")


def test_memory_url_is_listed_with_fsspec():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/grdr-discovery-test/sub/b.mp4", b"bb")
    fs.pipe("/grdr-discovery-test/a.MOV", b"a")
    fs.pipe("/grdr-discovery-test/readme.txt", b"text")
    try:
        videos = discover_videos("memory://grdr-discovery-test")
        contents = [fsspec.open(v.uri, "rb").open().read() for v in videos]
    finally:
        fs.rm("/grdr-discovery-test", recursive=True)

    assert [(v.video_id, v.size_bytes) for v in videos] == [("a.MOV", 1), ("sub/b.mp4", 2)]
    assert contents == [b"a", b"bb"]
    assert all(v.path == v.uri and v.uri.startswith("memory://") for v in videos)
    assert videos[0].fingerprint.startswith("mtime:1:")
