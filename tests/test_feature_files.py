"""Builds from precomputed embeddings (``grdr-index build --features``) and their input errors."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from grdr_core.embedding_index import build_index_from_embeddings, build_index_from_features
from grdr_core.errors import IndexExistsError, InvalidInputError, NothingIndexedError
from grdr_core.feature_files import open_feature_file
from grdr_core.index import open_index
from grdr_core.manifest import read_manifest
from grdr_core.quantize import QuantizerConfig
from grdr_core.searcher import Searcher
from grdr_core.testing.synthetic import SyntheticConfig, make_synthetic_corpus
from grdr_core.train_index import train_index
from grdr_core.training import TrainConfig
from grdr_core.versions import resolve_version
from grdr_jobs.cli import cli
from grdr_schemas.manifest import VideoStatus

SMALL_QUANTIZER = QuantizerConfig(levels=2, codes_per_level=4)
DIM = 8


def _embeddings(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _ids(n):
    return [f"clips/v{i:03d}.mp4" for i in range(n)]


def _write_parquet(path, ids, rows, value_type=pa.float32(), fixed_size=None):
    list_type = pa.list_(value_type, fixed_size) if fixed_size else pa.list_(value_type)
    table = pa.table({"video_id": pa.array(ids, pa.string()), "embedding": pa.array(rows, list_type)})
    pq.write_table(table, path)
    return path


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _manifest_by_id(index_dir):
    rows = read_manifest(open_index(index_dir).layout.manifest_dir).to_pylist()
    return {row["video_id"]: row for row in rows}


def _stored(index_dir):
    index = open_index(index_dir)
    try:
        return index.video_ids.to_pylist(), index.shards.get(np.arange(len(index.shards))), index.header
    finally:
        index.close()


# --- valid files --------------------------------------------------------------------------


def test_parquet_build_stores_normalised_embeddings(tmp_path):
    vectors = _embeddings(20)
    path = _write_parquet(tmp_path / "f.parquet", _ids(20), vectors.tolist())

    summary = build_index_from_features(path, tmp_path / "index", encoder_name="my-clip", quantizer=SMALL_QUANTIZER)
    ids, stored, header = _stored(tmp_path / "index")

    assert (summary.rows, summary.indexed, summary.failed) == (20, 20, 0)
    assert set(summary.stage_seconds) == {"write", "semantic_ids", "publish"}
    assert ids == _ids(20)
    np.testing.assert_allclose(stored, _unit(vectors), atol=2e-3)  # float16 shards
    assert header["encoder"] == {"name": "my-clip", "checksum": "precomputed:my-clip", "dim": DIM}
    assert header["features"]["format"] == "parquet"
    assert header["features"]["rows"] == 20
    assert header["counts"] == {"discovered": 20, "indexed": 20, "failed": 0, "by_status": {"ok": 20}}


@pytest.mark.parametrize("value_type", [pa.float16(), pa.float32(), pa.float64()])
@pytest.mark.parametrize("fixed_size", [None, DIM])
def test_parquet_float_types_and_list_kinds(tmp_path, value_type, fixed_size):
    vectors = _embeddings(6)
    path = _write_parquet(tmp_path / "f.parquet", _ids(6), vectors.tolist(), value_type, fixed_size)

    build_index_from_features(path, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    _, stored, _ = _stored(tmp_path / "index")

    np.testing.assert_allclose(stored, _unit(vectors), atol=3e-3)


def test_small_batches_give_the_same_index(tmp_path):
    vectors = _embeddings(25)
    vectors[3] = 0.0
    path = _write_parquet(tmp_path / "f.parquet", _ids(25), vectors.tolist())

    build_index_from_features(path, tmp_path / "one", encoder_name="e", quantizer=SMALL_QUANTIZER)
    build_index_from_features(path, tmp_path / "many", encoder_name="e", quantizer=SMALL_QUANTIZER, batch_rows=4)
    one_ids, one, _ = _stored(tmp_path / "one")
    many_ids, many, _ = _stored(tmp_path / "many")

    assert one_ids == many_ids
    assert len(one_ids) == 24
    np.testing.assert_array_equal(one, many)
    assert _manifest_by_id(tmp_path / "many")[_ids(25)[3]]["error"] == "row 3: embedding is all zeros"


def test_leading_null_rows_do_not_hide_the_dimension(tmp_path):
    vectors = _embeddings(6).tolist()
    rows = [None, None, None] + vectors[3:]
    path = _write_parquet(tmp_path / "f.parquet", _ids(6), rows)

    features = open_feature_file(path)
    batches = list(features.batches(batch_rows=2))

    assert features.dim == DIM
    assert [b.errors for b in batches[:2]] == [["embedding is null"] * 2, ["embedding is null", None]]
    assert all(b.embeddings.shape[1] == DIM for b in batches)


def test_npy_with_default_ids_file(tmp_path):
    vectors = _embeddings(10).astype(np.float64)
    np.save(tmp_path / "features.npy", vectors)
    (tmp_path / "features.ids.txt").write_text("\n".join(_ids(10)) + "\n")

    summary = build_index_from_features(tmp_path / "features.npy", tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    ids, stored, header = _stored(tmp_path / "index")

    assert summary.indexed == 10
    assert ids == _ids(10)
    np.testing.assert_allclose(stored, _unit(vectors), atol=2e-3)
    assert header["features"]["ids_path"] == str((tmp_path / "features.ids.txt").resolve())


def test_npy_float32_builds(tmp_path):
    # np.save writes float32 by default; such a file loads as a read-only memory map.
    vectors = _embeddings(6)
    vectors[2] = np.nan
    np.save(tmp_path / "features.npy", vectors)
    (tmp_path / "features.ids.txt").write_text("\n".join(_ids(6)) + "\n")

    summary = build_index_from_features(tmp_path / "features.npy", tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    ids, stored, _ = _stored(tmp_path / "index")

    assert summary.indexed == 5
    assert ids == [video_id for i, video_id in enumerate(_ids(6)) if i != 2]
    np.testing.assert_allclose(stored, _unit(np.delete(vectors, 2, axis=0)), atol=2e-3)


def test_extreme_rows_stored_as_unit_vectors(tmp_path):
    vectors = _embeddings(4)
    vectors[1] *= 1e-25  # squares underflow in float32
    vectors[3] = np.full(DIM, 3e38, np.float32)  # squares overflow in float32
    _write_parquet(tmp_path / "f.parquet", _ids(4), vectors.tolist())

    build_index_from_features(tmp_path / "f.parquet", tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    _, stored, _ = _stored(tmp_path / "index")

    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(stored[1], _unit(vectors[1:2].astype(np.float64))[0], atol=2e-3)


def test_npy_with_explicit_ids_file(tmp_path):
    np.save(tmp_path / "x.npy", _embeddings(3).astype(np.float16))
    # CRLF line ends and no final newline are accepted.
    (tmp_path / "names.txt").write_text("a b\r\nc\r\nd", newline="")

    build_index_from_features(tmp_path / "x.npy", tmp_path / "index", encoder_name="e", ids_path=tmp_path / "names.txt", quantizer=SMALL_QUANTIZER)
    ids, _, _ = _stored(tmp_path / "index")

    assert ids == ["a b", "c", "d"]


# --- invalid rows: recorded, not fatal ----------------------------------------------------


def test_invalid_rows_are_recorded_in_the_manifest(tmp_path):
    vectors = _embeddings(9).tolist()
    vectors[1] = [float("nan")] + vectors[1][1:]
    vectors[2] = [float("inf")] + vectors[2][1:]
    vectors[3] = [0.0] * DIM
    vectors[4] = None
    vectors[5] = []
    vectors[6] = [None] + vectors[6][1:]
    path = _write_parquet(tmp_path / "f.parquet", _ids(9), vectors)

    summary = build_index_from_features(path, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    manifest = _manifest_by_id(tmp_path / "index")
    ids, _, header = _stored(tmp_path / "index")

    assert summary.rows == summary.indexed + summary.failed
    assert (summary.indexed, summary.failed) == (3, 6)
    assert len(manifest) == 9
    assert ids == [_ids(9)[i] for i in (0, 7, 8)]
    expected = {
        1: "row 1: embedding has NaN or infinite values",
        2: "row 2: embedding has NaN or infinite values",
        3: "row 3: embedding is all zeros",
        4: "row 4: embedding is null",
        5: "row 5: embedding is empty",
        6: "row 6: embedding has null values",
    }
    for row, error in expected.items():
        entry = manifest[_ids(9)[row]]
        assert entry["status"] == VideoStatus.INVALID_EMBEDDING.value
        assert entry["error"] == error
        assert entry["ordinal"] is None
    assert header["counts"]["by_status"] == {"ok": 3, "invalid_embedding": 6}


def test_float64_overflow_is_an_invalid_row(tmp_path):
    vectors = _embeddings(3).astype(np.float64)
    vectors[1, 0] = 1e300
    np.save(tmp_path / "f.npy", vectors)
    (tmp_path / "f.ids.txt").write_text("a\nb\nc\n")

    build_index_from_features(tmp_path / "f.npy", tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)

    assert _manifest_by_id(tmp_path / "index")["b"]["status"] == VideoStatus.INVALID_EMBEDDING.value


def test_in_memory_build_records_invalid_rows(tmp_path):
    vectors = _embeddings(5)
    vectors[2] = np.nan

    build_index_from_embeddings(_ids(5), vectors, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    ids, _, _ = _stored(tmp_path / "index")

    assert ids == [_ids(5)[i] for i in (0, 1, 3, 4)]
    assert _manifest_by_id(tmp_path / "index")[_ids(5)[2]]["status"] == VideoStatus.INVALID_EMBEDDING.value


def test_all_rows_invalid_publishes_nothing(tmp_path):
    path = _write_parquet(tmp_path / "f.parquet", _ids(3), [[0.0] * DIM, [float("nan")] * DIM, [0.0] * DIM])

    with pytest.raises(NothingIndexedError, match="3 embeddings read, 0 indexed, 3 failed"):
        build_index_from_features(path, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    assert not (tmp_path / "index").exists()
    assert list(tmp_path.iterdir()) == [path]


# --- invalid files: one clear error --------------------------------------------------------


def _open_error(path, ids_path=None):
    with pytest.raises(InvalidInputError) as info:
        open_feature_file(path, ids_path)
    return str(info.value)


def test_dimension_mismatch_names_the_row(tmp_path):
    rows = _embeddings(5).tolist()
    rows[3] = rows[3][:5]
    path = _write_parquet(tmp_path / "f.parquet", _ids(5), rows)

    with pytest.raises(InvalidInputError) as info:
        build_index_from_features(path, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    assert "row 3" in str(info.value)
    assert repr(_ids(5)[3]) in str(info.value)
    assert "5 values" in str(info.value)
    assert "earlier rows have 8" in str(info.value)
    assert not (tmp_path / "index").exists()


def test_duplicate_ids_name_the_rows(tmp_path):
    ids = ["a", "b", "a", "c", "b"]
    message = _open_error(_write_parquet(tmp_path / "f.parquet", ids, _embeddings(5).tolist()))

    assert "'a' appears in rows 0, 2" in message
    assert "2 ids appear more than once" in message


@pytest.mark.parametrize("bad_id, kind", [(None, "null"), ("", "blank"), ("  ", "blank")])
def test_missing_ids_are_rejected(tmp_path, bad_id, kind):
    message = _open_error(_write_parquet(tmp_path / "f.parquet", ["a", bad_id, "c"], _embeddings(3).tolist()))

    assert f"row 1 has a {kind} video_id" in message


def test_blank_line_in_ids_file_is_rejected(tmp_path):
    np.save(tmp_path / "f.npy", _embeddings(3))
    (tmp_path / "f.ids.txt").write_text("a\n\nc\n")

    assert "row 1 has a blank video_id" in _open_error(tmp_path / "f.npy")


@pytest.mark.parametrize(
    "column, expected",
    [
        (pa.array([[1, 2], [3, 4]], pa.list_(pa.int32())), "contains int32 values"),
        (pa.array([["1", "2"], ["3", "4"]], pa.list_(pa.string())), "contains string values"),
        (pa.array(["0.1,0.2", "0.3,0.4"]), "column embedding has type string"),
        (pa.array([1.0, 2.0]), "column embedding has type double"),
    ],
)
def test_non_float_embeddings_are_rejected(tmp_path, column, expected):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"video_id": ["a", "b"], "embedding": column}), path)

    assert expected in _open_error(path)


def test_integer_ids_are_rejected(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"video_id": [1, 2], "embedding": _embeddings(2).tolist()}), path)

    assert "video_id has type int64" in _open_error(path)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": _embeddings(1).tolist()}), path)

    assert "missing column(s) ['video_id']" in _open_error(path)


def test_empty_and_unreadable_files(tmp_path):
    (tmp_path / "zero.parquet").write_bytes(b"")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"video_id": pa.array([], pa.string()), "embedding": pa.array([], pa.list_(pa.float32()))}), tmp_path / "norows.parquet")
    (tmp_path / "f.csv").write_text("video_id,embedding\n")

    assert "is empty (0 bytes)" in _open_error(tmp_path / "zero.parquet")
    assert "Cannot read" in _open_error(tmp_path / "junk.parquet")
    assert "has no rows" in _open_error(tmp_path / "norows.parquet")
    assert "Unsupported feature file type '.csv'" in _open_error(tmp_path / "f.csv")
    assert "not found" in _open_error(tmp_path / "missing.parquet")


def test_every_embedding_null_is_rejected(tmp_path):
    path = _write_parquet(tmp_path / "f.parquet", ["a", "b"], [None, []])

    assert "every embedding is null or empty" in _open_error(path)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.zeros(4, np.float32), "must be 2-D"),
        (np.zeros((2, 3), np.int64), "contains int64 values"),
        (np.zeros((0, 3), np.float32), "at least one row"),
        (np.array([{"a": 1}, None], dtype=object), "Cannot read"),
    ],
)
def test_bad_npy_arrays(tmp_path, array, expected):
    np.save(tmp_path / "f.npy", array, allow_pickle=True)
    (tmp_path / "f.ids.txt").write_text("a\nb\n")

    assert expected in _open_error(tmp_path / "f.npy")


def test_npy_ids_file_problems(tmp_path):
    np.save(tmp_path / "f.npy", _embeddings(3))

    assert "f.ids.txt beside f.npy" in _open_error(tmp_path / "f.npy")
    (tmp_path / "f.ids.txt").write_text("a\nb\n")
    assert "has 2 ids but" in _open_error(tmp_path / "f.npy")
    (tmp_path / "f.ids.txt").write_bytes(b"a\n\xff\nc\n")
    assert "not valid UTF-8" in _open_error(tmp_path / "f.npy")


def test_ids_file_with_parquet_is_rejected(tmp_path):
    path = _write_parquet(tmp_path / "f.parquet", ["a"], _embeddings(1).tolist())
    (tmp_path / "ids.txt").write_text("a\n")

    assert "applies only to .npy" in _open_error(path, tmp_path / "ids.txt")


def test_overwrite_keeps_folder_with_features(tmp_path):
    path = _write_parquet(tmp_path / "f.parquet", _ids(4), _embeddings(4).tolist())
    build_index_from_features(path, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    inside = tmp_path / "index" / "f.parquet"
    inside.write_bytes(path.read_bytes())

    with pytest.raises(InvalidInputError, match="contains it"):
        build_index_from_features(inside, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER, overwrite=True)
    with pytest.raises(IndexExistsError):
        build_index_from_features(path, tmp_path / "index", encoder_name="e", quantizer=SMALL_QUANTIZER)
    assert inside.is_file()


# --- training on captions of some of the videos ---------------------------------------------


def test_features_index_trains_on_a_subset_of_videos(tmp_path):
    corpus = make_synthetic_corpus(SyntheticConfig(num_videos=120, num_concepts=12, dim=32, seed=3))
    ids = _ids(120)
    path = _write_parquet(tmp_path / "f.parquet", ids, corpus.video_embeddings.tolist())
    build_index_from_features(path, tmp_path / "index", encoder_name="synthetic", quantizer=SMALL_QUANTIZER)

    # Captions only for the first 60 videos; every video must still get semantic IDs.
    train_rows = [i for i in corpus.train_captions if corpus.caption_ordinals[i] < 60]
    captions = pa.table(
        {
            "video_id": [ids[corpus.caption_ordinals[i]] for i in train_rows],
            "embedding": [corpus.caption_embeddings[i].tolist() for i in train_rows],
        }
    )
    pq.write_table(captions, tmp_path / "captions.parquet")
    config = TrainConfig(views=2, levels=2, codes_per_level=8, hidden=32, epochs_per_level=2, polish_epochs=1, seed=0)
    summary = train_index(tmp_path / "index", config, caption_embeddings=tmp_path / "captions.parquet")

    assert summary.captions.videos_with_captions == 60
    unseen = [i for i in corpus.test_captions if corpus.caption_ordinals[i] >= 60]
    with Searcher(tmp_path / "index") as searcher:
        results = searcher.search_embeddings(corpus.caption_embeddings[unseen], k=5, beam=8, max_candidates=60)
    found = {hit.video_id for result in results for hit in result.hits}
    assert any(ids.index(video_id) >= 60 for video_id in found)


# --- command line -------------------------------------------------------------------------------


def test_cli_builds_from_parquet(tmp_path):
    path = _write_parquet(tmp_path / "f.parquet", _ids(12), _embeddings(12).tolist())

    result = CliRunner().invoke(
        cli, ["build", "--features", str(path), "--out", str(tmp_path / "index"), "--encoder-name", "minilm", "--levels", "2", "--codes", "4"]
    )

    assert result.exit_code == 0, result.output
    assert "12 embeddings read, 12 indexed, 0 failed" in result.output
    header = json.loads((resolve_version(tmp_path / "index") / "index.json").read_text())
    assert header["encoder"]["checksum"] == "precomputed:minilm"


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ([], "exactly one of INPUT_DIR"),
        (["videos", "--features", "f.parquet"], "exactly one of INPUT_DIR"),
        (["--features", "f.parquet", "--frames", "4"], "--frames applies only to builds from videos"),
        (["--features", "f.parquet", "--model", "m"], "--model applies only to builds from videos"),
        (["videos", "--ids", "ids.txt"], "--ids applies only to --features builds"),
        (["videos", "--encoder-name", "x"], "--encoder-name applies only to --features builds"),
    ],
)
def test_cli_rejects_bad_option_combinations(tmp_path, arguments, expected):
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "index"), *arguments])

    assert result.exit_code == 2
    assert expected in result.output


def test_cli_input_error_is_one_line(tmp_path):
    path = _write_parquet(tmp_path / "f.parquet", ["a", "a"], _embeddings(2).tolist())

    completed = subprocess.run(
        [sys.executable, "-m", "grdr_jobs.cli", "build", "--features", str(path), "--out", str(tmp_path / "index")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith("grdr-index: error: ")
    assert "'a' appears in rows 0, 1" in completed.stderr
    assert not (tmp_path / "index").exists()
