"""Trie-constrained beam search and candidate pooling with hand-set retriever weights."""

import os
import subprocess
import sys

import numpy as np
import pytest

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.recall import beam_search, beam_search_numpy, candidates_from_ids, candidates_from_ids_numpy, recall_pools
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.trie import TrieReader, write_trie


def _runtime(levels=2, codes=4, seed=0):
    """A retriever whose state is the query itself, so logits are cosines with the codebook."""
    dim = codes
    rng = np.random.default_rng(seed)
    eye = np.eye(dim, dtype=np.float32)
    return RetrieverRuntime.fold(
        w_in=eye * 5.0,  # tanh(5 q) keeps the sign pattern of a one-hot query
        b_in=np.zeros(dim, np.float32),
        w_out=[eye.copy() for _ in range(levels)],
        codebooks=[eye.copy() for _ in range(levels)],
        w_h=[np.zeros((dim, dim), np.float32) for _ in range(levels)],
        w_e=[rng.standard_normal((dim, dim)).astype(np.float32) * 0.0 for _ in range(levels)],
        b=[np.zeros(dim, np.float32) for _ in range(levels)],
        scale=10.0,
    )


@pytest.fixture
def trie(tmp_path):
    codes = np.array([[[0, 0]], [[0, 1]], [[1, 2]], [[2, 3]], [[0, 0]], [[3, 3]]], dtype=np.uint16)
    write_trie(tmp_path / "t.lmdb", codes, [4, 4])
    return TrieReader(tmp_path / "t.lmdb")


def test_beam_search_only_returns_existing_ids(trie):
    runtime = _runtime()
    queries = np.eye(4, dtype=np.float32)
    existing = {(0, 0), (0, 1), (1, 2), (2, 3), (3, 3)}
    for decoded in beam_search(runtime, trie, queries, beam=10):
        assert {d.codes for d in decoded} <= existing
        assert len(decoded) == 5
        assert all(a.log_prob >= b.log_prob for a, b in zip(decoded, decoded[1:]))


def test_beam_search_follows_the_model(trie):
    runtime = _runtime()
    (decoded,) = beam_search(runtime, trie, np.eye(4, dtype=np.float32)[[1]], beam=1)
    # Level 0 prefers code 1; the only child of (1,) is 2.
    assert [d.codes for d in decoded] == [(1, 2)]
    assert decoded[0].log_prob < 0


def test_beam_width_limits_results(trie):
    results = beam_search(_runtime(), trie, np.eye(4, dtype=np.float32)[[0]], beam=2)
    assert len(results[0]) == 2
    assert results[0][0].codes[0] == 0


def test_batch_matches_single_queries(trie):
    runtime = _runtime()
    queries = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    batch = beam_search(runtime, trie, queries, beam=3)
    for query, expected in zip(queries, batch):
        assert beam_search(runtime, trie, query[None], beam=3)[0] == expected


def test_candidates_in_beam_order_deduplicated_and_capped(trie):
    (decoded,) = beam_search(_runtime(), trie, np.eye(4, dtype=np.float32)[[0]], beam=5)
    all_candidates = candidates_from_ids(trie, decoded, max_candidates=100)
    assert sorted(all_candidates.tolist()) == [0, 1, 2, 3, 4, 5]
    assert all_candidates[:2].tolist() == [0, 4]  # (0, 0) holds videos 0 and 4 and decodes first
    assert candidates_from_ids(trie, decoded, max_candidates=3).tolist() == all_candidates[:3].tolist()


def test_bad_arguments_raise(trie):
    with pytest.raises(InvalidInputError, match="beam"):
        beam_search(_runtime(), trie, np.eye(4, dtype=np.float32)[[0]], beam=0)
    with pytest.raises(InvalidInputError, match="levels"):
        beam_search(_runtime(levels=3), trie, np.eye(4, dtype=np.float32)[[0]], beam=2)
    with pytest.raises(InvalidInputError, match="max_candidates"):
        candidates_from_ids(trie, [], max_candidates=0)


def test_runtime_save_load_round_trip(tmp_path):
    runtime = _runtime(seed=3)
    runtime.save(tmp_path / "model")
    loaded = RetrieverRuntime.load(tmp_path / "model")
    states = loaded.start(np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(states, runtime.start(np.eye(4, dtype=np.float32)))
    np.testing.assert_array_equal(loaded.logits(1, states), runtime.logits(1, states))


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('"format_version": 2', '"format_version": 1', "format version 1, expected 2; run `grdr-index train` again"),
        ('"codebook_sizes"', '"sizes"', "missing codebook_sizes"),
    ],
)
def test_damaged_runtime_config_is_rejected(tmp_path, old, new, message):
    _runtime().save(tmp_path / "model")
    config = tmp_path / "model" / "retriever.json"
    config.write_text(config.read_text().replace(old, new))
    with pytest.raises(IndexFormatError, match=message):
        RetrieverRuntime.load(tmp_path / "model")


