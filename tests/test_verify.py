"""Storage faults: damaged index files, ``grdr-index verify``, LMDB map growth and old manifests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from grdr_core.build import BuildConfig, build_index
from grdr_core.decode import DecodeConfig
from grdr_core.errors import IndexFormatError
from grdr_core.features import EncoderConfig
from grdr_core.index import open_index, write_header
from grdr_core.lmdb_write import write_sorted_tables
from grdr_core.manifest import read_manifest
from grdr_core.quantize import QuantizerConfig
from grdr_core.trie import write_trie
from grdr_core.testing.videos import write_test_video
from grdr_core.verify import verify_index
from grdr_core.versions import resolve_version
from grdr_jobs.cli import cli
from grdr_schemas.index import INDEX_FORMAT_VERSION, IndexLayout
from grdr_schemas.manifest import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION


@pytest.fixture(scope="module")
def healthy_index(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built index: three videos in two shards, one manifest part, a trie and a model."""
    videos = tmp_path_factory.mktemp("verify_videos")
    for i in range(3):
        write_test_video(videos / f"clip{i}.mp4", frames=4 + 2 * i)
    out = tmp_path_factory.mktemp("verify_index") / "index"
    config = BuildConfig(
        input_root=videos,
        out_dir=out,
        decode=DecodeConfig(num_frames=2),
        encoder=EncoderConfig(model=str(tiny_clip_dir), batch_size=8),
        quantizer=QuantizerConfig(levels=1, codes_per_level=2, seed=0),
        workers=1,
        records_per_shard=2,
    )
    build_index(config)
    return out


