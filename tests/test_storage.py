"""Shard store, manifest, quantizer and trie: the on-disk components."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.quantize import QuantizerConfig, ResidualKMeansTokenizer, effective_codes
from grdr_core.search import exact_dense_search
from grdr_core.shards import ShardReader, ShardWriter
from grdr_core.trie import TrieReader, write_trie
from grdr_schemas.trie import COUNT_DTYPE, DB_ARRAYS, DB_META, KEY_CHILD_COUNTS, KEY_ORDINALS, KEY_POSTING_ENDS
from grdr_schemas.shards import SHARD_DTYPE


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shards_round_trip_across_shard_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    data = _unit(rng, 23, 8)
    writer = ShardWriter(tmp_path, dim=8, records_per_shard=5)
    assert list(writer.append(data[:7])) == list(range(7))
    assert list(writer.append(data[7:])) == list(range(7, 23))
    assert writer.close() == 23
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:05d}.npy" for i in range(5)]

    reader = ShardReader(tmp_path, count=23, dim=8, records_per_shard=5)
    ordinals = [22, 0, 5, 4, 13, 13]
    np.testing.assert_allclose(reader.get(ordinals), data[ordinals].astype(SHARD_DTYPE).astype(np.float32))


def test_shard_reader_memory_maps(tmp_path):
    writer = ShardWriter(tmp_path, dim=4, records_per_shard=3)
    writer.append(np.ones((4, 4), np.float32))
    writer.close()
    reader = ShardReader(tmp_path, count=4, dim=4, records_per_shard=3)
    assert all(isinstance(s, np.memmap) for s in reader._shards)


def test_shard_reader_rejects_bad_ordinals_and_shapes(tmp_path):
    writer = ShardWriter(tmp_path, dim=4, records_per_shard=3)
    writer.append(np.ones((4, 4), np.float32))
    writer.close()
    reader = ShardReader(tmp_path, count=4, dim=4, records_per_shard=3)
    with pytest.raises(InvalidInputError):
        reader.get([4])
    with pytest.raises(IndexFormatError, match="shape"):
        ShardReader(tmp_path, count=5, dim=4, records_per_shard=3)
    with pytest.raises(InvalidInputError):
        writer.append(np.ones((1, 5), np.float32))


def test_float16_dots_convert_every_value():
    kernels = pytest.importorskip("grdr_core.recall_kernels")
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(len(halves), dtype=np.float32)
    kernels.float16_row_dots(halves.reshape(-1, 1), np.arange(len(halves)), np.ones(1, np.float32), out)
    expected = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan], expected[~nan])  # subnormals and infinities included


@pytest.mark.parametrize("with_kernel", [True, False])
def test_shard_dot_matches_get_across_shards(tmp_path, with_kernel):
    kernel = pytest.importorskip("grdr_core.recall_kernels").float16_row_dots if with_kernel else None
    rng = np.random.default_rng(3)
    writer = ShardWriter(tmp_path, dim=24, records_per_shard=7)
    writer.append(_unit(rng, 30, 24))
    writer.close()
    reader = ShardReader(tmp_path, count=30, dim=24, records_per_shard=7)
    ordinals = np.array([29, 0, 8, 7, 13, 8, 21])
    query = _unit(rng, 1, 24)[0]
    scores = reader.dot(ordinals, query, kernel)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, reader.get(ordinals) @ query, rtol=0, atol=1e-6)
    assert reader.dot(np.empty(0, np.int64), query, kernel).shape == (0,)
    with pytest.raises(InvalidInputError, match="Ordinals must lie"):
        reader.dot(np.array([30]), query, kernel)
    with pytest.raises(InvalidInputError, match="shape"):
        reader.dot(ordinals, query[:5], kernel)


def test_exact_search_ranks_planted_vectors(tmp_path):
    rng = np.random.default_rng(1)
    data = _unit(rng, 50, 16)
    writer = ShardWriter(tmp_path, dim=16, records_per_shard=7)
    writer.append(data)
    writer.close()
    reader = ShardReader(tmp_path, count=50, dim=16, records_per_shard=7)

    queries = data[[3, 41]]
    ordinals, scores = exact_dense_search(reader, queries, k=5, block_size=4)

    assert ordinals.shape == (2, 5)
    assert ordinals[0, 0] == 3
    assert ordinals[1, 0] == 41
    assert np.all(np.diff(scores, axis=1) <= 0)
    expected = np.argsort(-(data.astype(np.float16).astype(np.float32) @ queries.T).T, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ordinals, expected)


def test_exact_search_k_larger_than_store(tmp_path):
    writer = ShardWriter(tmp_path, dim=4, records_per_shard=8)
    writer.append(np.eye(4, dtype=np.float32)[:3])
    writer.close()
    reader = ShardReader(tmp_path, count=3, dim=4, records_per_shard=8)
    ordinals, _ = exact_dense_search(reader, np.eye(4, dtype=np.float32)[:1], k=10)
    assert ordinals.shape == (1, 3)
    assert ordinals[0, 0] == 0


def test_effective_codes_shrinks_for_small_corpora():
    assert effective_codes(128, 11, 11) == 3
    assert effective_codes(128, 1_000_000, 1_000_000) == 128
    assert effective_codes(128, 100, 2) == 2
    assert effective_codes(128, 1, 1) == 1


def test_quantizer_is_deterministic_and_reconstructs(tmp_path):
    rng = np.random.default_rng(2)
    data = _unit(rng, 400, 16)
    config = QuantizerConfig(levels=3, codes_per_level=16, seed=7)

    first = ResidualKMeansTokenizer(config).fit(data)
    second = ResidualKMeansTokenizer(config).fit(data)
    codes = first.encode(data)

    assert codes.shape == (400, 1, 3)
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(codes, second.encode(data))
    assert first.codebook_sizes == [16, 16, 16]

    reconstruction = sum(first.codebooks[level][codes[:, 0, level]] for level in range(3))
    one_level = first.codebooks[0][codes[:, 0, 0]]
    assert np.linalg.norm(data - reconstruction, axis=1).mean() < np.linalg.norm(data - one_level, axis=1).mean()

    first.save(tmp_path / "model")
    loaded = ResidualKMeansTokenizer.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.encode(data), codes)


def test_quantizer_rejects_bad_config():
    with pytest.raises(InvalidInputError, match="levels"):
        QuantizerConfig(levels=0)
    with pytest.raises(InvalidInputError, match="codes_per_level"):
        QuantizerConfig(codes_per_level=70000)


def test_trie_children_and_postings(tmp_path):
    codes = np.array(
        [
            [[1, 2, 3]],
            [[1, 2, 4]],
            [[1, 5, 0]],
            [[7, 0, 0]],
            [[1, 2, 3]],
        ],
        dtype=np.uint16,
    )
    write_trie(tmp_path / "trie.lmdb", codes, [8, 8, 8])
    trie = TrieReader(tmp_path / "trie.lmdb")

    assert trie.children(()).tolist() == [1, 7]
    assert trie.children((1,)).tolist() == [2, 5]
    assert trie.children((1, 2)).tolist() == [3, 4]
    assert trie.children((9,)).tolist() == []
    assert trie.postings((1, 2, 3)).tolist() == [0, 4]
    assert trie.postings((7, 0, 0)).tolist() == [3]
    assert trie.postings((7, 0, 1)).tolist() == []

    stats = trie.stats()
    assert stats.distinct_ids == 4
    assert stats.largest_posting == 2
    assert stats.codes_used_per_level == [2, 3, 3]
    assert not (tmp_path / "trie.lmdb-lock").exists()


def test_trie_multi_view_posts_each_view(tmp_path):
    codes = np.array([[[1, 1], [2, 2]], [[1, 1], [1, 1]]], dtype=np.uint16)
    write_trie(tmp_path / "trie.lmdb", codes, [4, 4])
    trie = TrieReader(tmp_path / "trie.lmdb")
    assert trie.postings((1, 1)).tolist() == [0, 1]
    assert trie.postings((2, 2)).tolist() == [0]


def test_trie_bytes_are_reproducible(tmp_path):
    codes = np.random.default_rng(3).integers(0, 50, (2000, 2, 3)).astype(np.uint16)
    write_trie(tmp_path / "a.lmdb", codes, [50, 50, 50])
    write_trie(tmp_path / "b.lmdb", codes, [50, 50, 50])
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "a.lmdb") == digest(tmp_path / "b.lmdb")


def test_trie_missing_file_raises(tmp_path):
    with pytest.raises(IndexFormatError, match="not found"):
        TrieReader(tmp_path / "missing.lmdb")


def test_trie_postings_limit_returns_prefix(tmp_path):
    codes = np.zeros((10, 1, 2), dtype=np.uint16)
    write_trie(tmp_path / "trie.lmdb", codes, [1, 1])
    trie = TrieReader(tmp_path / "trie.lmdb")
    assert trie.postings((0, 0), limit=3).tolist() == [0, 1, 2]
    assert trie.postings((0, 0)).tolist() == list(range(10))


def _reference_trie_contents(codes):
    """Children and postings built one video and view at a time: what write_trie must store."""
    children, postings = {}, {}
    for ordinal, video in enumerate(codes.tolist()):
        for semantic_id in video:
            postings.setdefault(tuple(semantic_id), set()).add(ordinal)
            for level in range(len(semantic_id)):
                children.setdefault(tuple(semantic_id[:level]), set()).add(semantic_id[level])
    return children, postings


@pytest.mark.parametrize("shape, codes_per_level", [((400, 3, 3), 5), ((300, 2, 5), 65535), ((60, 4, 2), 2), ((1, 1, 1), 7)])
def test_trie_matches_reference_contents(tmp_path, shape, codes_per_level):
    codes = np.random.default_rng(3).integers(0, codes_per_level, size=shape).astype(np.uint16)
    write_trie(tmp_path / "t.lmdb", codes, [codes_per_level] * shape[2])
    reader = TrieReader(tmp_path / "t.lmdb")
    children, postings = _reference_trie_contents(codes)
    for prefix, expected in children.items():
        assert reader.children(prefix).tolist() == sorted(expected)
    for semantic_id, expected in postings.items():
        assert reader.postings(semantic_id).tolist() == sorted(expected)
    stats = reader.stats()
    assert stats.distinct_ids == len(postings)
    assert len(reader.prefix_table().codes) == sum(len(v) for v in children.values())


def test_trie_rejects_codes_out_of_range(tmp_path):
    with pytest.raises(InvalidInputError, match=r"Codes must lie in \[0, 65535\]"):
        write_trie(tmp_path / "t.lmdb", np.array([[[0, 65536]]], dtype=np.int64), [4, 70000])


def _rewrite_trie_value(path, db_name, key, value):
    """Replace (or, with ``value`` None, delete) one value of a written trie, as damage would."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, max_dbs=2, lock=False)
    with env.begin(write=True) as txn:
        db = env.open_db(db_name, txn=txn)
        if value is None:
            txn.delete(key, db=db)
        else:
            txn.put(key, value, db=db)
    env.close()