def test_runtime_stores_only_folded_weights(tmp_path):
    from safetensors.numpy import load_file

    _runtime(levels=3, codes=4).save(tmp_path / "model")
    tensors = load_file(str(tmp_path / "model" / "retriever.safetensors"))
    assert sorted(tensors) == ["b_in", "code_inputs", "code_weights", "output_grams", "w_h", "w_in"]
    assert tensors["w_h"].shape == (2, 4, 4)  # the last level chooses no next code
    assert tensors["code_inputs"].shape == (8, 4)


def _reference_beam_search(runtime, trie, query, beam, level_decay=1.0, prefix_beam=None):
    """Plain beam search over ``trie.children``: the definition the vectorised one must match."""
    prefix_beam = beam if prefix_beam is None else prefix_beam
    beams = [((), 0.0, runtime.start(query[None]))]
    for level in range(runtime.levels):
        extended = []
        for row, (prefix, score, state) in enumerate(beams):
            allowed = trie.children(prefix)
            logits = runtime.logits(level, state)[0].astype(np.float64) * level_decay**level
            log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            extended += [(score + log_probs[code], row, int(code)) for code in allowed]
        extended.sort(key=lambda item: (-item[0], item[1], item[2]))
        beams = [
            (beams[row][0] + (code,), total, runtime.advance(level, beams[row][2], np.array([code])) if level + 1 < runtime.levels else None)
            for total, row, code in extended[: beam if level + 1 == runtime.levels else prefix_beam]
        ]
    return [(prefix, score) for prefix, score, _ in beams]


def _random_runtime(rng, levels, codes, dim, hidden):
    return RetrieverRuntime.fold(
        w_in=rng.standard_normal((hidden, dim)).astype(np.float32),
        b_in=rng.standard_normal(hidden).astype(np.float32),
        w_out=[rng.standard_normal((dim, hidden)).astype(np.float32) for _ in range(levels)],
        codebooks=[rng.standard_normal((codes, dim)).astype(np.float32) for _ in range(levels)],
        w_h=[rng.standard_normal((hidden, hidden)).astype(np.float32) / np.sqrt(hidden) for _ in range(levels)],
        w_e=[rng.standard_normal((hidden, dim)).astype(np.float32) for _ in range(levels)],
        b=[rng.standard_normal(hidden).astype(np.float32) for _ in range(levels)],
        scale=4.0,
    )


@pytest.mark.parametrize("level_decay", [1.0, 0.6])
@pytest.mark.parametrize("search", [beam_search, beam_search_numpy], ids=["compiled", "numpy"])
def test_beam_search_matches_reference(tmp_path, search, level_decay):
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 6, size=(300, 2, 3), dtype=np.uint16)
    write_trie(tmp_path / "t.lmdb", codes, [6, 6, 6])
    trie = TrieReader(tmp_path / "t.lmdb")
    runtime = _random_runtime(rng, levels=3, codes=6, dim=8, hidden=5)
    queries = rng.standard_normal((6, 8)).astype(np.float32)
    # Prefix beams narrower and wider than the beam, and 2, which keeps fewer prefixes than
    # there are first codes.
    for beam, prefix_beam in ((1, None), (7, None), (50, None), (7, 2), (50, 7), (3, 40)):
        for query, decoded in zip(queries, search(runtime, trie, queries, beam, level_decay, prefix_beam)):
            expected = _reference_beam_search(runtime, trie, query, beam, level_decay, prefix_beam)
            assert [d.codes for d in decoded] == [prefix for prefix, _ in expected]
            np.testing.assert_allclose([d.log_prob for d in decoded], [score for _, score in expected], rtol=1e-5)


@pytest.mark.parametrize("search", [beam_search, beam_search_numpy], ids=["compiled", "numpy"])
def test_prefix_beam_one_keeps_greedy_prefix(tmp_path, search):
    rng = np.random.default_rng(8)
    write_trie(tmp_path / "t.lmdb", rng.integers(0, 6, size=(300, 2, 3), dtype=np.uint16), [6, 6, 6])
    trie = TrieReader(tmp_path / "t.lmdb")
    runtime = _random_runtime(rng, levels=3, codes=6, dim=8, hidden=5)
    for query in rng.standard_normal((5, 8)).astype(np.float32):
        (greedy,) = search(runtime, trie, query[None], 1)
        (decoded,) = search(runtime, trie, query[None], 10, prefix_beam=1)
        # Every ID is a child of the greedy search's two-code prefix, and all of its children are there.
        assert {d.codes[:2] for d in decoded} == {greedy[0].codes[:2]}
        assert sorted(d.codes[2] for d in decoded) == sorted(trie.children(greedy[0].codes[:2]).tolist())


