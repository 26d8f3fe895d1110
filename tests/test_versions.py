"""Index roots with several versions: publish, readers during a publish, pruning, rollback."""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from grdr_core.embedding_index import build_index_from_embeddings
from grdr_core.errors import IndexExistsError, IndexFormatError, InvalidInputError
from grdr_core.index import check_output_path, open_index, publish, staging_dir_for
from grdr_core.quantize import QuantizerConfig
from grdr_core.search import exact_dense_search
from grdr_core.searcher import Searcher
from grdr_core.train_index import train_index
from grdr_core.training import MAX_VIDEO_QUERIES, TrainConfig
from grdr_core.verify import verify_index
from grdr_core.versions import (
    list_versions,
    next_version_name,
    prune_versions,
    publish_version,
    read_current,
    resolve_version,
    rollback,
)
from grdr_jobs.cli import cli
from grdr_schemas.index import INDEX_FORMAT_VERSION, IndexLayout, IndexRoot

SMALL_QUANTIZER = QuantizerConfig(levels=2, codes_per_level=4)
DIM = 8


def _content(tag, count):
    """Return the ids and embeddings of a corpus whose ids all start with ``tag``."""
    rng = np.random.default_rng(count)
    ids = [f"{tag}-{i:03d}" for i in range(count)]
    return ids, rng.normal(size=(count, DIM)).astype(np.float32)


def _staged_copy(source, root):
    """Copy the version ``source`` into a fresh staging directory beside ``root``."""
    staging = staging_dir_for(root)
    shutil.copytree(source, staging)
    return staging


@pytest.fixture(scope="module")
def versions_src(tmp_path_factory):
    """Three complete single-version indexes, tagged a, b and c, with 6, 9 and 12 videos."""
    base = tmp_path_factory.mktemp("sources")
    sources = {}
    for tag, count in (("a", 6), ("b", 9), ("c", 12)):
        ids, vectors = _content(tag, count)
        out = base / f"build-{tag}"
        build_index_from_embeddings(ids, vectors, out, encoder_name="test", quantizer=SMALL_QUANTIZER)
        sources[tag] = resolve_version(out)
    return sources


def _publish(sources, tag, root, **kwargs):
    return publish_version(_staged_copy(sources[tag], root), root, **kwargs)


def _answers(index):
    """Return what a reader computes from every part of an open index."""
    queries = np.eye(DIM, dtype=np.float32)
    ordinals, scores = exact_dense_search(index.shards, queries, k=3)
    first_ids = tuple(index.trie.children(()))
    return {
        "ids": index.video_ids.to_pylist(),
        "ordinals": ordinals.tolist(),
        "scores": scores.tolist(),
        "root_children": first_ids,
        "postings": index.trie.stats().distinct_ids,
    }


def _check_consistent(index):
    """Raise AssertionError unless header, manifest and shards of ``index`` come from one version."""
    ids = index.video_ids.to_pylist()
    tags = {video_id.split("-")[0] for video_id in ids}
    assert len(tags) == 1, f"video ids of several versions: {sorted(tags)}"
    expected_ids, vectors = _content(tags.pop(), len(ids))
    assert ids == expected_ids
    assert index.header["shards"]["count"] == len(ids) == len(index.shards)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(index.shards.get(np.arange(len(ids))), unit, atol=2e-3)


# --- publish and resolve -----------------------------------------------------------------------