@pytest.mark.parametrize(
    "db_name, key, value, message",
    [
        (DB_ARRAYS, KEY_CHILD_COUNTS, np.array([2, 1, 2, 1], COUNT_DTYPE).tobytes(), "inconsistent"),
        (DB_ARRAYS, KEY_CHILD_COUNTS, np.array([2, 1, 1, 0, 2], COUNT_DTYPE).tobytes(), "inconsistent|without children"),
        (DB_ARRAYS, KEY_POSTING_ENDS, np.array([1, 2], COUNT_DTYPE).tobytes(), "2 posting lists for 3 semantic IDs"),
        (DB_ARRAYS, KEY_POSTING_ENDS, np.array([1, 1, 3], COUNT_DTYPE).tobytes(), "not increasing"),
        (DB_ARRAYS, KEY_ORDINALS, b"\x00\x00\x00", "not a multiple of 4"),
        (DB_ARRAYS, KEY_ORDINALS, None, "missing its ordinals"),
        (DB_META, b"format_version", b"1", "format version 1, expected 2; rebuild"),
        (DB_META, b"nodes_per_level", b"[-1, 3]", "invalid metadata"),
        (DB_META, b"nodes_per_level", b"[2, 1]", "inconsistent"),
        (DB_META, b"levels", None, "missing its levels"),
        (DB_META, b"levels", b"2.0", "invalid metadata"),
        (DB_META, b"codebook_sizes", b"[4,", "unreadable metadata"),
    ],
)
def test_damaged_trie_is_rejected(tmp_path, db_name, key, value, message):
    path = tmp_path / "t.lmdb"
    write_trie(path, np.array([[[0, 1]], [[2, 3]], [[2, 1]]], dtype=np.uint16), [4, 4])
    _rewrite_trie_value(path, db_name, key, value)
    with pytest.raises(IndexFormatError, match=message):
        TrieReader(path)