@pytest.fixture
def large_trie_and_runtime(tmp_path):
    """A trie and retriever of realistic width: 32 codes per level, state 64, odd sizes included."""
    rng = np.random.default_rng(11)
    # Skewed codes, so that prefixes have from one to all 32 children.
    codes = np.minimum(rng.geometric(0.08, size=(3000, 3, 3)) - 1, 31).astype(np.uint16)
    write_trie(tmp_path / "t.lmdb", codes, [32, 32, 32])
    return TrieReader(tmp_path / "t.lmdb"), _random_runtime(rng, levels=3, codes=32, dim=48, hidden=66)


@pytest.mark.parametrize("level_decay", [1.0, 0.5])
def test_compiled_recall_matches_numpy_path(large_trie_and_runtime, level_decay):
    pytest.importorskip("numba")
    trie, runtime = large_trie_and_runtime
    queries = np.random.default_rng(3).standard_normal((40, 48)).astype(np.float32)
    for beam, prefix_beam in ((1, None), (5, None), (20, None), (200, None), (200, 20), (20, 200)):
        compiled = beam_search(runtime, trie, queries, beam, level_decay, prefix_beam)
        reference = beam_search_numpy(runtime, trie, queries, beam, level_decay, prefix_beam)
        pools = recall_pools(runtime, trie, queries, beam, max_candidates=150, level_decay=level_decay, prefix_beam=prefix_beam)
        for decoded, expected, pool in zip(compiled, reference, pools):
            _assert_same_ids_up_to_near_ties(decoded, expected)
            np.testing.assert_allclose([d.log_prob for d in decoded], [d.log_prob for d in expected], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(pool, candidates_from_ids_numpy(trie, decoded, max_candidates=150))
            np.testing.assert_array_equal(candidates_from_ids(trie, decoded, max_candidates=150), pool)
            if [d.codes for d in decoded] == [d.codes for d in expected]:
                np.testing.assert_array_equal(pool, candidates_from_ids_numpy(trie, expected, max_candidates=150))


@pytest.mark.parametrize("search", [beam_search, beam_search_numpy], ids=["compiled", "numpy"])
def test_numpy_integer_beams_are_accepted(large_trie_and_runtime, search):
    trie, runtime = large_trie_and_runtime
    queries = np.random.default_rng(6).standard_normal((3, 48)).astype(np.float32)
    expected = [[d.codes for d in ids] for ids in search(runtime, trie, queries, 20, prefix_beam=5)]
    # Numba would mix uint64 and int64 into float64, which no array shape accepts.
    for beam, prefix_beam in ((np.uint64(20), 5), (20, np.uint64(5)), (np.int32(20), np.uint8(5))):
        decoded = search(runtime, trie, queries, beam, prefix_beam=prefix_beam)
        assert [[d.codes for d in ids] for ids in decoded] == expected


@pytest.mark.parametrize("search", [beam_search, beam_search_numpy], ids=["compiled", "numpy"])
def test_beam_search_rejects_prefix_beam_zero(trie, search):
    with pytest.raises(InvalidInputError, match="prefix_beam must be >= 1, got 0"):
        search(_runtime(), trie, np.eye(4, dtype=np.float32)[:1], 3, prefix_beam=0)


@pytest.mark.parametrize("level_decay", [0.0, -0.5, 1.5, float("nan"), True, "0.5"])
@pytest.mark.parametrize("search", [beam_search, beam_search_numpy], ids=["compiled", "numpy"])
def test_beam_search_rejects_bad_level_decay(trie, search, level_decay):
    with pytest.raises(InvalidInputError, match=r"level_decay must be a number in \(0, 1\]"):
        search(_runtime(), trie, np.eye(4, dtype=np.float32)[:1], 3, level_decay)


def test_level_decay_reorders_deep_codes(tmp_path):
    # Two IDs under one first code: the second code's logits decide between them, and
    # a decay near 0 flattens them, so the totals become nearly equal.
    rng = np.random.default_rng(4)
    write_trie(tmp_path / "t.lmdb", np.array([[[0, 1]], [[0, 2]], [[1, 3]]], dtype=np.uint16), [4, 4])
    trie = TrieReader(tmp_path / "t.lmdb")
    runtime = _random_runtime(rng, levels=2, codes=4, dim=6, hidden=5)
    query = rng.standard_normal((1, 6)).astype(np.float32)
    sharp = {d.codes: d.log_prob for d in beam_search(runtime, trie, query, 3)[0]}
    flat = {d.codes: d.log_prob for d in beam_search(runtime, trie, query, 3, level_decay=1e-6)[0]}
    assert abs(sharp[(0, 1)] - sharp[(0, 2)]) > 0.01
    assert abs(flat[(0, 1)] - flat[(0, 2)]) < 1e-4
    # The first level is not scaled, and the flattened second level gives each of its 4 codes log(1/4).
    first = runtime.logits(0, runtime.start(query))[0].astype(np.float64)
    first_log_probs = first - first.max() - np.log(np.exp(first - first.max()).sum())
    assert flat[(0, 1)] == pytest.approx(first_log_probs[0] + np.log(0.25), abs=1e-4)
    assert flat[(1, 3)] == pytest.approx(first_log_probs[1] + np.log(0.25), abs=1e-4)


@pytest.mark.parametrize("search", [beam_search, beam_search_numpy], ids=["compiled", "numpy"])
def test_beam_search_rejects_non_finite_queries(tmp_path, search):
    rng = np.random.default_rng(2)
    write_trie(tmp_path / "t.lmdb", rng.integers(0, 6, size=(20, 2, 3), dtype=np.uint16), [6, 6, 6])
    trie = TrieReader(tmp_path / "t.lmdb")
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    queries[2, 5] = np.nan
    with pytest.raises(InvalidInputError, match=r"rows \[2\] contain NaN or inf"):
        search(_random_runtime(rng, levels=3, codes=6, dim=8, hidden=5), trie, queries, 5)


def test_compiled_exp_sum_matches_numpy():
    kernels = pytest.importorskip("grdr_core.recall_kernels")
    rng = np.random.default_rng(5)
    # Logit differences of a softmax: from 0 down past float32's smallest normal exp.
    for count in (1, 3, 44, 128, 1000):
        values = np.concatenate(([0.0], -rng.exponential(8.0, count - 1), [-200.0] * (count > 3))).astype(np.float32)
        peak = np.float32(2.5)
        values += peak
        got = kernels._shifted_exp_sum(values, peak, np.empty(len(values), np.float32), np.empty(len(values), np.uint32))
        expected = np.exp(values.astype(np.float64) - np.float64(peak)).sum()
        assert abs(float(got) - expected) <= 2e-6 * expected, count
    # Single terms across the whole range, each within a few float32 ulps of exp.
    x = np.linspace(-87.0, 0.0, 100_001, dtype=np.float32)
    terms = np.array([kernels._shifted_exp_sum(x[i : i + 1], np.float32(0.0), np.empty(1, np.float32), np.empty(1, np.uint32)) for i in range(0, len(x), 97)])
    np.testing.assert_allclose(terms, np.exp(x[::97].astype(np.float64)), rtol=5e-7)


def _assert_same_ids_up_to_near_ties(decoded, expected, tolerance=1e-5):
    """Assert equal ID lists, except that IDs whose log-probs differ by less than ``tolerance`` may swap.

    The two paths sum dot products in different orders, so their log-probs differ in the
    last bits. Two IDs closer than that may come out in either order, or one of them may
    fall off the end of the beam.
    """
    assert len(decoded) == len(expected)
    scores = [d.log_prob for d in expected]
    start = 0
    while start < len(expected):
        stop = start + 1
        while stop < len(expected) and scores[stop - 1] - scores[stop] < tolerance:
            stop += 1
        got = {d.codes for d in decoded[start:stop]}
        want = {d.codes for d in expected[start:stop]}
        if stop < len(expected):
            assert got == want, (start, stop)
        else:
            # The last group may swap one ID for one that tied with it just beyond the beam.
            extra = [d for d in decoded[start:stop] if d.codes not in want]
            assert len(extra) <= 1 and all(abs(d.log_prob - scores[-1]) < tolerance for d in extra), (start, stop)
        start = stop


def test_fallback_without_numba_uses_numpy_path(large_trie_and_runtime, monkeypatch):
    import grdr_core.recall as recall

    trie, runtime = large_trie_and_runtime
    queries = np.random.default_rng(6).standard_normal((4, 48)).astype(np.float32)
    monkeypatch.setattr(recall, "_kernels", False)  # the state after a failed numba import
    decoded = beam_search(runtime, trie, queries, 20)
    pools = recall_pools(runtime, trie, queries, 20, 100)
    expected = beam_search_numpy(runtime, trie, queries, 20)
    assert decoded == expected
    for pool, ids in zip(pools, expected):
        np.testing.assert_array_equal(pool, candidates_from_ids_numpy(trie, ids, 100))


def test_recall_pools_respects_cap(large_trie_and_runtime):
    trie, runtime = large_trie_and_runtime
    queries = np.random.default_rng(4).standard_normal((5, 48)).astype(np.float32)
    for cap in (1, 2, 37, 5000):
        for pool, decoded in zip(recall_pools(runtime, trie, queries, 20, cap), beam_search_numpy(runtime, trie, queries, 20)):
            assert len(pool) <= cap
            assert len(set(pool.tolist())) == len(pool)
            np.testing.assert_array_equal(pool, candidates_from_ids_numpy(trie, decoded, cap))


def test_first_occurrences_kernel_matches_numpy():
    kernels = pytest.importorskip("grdr_core.recall_kernels")
    rng = np.random.default_rng(5)
    for size, high in ((0, 5), (1, 5), (50, 10), (1000, 300), (5000, 1 << 31)):
        ordinals = rng.integers(0, high, size=size).astype("<u4")
        # Overlapping, empty and repeated ranges, in an order unlike the array's.
        cuts = np.sort(rng.integers(0, size + 1, size=12))
        starts = np.concatenate((cuts[6:], cuts[:6], [0]))
        ends = np.concatenate((np.minimum(cuts[6:] + 40, size), cuts[:6], [size]))
        chained = np.concatenate([ordinals[a:b] for a, b in zip(starts, ends)])
        _, first = np.unique(chained, return_index=True)
        expected = chained[np.sort(first)].astype(np.int64)
        for limit in (1, 7, 300, 10_000):
            np.testing.assert_array_equal(kernels.first_occurrences_in_ranges(ordinals, starts, ends, limit), expected[:limit])


def test_trie_codes_outside_the_codebook_raise(tmp_path):
    pytest.importorskip("numba")
    write_trie(tmp_path / "t.lmdb", np.array([[[0, 1]], [[2, 7]]], dtype=np.uint16), [4, 8])
    with pytest.raises(IndexFormatError, match="outside the retriever's codebooks"):
        beam_search(_runtime(), TrieReader(tmp_path / "t.lmdb"), np.eye(4, dtype=np.float32)[[0]], beam=3)


def test_empty_query_batch_returns_nothing(trie):
    assert beam_search(_runtime(), trie, np.empty((0, 4), np.float32), beam=3) == []
    assert recall_pools(_runtime(), trie, np.empty((0, 4), np.float32), 3, 10) == []


def test_query_of_wrong_width_raises(trie):
    with pytest.raises(InvalidInputError, match="shape"):
        beam_search(_runtime(), trie, np.ones((1, 5), np.float32), beam=3)


_CACHE_PROBE = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
from grdr_core import recall_kernels
print(recall_kernels.first_occurrences_in_ranges(np.array([3, 1, 3, 2], dtype="<u4"), np.array([0]), np.array([4]), 10).tolist())
"""


def _run_cache_probe(env_changes):
    env = {**os.environ, **env_changes}
    env.pop("NUMBA_DISABLE_CACHING", None)
    return subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, check=True, timeout=300).stdout


def test_kernels_cache_in_numba_cache_dir(tmp_path):
    pytest.importorskip("numba")
    output = _run_cache_probe({"NUMBA_CACHE_DIR": str(tmp_path)})
    assert "[3, 1, 2]" in output
    assert list(tmp_path.rglob("recall_kernels.first_occurrences_in_ranges*.nbi"))
    assert list(tmp_path.rglob("recall_kernels.first_occurrences_in_ranges*.nbc"))


def test_kernels_compile_without_a_writable_cache():
    pytest.importorskip("numba")
    # ZipCacheLocator alone finds no place for a module that is a plain file, which is
    # what numba meets when NUMBA_CACHE_DIR, __pycache__ and the user cache are read-only.
    output = _run_cache_probe({"NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"})
    assert "without a disk cache" in output
    assert "[3, 1, 2]" in output


def test_prefix_table_lists_children_by_node(trie):
    table = trie.prefix_table()
    # Root -> codes 0, 1, 2, 3 (nodes 1-4); then the children of (0,), (1,), (2,), (3,).
    assert table.nodes_per_level == [1, 4]
    assert table.codes.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 3]
    assert table.child_count.tolist() == [4, 2, 1, 1, 1]
    assert table.first_child.tolist() == [0, 4, 6, 7, 8]