def test_first_publish_creates_root(versions_src, tmp_path):
    root = tmp_path / "index"
    name = _publish(versions_src, "a", root)

    assert name == "v000001"
    assert IndexRoot(root).current.read_text() == "v000001\n"
    assert list_versions(root) == ["v000001"]
    assert resolve_version(root) == (root / "versions" / "v000001").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_second_publish_switches_new_readers(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    old = open_index(root)

    assert _publish(versions_src, "b", root) == "v000002"
    new = open_index(root)

    assert old.version == "v000001"
    assert len(old.shards) == 6
    assert new.version == "v000002"
    assert len(new.shards) == 9
    assert new.root == root
    _check_consistent(old)
    _check_consistent(new)
    old.close()
    new.close()


def test_reader_survives_publish_and_prune(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    index = open_index(root)
    before = _answers(index)
    v1 = index.layout.root

    _publish(versions_src, "b", root, keep=1)
    _publish(versions_src, "c", root, keep=1)

    assert not v1.exists()
    assert list_versions(root) == ["v000003"]
    assert _answers(index) == before
    index.close()


def test_publish_through_index_publish(versions_src, tmp_path):
    root = tmp_path / "index"
    assert publish(_staged_copy(versions_src["a"], root), root, overwrite=False) == "v000001"
    with pytest.raises(IndexExistsError, match="--overwrite"):
        publish(_staged_copy(versions_src["b"], root), root, overwrite=False)

    assert publish(_staged_copy(versions_src["b"], root), root, overwrite=True, keep=5) == "v000002"
    assert read_current(root) == "v000002"


def test_version_directory_is_not_an_output(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    version_dir = root / "versions" / "v000001"

    with pytest.raises(InvalidInputError, match="version directory"):
        publish(_staged_copy(versions_src["b"], root), version_dir, overwrite=True)
    with pytest.raises(InvalidInputError, match="version directory"):
        publish_version(_staged_copy(versions_src["b"], root), version_dir)


def test_version_directory_opens_directly(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    _publish(versions_src, "b", root)

    index = open_index(root / "versions" / "v000001")
    assert index.version == "v000001"
    assert len(index.shards) == 6
    index.close()
    assert verify_index(root / "versions" / "v000001").ok


def test_publish_repeated_after_kill(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    # A publish killed after the rename, before CURRENT was written.
    staging = _staged_copy(versions_src["b"], root)
    os.rename(staging, root / "versions" / "v000002")
    assert read_current(root) == "v000001"

    assert publish_version(staging, root, version="v000002", expected_current="v000001") == "v000002"
    assert read_current(root) == "v000002"
    assert len(open_index(root).shards) == 9
    # Killed again after CURRENT was written: the repeat finds its own version current.
    assert publish_version(staging, root, version="v000002", expected_current="v000001") == "v000002"
    assert list_versions(root) == ["v000001", "v000002"]


def test_existing_version_is_never_replaced(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    staging = _staged_copy(versions_src["b"], root)

    with pytest.raises(IndexExistsError, match="v000001 .* already exists"):
        publish_version(staging, root, version="v000001")
    assert staging.exists()
    assert len(open_index(root).shards) == 6


def test_publish_rejects_bad_arguments(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    staging = _staged_copy(versions_src["b"], root)

    with pytest.raises(InvalidInputError, match="Invalid version name"):
        publish_version(staging, root, version="latest")
    with pytest.raises(InvalidInputError, match="keep must be"):
        publish_version(staging, root, keep=0)
    with pytest.raises(InvalidInputError, match="not complete"):
        publish_version(tmp_path / "missing", root, version="v000007")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(IndexExistsError, match="not a grdr index"):
        publish_version(staging, other)
    assert list(other.iterdir()) == []


def test_expected_current_guards_against_newer_version(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    _publish(versions_src, "b", root)

    with pytest.raises(IndexExistsError, match="current version is v000002, not v000001"):
        _publish(versions_src, "c", root, expected_current="v000001")
    assert list_versions(root) == ["v000001", "v000002"]
    assert _publish(versions_src, "c", root, expected_current="v000002") == "v000003"


def test_published_files_are_readable_by_all(versions_src, tmp_path):
    root = tmp_path / "index"
    staging = _staged_copy(versions_src["a"], root)
    private = staging / "index.json"
    private.chmod(0o600)
    name = publish_version(staging, root)

    mode = (root / "versions" / name / "index.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


# --- pruning and rollback ----------------------------------------------------------------------


def test_pruning_keeps_newest(versions_src, tmp_path):
    root = tmp_path / "index"
    for tag in "abcab":
        _publish(versions_src, tag, root, keep=3)

    assert list_versions(root) == ["v000003", "v000004", "v000005"]
    assert read_current(root) == "v000005"
    assert not list((root / "versions").glob(".*"))


def test_pruning_never_deletes_current(versions_src, tmp_path):
    root = tmp_path / "index"
    for tag in "abc":
        _publish(versions_src, tag, root, keep=3)
    rollback(root, to="v000001")

    assert prune_versions(root, keep=1) == ["v000002"]
    assert list_versions(root) == ["v000001", "v000003"]
    assert read_current(root) == "v000001"


def test_rollback_to_previous_and_named(versions_src, tmp_path):
    root = tmp_path / "index"
    for tag in "abc":
        _publish(versions_src, tag, root)

    assert rollback(root) == "v000002"
    assert len(open_index(root).shards) == 9
    assert rollback(root) == "v000001"
    with pytest.raises(InvalidInputError, match="no version older than the current v000001"):
        rollback(root)
    assert rollback(root, to="v000003") == "v000003"
    with pytest.raises(InvalidInputError, match="no version 'v000009'"):
        rollback(root, to="v000009")
    assert read_current(root) == "v000003"


def test_publish_after_rollback_numbers_above_all(versions_src, tmp_path):
    root = tmp_path / "index"
    for tag in "abc":
        _publish(versions_src, tag, root)
    rollback(root, to="v000001")

    assert next_version_name(root) == "v000004"
    assert _publish(versions_src, "a", root, keep=3) == "v000004"
    assert list_versions(root) == ["v000002", "v000003", "v000004"]


# --- damaged roots -------------------------------------------------------------------------------


def test_garbage_current_is_clear_error(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    IndexRoot(root).current.write_text("../../etc\n")

    with pytest.raises(IndexFormatError, match=r"CURRENT contains '\.\./\.\./etc\\n', not a version name") as error:
        open_index(root)
    assert str(root) in str(error.value)
    assert "v000001" in str(error.value)

    assert rollback(root, to="v000001") == "v000001"
    assert len(open_index(root).shards) == 6


def test_current_naming_missing_version(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    IndexRoot(root).current.write_text("v000004\n")

    with pytest.raises(IndexFormatError, match="names version v000004, but .*v000004 contains no index.json"):
        open_index(root)
    with pytest.raises(IndexFormatError, match="no index.json"):
        verify_index(root)


def test_deleted_current_is_repaired_by_rollback(versions_src, tmp_path):
    root = tmp_path / "index"
    for tag in "ab":
        _publish(versions_src, tag, root)
    IndexRoot(root).current.unlink()

    with pytest.raises(IndexFormatError, match=r"has versions but no CURRENT file; run `grdr-index rollback .* --to NAME` with one of: v000001, v000002"):
        open_index(root)
    with pytest.raises(IndexFormatError, match="no CURRENT file; pass --to"):
        rollback(root)
    with pytest.raises(IndexExistsError, match=r"has index versions but no CURRENT file; repair it with `grdr-index rollback"):
        check_output_path(root, overwrite=True)
    listing = CliRunner().invoke(cli, ["versions", str(root)])
    assert listing.exit_code == 0, listing.output
    assert "No version is current (CURRENT is missing)" in listing.output
    assert rollback(root, to="v000002") == "v000002"
    assert read_current(root) == "v000002"
    assert len(open_index(root).shards) == 9


def test_empty_and_oversized_current(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    for content in ("", "v000001" + " " * 300):
        IndexRoot(root).current.write_text(content)
        with pytest.raises(IndexFormatError, match="not a version name"):
            resolve_version(root)


def test_not_an_index_names_path(tmp_path):
    with pytest.raises(IndexFormatError, match=f"Not a grdr index .*{tmp_path}"):
        resolve_version(tmp_path)
    with pytest.raises(IndexFormatError, match="Not a grdr index"):
        rollback(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- indexes from before the root layout --------------------------------------------------------


def test_legacy_directory_opens_and_migrates(versions_src, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(versions_src["a"], legacy)
    index = open_index(legacy)
    assert index.version is None
    before = _answers(index)

    assert _publish(versions_src, "b", legacy) == "v000002"

    assert sorted(p.name for p in legacy.iterdir()) == ["CURRENT", "publish.lock", "versions"]
    assert list_versions(legacy) == ["v000001", "v000002"]
    assert _answers(index) == before  # the reader opened before the migration
    index.close()
    assert verify_index(legacy / "versions" / "v000001").ok
    assert rollback(legacy) == "v000001"
    migrated = open_index(legacy)
    assert _answers(migrated) == before
    migrated.close()


# --- concurrent readers --------------------------------------------------------------------------


def _reader_loop(root, ready, stop, results):
    """Open the index again and again until ``stop`` is set; report versions seen and failures."""
    seen, failures, opens = set(), [], 0
    while not stop.is_set():
        try:
            index = open_index(root)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
            failures.append(f"open: {type(exc).__name__}: {exc}")
            continue
        try:
            _check_consistent(index)
            seen.add(index.version)
            opens += 1
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{index.version}: {type(exc).__name__}: {exc}")
        finally:
            index.close()
        ready.set()
    results.put((sorted(seen), failures, opens))


def test_concurrent_readers_never_see_a_mix(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)
    context = multiprocessing.get_context("spawn")
    results, stop = context.Queue(), context.Event()
    ready = [context.Event() for _ in range(2)]
    readers = [context.Process(target=_reader_loop, args=(root, event, stop, results)) for event in ready]
    for reader in readers:
        reader.start()
    for event in ready:
        assert event.wait(timeout=120), "a reader process did not open the index"

    published = 1
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        _publish(versions_src, "abc"[published % 3], root, keep=2)
        published += 1
        if published % 5 == 0:
            rollback(root)
    stop.set()
    outcomes = [results.get(timeout=120) for _ in readers]
    for reader in readers:
        reader.join(timeout=30)

    assert published > 10
    for seen, failures, opens in outcomes:
        assert failures == []
        assert opens > 10
        assert len(seen) > 2
    assert len(list_versions(root)) <= 3  # keep=2, plus the current one after a rollback


# --- training and the command line ---------------------------------------------------------------


def _small_index_with_captions(tmp_path: Path):
    """Build a 40-video index from synthetic embeddings; write its training captions to captions.parquet."""
    from grdr_core.testing.synthetic import SyntheticConfig, make_synthetic_corpus

    corpus = make_synthetic_corpus(SyntheticConfig(num_videos=40, num_concepts=6, dim=16, seed=1))
    ids = [f"v{i:03d}" for i in range(40)]
    root = tmp_path / "index"
    build_index_from_embeddings(ids, corpus.video_embeddings, root, encoder_name="synthetic", quantizer=SMALL_QUANTIZER)
    rows = list(corpus.train_captions)
    pq.write_table(
        pa.table(
            {
                "video_id": [ids[corpus.caption_ordinals[i]] for i in rows],
                "embedding": [corpus.caption_embeddings[i].tolist() for i in rows],
            }
        ),
        tmp_path / "captions.parquet",
    )
    return corpus, root


def test_train_publishes_linked_version(tmp_path):
    corpus, root = _small_index_with_captions(tmp_path)
    config = TrainConfig(views=2, levels=2, codes_per_level=4, hidden=16, epochs_per_level=1, polish_epochs=1, seed=0)

    summary = train_index(root, config, caption_embeddings=tmp_path / "captions.parquet", keep=2)

    assert summary.version == "v000002"
    assert list_versions(root) == ["v000001", "v000002"]
    old, new = (IndexLayout(root / "versions" / name) for name in ("v000001", "v000002"))
    shard = "00000.npy"
    assert os.stat(old.shards_dir / shard).st_ino == os.stat(new.shards_dir / shard).st_ino
    assert json.loads(old.header.read_text())["tokenizer"].get("retriever") is not True
    assert verify_index(root / "versions" / "v000001").ok
    with Searcher(root) as searcher:
        assert searcher.index.version == "v000002"
        assert len(searcher.search_embeddings(corpus.caption_embeddings[:2], k=3)) == 2


def test_cli_train_passes_video_queries(tmp_path):
    _, root = _small_index_with_captions(tmp_path)
    runner = CliRunner()
    small = ["--views", "2", "--levels", "2", "--codes", "4", "--epochs", "1"]

    trained = runner.invoke(cli, ["train", str(root), "--caption-embeddings", str(tmp_path / "captions.parquet"), *small, "--video-queries", "0.5"])
    assert trained.exit_code == 0, trained.output
    model_config = json.loads((IndexRoot(root).version_dir(read_current(root)) / "model" / "multiview.json").read_text())
    assert model_config["train_config"]["video_queries"] == 0.5

    # The CLI states the limit without importing torch, so it keeps its own copy.
    option = next(param for param in cli.commands["train"].params if param.name == "video_queries")
    assert option.type.max == MAX_VIDEO_QUERIES

    for bad in ("-1", "1001", "nan"):
        rejected = runner.invoke(cli, ["train", str(root), "--caption-embeddings", str(tmp_path / "captions.parquet"), *small, "--video-queries", bad])
        assert rejected.exit_code != 0, bad
        # Click rejects a negative value itself; TrainConfig rejects the others (the CLI prints it on one line).
        message = rejected.output + str(rejected.exception or "")
        assert "video-queries" in message or "video_queries must lie in [0, 1000]" in message, message


def test_cli_versions_and_rollback(versions_src, tmp_path):
    root = tmp_path / "index"
    for tag in "ab":
        _publish(versions_src, tag, root)
    runner = CliRunner()

    listing = runner.invoke(cli, ["versions", str(root)])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].startswith("  v000001  created ")
    assert lines[1].startswith("* v000002  created ")
    assert "9 videos" in lines[1]
    assert "index format" not in listing.output

    rolled = runner.invoke(cli, ["rollback", str(root)])
    assert rolled.exit_code == 0, rolled.output
    assert "v000001" in rolled.output
    as_json = json.loads(runner.invoke(cli, ["versions", str(root), "--json"]).output)
    assert [(row["name"], row["current"]) for row in as_json] == [("v000001", True), ("v000002", False)]

    inspected = runner.invoke(cli, ["inspect", str(root), "--json"])
    assert json.loads(inspected.output)["version"] == "v000001"

    # A version written by an older grdr is flagged in the listing.
    old_header = root / "versions" / "v000002" / "index.json"
    old_header.write_text(old_header.read_text().replace(f'"format_version": {INDEX_FORMAT_VERSION}', '"format_version": 1'))
    flagged = runner.invoke(cli, ["versions", str(root)]).output.splitlines()
    assert flagged[1].endswith(f"index format 1: this grdr reads format {INDEX_FORMAT_VERSION} only, rebuild it")
    assert "index format" not in flagged[0]
    rejected = runner.invoke(cli, ["rollback", str(root), "--to", "v000002"])
    assert isinstance(rejected.exception, IndexFormatError)
    assert "Cannot roll back to version v000002" in str(rejected.exception)
    assert f"has format version 1, this grdr reads version {INDEX_FORMAT_VERSION}" in str(rejected.exception)
    assert read_current(root) == "v000001"


def test_cli_rollback_error_is_one_line(versions_src, tmp_path):
    root = tmp_path / "index"
    _publish(versions_src, "a", root)

    result = subprocess.run(
        [sys.executable, "-m", "grdr_jobs.cli", "rollback", str(root), "--to", "v000005"], capture_output=True, text=True
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"grdr-index: error: Index {root} has no version 'v000005'; versions: v000001"


def test_cli_build_keeps_versions(tmp_path):
    ids, vectors = _content("a", 6)
    features = tmp_path / "f.parquet"
    pq.write_table(pa.table({"video_id": ids, "embedding": pa.array(vectors.tolist(), pa.list_(pa.float32()))}), features)
    root = tmp_path / "index"
    command = ["build", "--features", str(features), "--out", str(root), "--levels", "2", "--codes", "4"]
    runner = CliRunner()

    for extra in ([], ["--overwrite"], ["--overwrite", "--keep-versions", "2"]):
        result = runner.invoke(cli, command + extra)
        assert result.exit_code == 0, result.output

    assert list_versions(root) == ["v000002", "v000003"]
    assert read_current(root) == "v000003"