def test_trie_leaf_indices_follow_code_order(tmp_path):
    write_trie(tmp_path / "t.lmdb", np.array([[[2, 3]], [[0, 1]], [[2, 1]]], dtype=np.uint16), [4, 4])
    trie = TrieReader(tmp_path / "t.lmdb")
    paths = np.array([[0, 1], [2, 1], [2, 3], [2, 2], [5, 1], [-1, 0], [70000, 1]])
    assert trie.leaf_indices(paths).tolist() == [0, 1, 2, -1, -1, -1, -1]
    assert trie.semantic_ids().tolist() == [[0, 1], [2, 1], [2, 3]]
    assert [(semantic_id, ordinals.tolist()) for semantic_id, ordinals in trie.iter_postings()] == [((0, 1), [1]), ((2, 1), [2]), ((2, 3), [0])]
    with pytest.raises(InvalidInputError, match=r"shape \(n, 2\)"):
        trie.leaf_indices(np.array([[0, 1, 2]]))
    # The prefix table lists the root's children 0 and 2, then (0, 1), then (2, 1) and (2, 3).
    assert trie.prefix_table().codes.tolist() == [0, 2, 1, 1, 3]
    assert trie.pool_entries(np.array([4, 2, 3]), 10).tolist() == [0, 1, 2]
    assert trie.pool_entries(np.array([4, 2, 3]), 2).tolist() == [0, 1]
    assert trie.pool_entries(np.array([4, 2]), 10).tolist() == trie.pool(np.array([[2, 3], [0, 1]]), 10).tolist()
    for entries in ([1], [5], [-1]):
        with pytest.raises(InvalidInputError, match="positions of full IDs"):
            trie.pool_entries(np.array(entries), 10)
    trie.close()
    with pytest.raises(InvalidInputError, match="closed"):
        trie.postings((0, 1))