@pytest.fixture
def index_copy(healthy_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(healthy_index, copy)
    return copy


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _video_id_page_end(part: Path) -> int:
    """Return the offset of the last byte of the video_id column's data in a manifest part."""
    column = pq.ParquetFile(part).metadata.row_group(0).column(MANIFEST_SCHEMA.get_field_index("video_id"))
    return column.data_page_offset + column.total_compressed_size - 1


def _damage(root: Path, fault: str) -> str:
    """Apply ``fault`` to the current version of the index at ``root``; return the relative path of the damaged file."""
    root = resolve_version(root)
    if fault == "shard_missing":
        (root / "shards/00001.npy").unlink()
        return "shards/00001.npy"
    if fault == "shard_truncated":
        _truncate(root / "shards/00000.npy", 100)
        return "shards/00000.npy"
    if fault == "shard_grown":
        with open(root / "shards/00000.npy", "ab") as f:
            f.write(b"\0" * 16)
        return "shards/00000.npy"
    if fault == "trie_truncated":
        trie = root / "trie.lmdb"
        _truncate(trie, trie.stat().st_size // 2)
        return "trie.lmdb"
    if fault == "trie_flipped":
        trie = root / "trie.lmdb"
        _flip_byte(trie, trie.stat().st_size // 3)
        return "trie.lmdb"
    if fault == "manifest_missing":
        (root / "manifest/part-00000.parquet").unlink()
        return "manifest/part-00000.parquet"
    if fault == "manifest_flipped":
        part = root / "manifest/part-00000.parquet"
        _flip_byte(part, _video_id_page_end(part))
        return "manifest/part-00000.parquet"
    if fault == "model_flipped":
        model = sorted((root / "model").iterdir())[-1]
        _flip_byte(model, model.stat().st_size // 2)
        return f"model/{model.name}"
    raise ValueError(f"unknown fault {fault!r}")


def test_healthy_index_verifies(healthy_index):
    report = verify_index(healthy_index)
    result = CliRunner().invoke(cli, ["verify", str(healthy_index)])

    assert report.ok
    assert report.checked == len(list(p for p in resolve_version(healthy_index).rglob("*") if p.is_file())) - 1
    assert report.unlisted == []
    assert result.exit_code == 0, result.output
    assert "all match" in result.output


@pytest.mark.parametrize(
    "fault, kind",
    [
        ("shard_missing", "missing"),
        ("shard_truncated", "truncated"),
        ("shard_grown", "size_mismatch"),
        ("trie_truncated", "truncated"),
        ("trie_flipped", "corrupted"),
        ("manifest_missing", "missing"),
        ("model_flipped", "corrupted"),
    ],
)
def test_damaged_file_fails_open_and_verify(index_copy, fault, kind):
    damaged = _damage(index_copy, fault)

    with pytest.raises(IndexFormatError) as info:
        open_index(index_copy)
    report = verify_index(index_copy)
    result = CliRunner().invoke(cli, ["verify", str(index_copy)])

    described = f"{damaged}: {kind.replace('_', ' ')}"  # "size mismatch" in prose
    assert described in str(info.value)
    assert "grdr-index verify" in str(info.value)
    assert [(p.path, p.kind) for p in report.problems] == [(damaged, kind)]
    assert isinstance(result.exception, IndexFormatError)
    assert described in result.output


def test_flipped_manifest_page_fails_open(index_copy):
    damaged = _damage(index_copy, "manifest_flipped")

    # The size is right, so the quick check passes, and the page checksum catches the damage.
    with pytest.raises(IndexFormatError, match=f"Cannot read manifest part .*{damaged}"):
        open_index(index_copy)
    assert [(p.path, p.kind) for p in verify_index(index_copy).problems] == [(damaged, "corrupted")]


def test_flipped_shard_byte_needs_full_verify(index_copy):
    shard = resolve_version(index_copy) / "shards/00000.npy"
    _flip_byte(shard, shard.stat().st_size - 3)  # inside the embeddings, past the .npy header

    # Opening checks only shard sizes, to stay fast on GBs of shards, and verify hashes them.
    open_index(index_copy).close()
    assert [(p.path, p.kind) for p in verify_index(index_copy).problems] == [("shards/00000.npy", "corrupted")]


def test_search_on_damaged_index_prints_one_line(index_copy):
    _damage(index_copy, "trie_flipped")
    command = [sys.executable, "-m", "grdr_jobs.cli", "search", str(index_copy), "a dog"]

    result = subprocess.run(command, capture_output=True, text=True)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("grdr-index: error: Index ")
    assert "trie.lmdb: corrupted" in last


@pytest.mark.parametrize("content", ["{", "[]", f'{{"format_version": {INDEX_FORMAT_VERSION}}}'])
def test_invalid_header_is_named(index_copy, content):
    (resolve_version(index_copy) / "index.json").write_text(content)

    with pytest.raises(IndexFormatError, match="index.json"):
        open_index(index_copy)
    with pytest.raises(IndexFormatError, match="index.json"):
        verify_index(index_copy)


def test_trie_ordinal_beyond_store_is_rejected(index_copy):
    layout = IndexLayout(resolve_version(index_copy))
    header = json.loads(layout.header.read_text())
    # A trie that files a fourth video, re-signed so that only its contents are wrong.
    layout.trie.unlink()
    write_trie(layout.trie, np.array([[[0]], [[1]], [[0]], [[1]]], dtype=np.uint16), [2])
    write_header(layout, {k: v for k, v in header.items() if k not in ("files", "format_version")})

    with pytest.raises(IndexFormatError, match="ordinal 3, but the index stores 3 embeddings"):
        open_index(index_copy)


# --- LMDB ---------------------------------------------------------------------------


def test_lmdb_map_full_grows_and_retries(tmp_path, caplog):
    path = tmp_path / "table.lmdb"
    rng = np.random.default_rng(0)
    first = [(f"{i:08d}".encode(), rng.bytes(200)) for i in range(5_000)]
    second = [(f"{i:08d}".encode(), b"x" * 50) for i in range(3_000)]
    initial = 64 << 10  # far below the ~1.3 MB the data needs

    with caplog.at_level("INFO", logger="grdr_core.lmdb_write"):
        final = write_sorted_tables(path, [(b"first", first), (b"second", second)], map_size=initial, max_dbs=2)

    assert final > initial
    assert any("map of" in r.getMessage() and "is full" in r.getMessage() for r in caplog.records)
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=2)
    try:
        for name, items in ((b"first", first), (b"second", second)):
            with env.begin(db=env.open_db(name, create=False)) as txn:
                assert list(txn.cursor()) == items
    finally:
        env.close()


def test_lmdb_unsorted_keys_raise(tmp_path):
    items = [(b"b", b"1"), (b"a", b"2")]

    with pytest.raises(IndexFormatError, match="stored 1 of 2 keys"):
        write_sorted_tables(tmp_path / "t.lmdb", [(b"t", items)], map_size=1 << 20, max_dbs=1)


# --- manifest versions --------------------------------------------------------------

VERSION_1_FIELDS = [
    "video_id", "uri", "size_bytes", "fingerprint", "status", "error", "decoder", "duration_s",
    "fps", "width", "height", "num_frames", "frames_sampled", "ordinal",
]  # fmt: skip


def _write_part(directory: Path, version: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([MANIFEST_SCHEMA.field(name) for name in VERSION_1_FIELDS], metadata={"grdr.manifest_schema_version": str(version)})
    row = {name: None for name in VERSION_1_FIELDS}
    row.update(video_id="a.mp4", uri="/data/a.mp4", size_bytes=10, fingerprint="blake2b:0", status="ok", ordinal=0)
    pq.write_table(pa.Table.from_pylist([row], schema=schema), directory / "part-00000.parquet")


def test_version_1_manifest_reads_with_nulls(tmp_path):
    _write_part(tmp_path, version=1)

    (row,) = read_manifest(tmp_path).to_pylist()

    assert MANIFEST_SCHEMA_VERSION == 2
    assert row["video_id"] == "a.mp4"
    assert row["ordinal"] == 0
    assert (row["uri_bytes"], row["coded_width"], row["coded_height"], row["rotation"]) == (None, None, None, None)


def test_newer_manifest_version_is_rejected(tmp_path):
    _write_part(tmp_path, version=MANIFEST_SCHEMA_VERSION + 1)

    with pytest.raises(IndexFormatError, match="schema version 3.*upgrade grdr"):
        read_manifest(tmp_path)


def _edit_header(index: Path, edit) -> None:
    import json

    header_path = resolve_version(index) / "index.json"
    header = json.loads(header_path.read_text())
    edit(header)
    header_path.write_text(json.dumps(header))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["shards"].update(records_per_shard=0), "valid 'shards' section"),
        (lambda h: h.pop("encoder"), "valid 'encoder' section"),
        (lambda h: h["files"].pop("shards/00000.npy"), "does not list the index files ['shards/00000.npy']"),
        (lambda h: h["files"].update({"/etc/hostname": {"bytes": 3, "sha256": "0" * 64}}), "files outside the index"),
        (lambda h: h["files"].update({"../x": {"bytes": 3, "sha256": "0" * 64}}), "files outside the index"),
    ],
)
def test_damaged_header_fields_are_rejected(index_copy, edit, message):
    _edit_header(index_copy, edit)
    with pytest.raises(IndexFormatError, match=re.escape(message)):
        verify_index(index_copy)
    with pytest.raises(IndexFormatError, match=re.escape(message)):
        open_index(index_copy)