def test_trie_close_waits_for_lookups(tmp_path):
    write_trie(tmp_path / "t.lmdb", np.arange(3000, dtype=np.uint16).reshape(1000, 1, 3) % 7, [7, 7, 7])
    trie = TrieReader(tmp_path / "t.lmdb")
    with trie._mapped() as ordinals:
        trie.close()  # another thread's close, while this lookup reads the map
        assert int(ordinals.astype(np.int64).sum()) == sum(range(1000))
    with pytest.raises(InvalidInputError, match="closed"):
        trie.pool(np.array([[0, 1, 2]]), 10)


def test_empty_trie_has_no_ids(tmp_path):
    write_trie(tmp_path / "t.lmdb", np.empty((0, 2, 3), dtype=np.uint16), [4, 4, 4])
    trie = TrieReader(tmp_path / "t.lmdb")
    assert trie.children(()).tolist() == []
    assert trie.postings((0, 0, 0)).tolist() == []
    assert trie.leaf_indices(np.zeros((2, 3))).tolist() == [-1, -1]
    assert trie.stats().distinct_ids == 0
    assert trie.semantic_ids().shape == (0, 3)


def test_truncated_trie_is_rejected(tmp_path):
    path = tmp_path / "t.lmdb"
    write_trie(path, np.random.default_rng(0).integers(0, 50, (3000, 2, 3)).astype(np.uint16), [50, 50, 50])
    with path.open("r+b") as file:
        file.truncate(8192)
    with pytest.raises(IndexFormatError, match="is truncated: 8192 of"):
        TrieReader(path)


@pytest.mark.parametrize("k", [1, 3, 4, 12, 50])
def test_rerank_orders_by_score_then_ordinal(tmp_path, k):
    from types import SimpleNamespace

    from grdr_core.searcher import rerank

    # Twelve rows from four distinct vectors, so scores tie in groups of three.
    rng = np.random.default_rng(3)
    data = _unit(rng, 4, 8)[np.arange(12) % 4]
    writer = ShardWriter(tmp_path, dim=8, records_per_shard=5)
    writer.append(data)
    writer.close()
    index = SimpleNamespace(shards=ShardReader(tmp_path, count=12, dim=8, records_per_shard=5))
    query = data[1] + 0.5 * data[2]
    candidates = np.array([11, 2, 9, 5, 0, 6, 1, 10, 3, 7, 4, 8])
    ordinals, scores = rerank(index, query, candidates, k)
    all_scores = index.shards.get(candidates) @ query
    expected = candidates[np.lexsort((candidates, -all_scores))][:k]
    assert ordinals.tolist() == expected.tolist()
    assert len(set(all_scores.tolist())) == 4
    np.testing.assert_allclose(scores, np.sort(all_scores)[::-1][: len(expected)], rtol=1e-6)
