"""Evaluation: metrics on hand-computed cases, queries files, baselines, and the eval command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from grdr_core.baselines import DenseBaseline, build_hnsw, build_ivfpq, choose_ivfpq_shape, single_thread
from grdr_core.embedding_index import build_index_from_embeddings
from grdr_core.errors import InvalidInputError
from grdr_core.eval_metrics import first_relevant_rank, latency_percentiles, order_by_score, rank_summary, recall_at
from grdr_core.eval_queries import read_queries
from grdr_core.evaluation import EvalConfig, beam_sweep, evaluate, run_baseline, run_grdr, summary
from grdr_core.quantize import QuantizerConfig
from grdr_core.search import exact_dense_search
from grdr_core.searcher import Searcher
from grdr_core.testing.synthetic import SyntheticConfig, make_synthetic_corpus
from grdr_core.train_index import train_index
from grdr_core.training import TrainConfig
from grdr_core.versions import resolve_version
from grdr_jobs.cli import cli

FAST_TRAINING = TrainConfig(views=3, levels=2, codes_per_level=16, hidden=64, epochs_per_level=3, polish_epochs=2, seed=0)
INDEX_IDS = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Metrics on hand-computed cases.


def test_order_by_score_ties_and_padding():
    ordered = order_by_score(np.array([7, 3, 5, -1, 2]), np.array([0.5, 0.9, 0.5, 9.0, 0.1]))
    assert ordered.tolist() == [3, 5, 7, 2]


def test_first_relevant_rank_cases():
    ranked = np.array([4, 2, 9, 1])
    assert first_relevant_rank(ranked, np.array([4])) == 1
    assert first_relevant_rank(ranked, np.array([1, 9])) == 3  # several ground truths: the best-ranked counts
    assert first_relevant_rank(ranked, np.array([8])) == math.inf
    assert first_relevant_rank(np.array([], dtype=np.int64), np.array([0])) == math.inf


def test_rank_summary_hand_computed():
    ranks = np.array([1, 3, 7, math.inf, 60])
    summary_ = rank_summary(ranks, corpus_size=100)
    assert summary_["r1"] == pytest.approx(1 / 5)
    assert summary_["r5"] == pytest.approx(2 / 5)
    assert summary_["r10"] == pytest.approx(3 / 5)
    assert summary_["r50"] == pytest.approx(3 / 5)
    # The unretrieved query counts as rank 101: sorted 1, 3, 7, 60, 101.
    assert summary_["median_rank"] == 7
    assert summary_["mean_rank"] == pytest.approx(172 / 5)
    assert summary_["not_retrieved"] == 1


def test_recall_at_boundaries():
    assert recall_at(np.array([10.0, 11.0]), 10) == 0.5
    with pytest.raises(InvalidInputError):
        recall_at(np.array([]), 10)


def test_latency_percentiles_interpolate():
    stats = latency_percentiles(np.array([1.0, 2.0, 3.0, 4.0, 10.0]))
    assert stats["p50"] == 3.0
    assert stats["p95"] == pytest.approx(4.0 + 0.8 * 6.0)  # position 0.95 * 4 = 3.8


def test_dense_ranks_hand_computed():
    # v0 and v2 are identical, so every query ties them; the lower ordinal ranks first.
    matrix = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1], [0.6, 0.8], [0, 1]], dtype=np.float32)
    truth = [np.array([2]), np.array([0, 3]), np.array([1]), np.array([1])]
    baseline = DenseBaseline(matrix, stored_bytes=16)

    assert [r.tolist() for r in baseline.search(queries[:1], 2)] == [[0, 2]]
    run = run_baseline(baseline, queries, truth, EvalConfig(latency_k=2))
    # Ranked lists: [0, 2, 3, 1], [1, 3, 0, 2], [3, 1, 0, 2] and [1, 3, 0, 2].
    assert run.ranks.tolist() == [2.0, 2.0, 2.0, 1.0]
    metrics = rank_summary(run.ranks, len(matrix))
    assert metrics["r1"] == 0.25
    assert metrics["r5"] == 1.0
    assert metrics["median_rank"] == 2.0
    assert metrics["mean_rank"] == 1.75
    assert run.latency_ms["total"].shape == (4,)
    assert run.bytes_per_video == {"shards": 4.0}


# Baselines.


def test_ivfpq_shape_for_corpus_sizes():
    small = choose_ivfpq_shape(200, 32, target_code_bytes=500)
    assert (small.nlist, small.nbits, small.m) == (5, 2, 32)
    large = choose_ivfpq_shape(100_000, 64, target_code_bytes=16)
    assert (large.nlist, large.nbits, large.m, large.code_bytes) == (316, 8, 16, 16)
    tiny = choose_ivfpq_shape(50, 64, target_code_bytes=3)
    assert (tiny.nlist, tiny.nbits, tiny.m, tiny.code_bytes) == (1, 1, 16, 2)
    assert choose_ivfpq_shape(10_000, 48, target_code_bytes=0.5).m == 1
    with pytest.raises(InvalidInputError, match="at least 2"):
        choose_ivfpq_shape(1, 8, 8)


def test_faiss_baselines_find_stored_vectors():
    corpus = make_synthetic_corpus(SyntheticConfig(num_videos=300, num_concepts=12, dim=16, seed=2))
    vectors = corpus.video_embeddings
    with single_thread():
        hnsw = build_hnsw(vectors, m=16, ef_search=64)
        ivfpq = build_ivfpq(vectors, choose_ivfpq_shape(len(vectors), 16, 16), nprobe=8)
    for baseline in (hnsw, ivfpq):
        with single_thread():
            ranked = baseline.search(vectors[:20], 10)
        top1 = np.mean([row[0] == i for i, row in enumerate(ranked)])
        assert top1 >= 0.9, baseline.name
        assert all(len(row) == 10 for row in ranked)
        assert baseline.bytes_per_video()["faiss_index"] > 0
    assert ivfpq.settings()["nbits"] == 2


# Queries files.


def test_queries_csv_groups_and_unknown_ids(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(
        "query_id,video_id,text\n"
        "q1,a.mp4,a red car\n"
        "q1,c,a red car\n"  # matches c.mp4 without its extension
        "q2,zzz,a dog\n"
        "q3,b.mp4,a cat\n"
        "q3,nope,a cat\n"
        "q4,,empty id\n"
    )
    queries = read_queries(path, INDEX_IDS, dim=4)
    assert queries.query_ids == ["q1", "q3"]
    assert [t.tolist() for t in queries.truth] == [[0, 2], [1]]
    assert queries.texts == ["a red car", "a cat"]
    assert queries.embeddings is None
    report = queries.report
    assert (report.rows, report.queries, report.evaluated, report.skipped_unknown) == (6, 4, 2, 2)
    assert report.unknown_ids == 3
    assert report.matched_without_extension == 1


def test_queries_jsonl_list_ids(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"video_id": ["a.mp4", "d.mp4", "a.mp4"], "text": "x"}\n{"video_id": ["b.mp4"], "text": " y "}\n')
    queries = read_queries(path, INDEX_IDS, dim=4)
    assert [t.tolist() for t in queries.truth] == [[0, 3], [1]]
    assert queries.texts == ["x", "y"]
    assert queries.query_ids == ["1", "2"]


def test_queries_parquet_embeddings(tmp_path):
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"video_id": ["a.mp4", "b.mp4"], "embedding": [[3.0, 4.0], [0.0, 2.0]]}), path)
    queries = read_queries(path, INDEX_IDS, dim=2)
    assert queries.kind == "embedding"
    np.testing.assert_allclose(queries.embeddings, [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(InvalidInputError, match="3-dimensional"):
        read_queries(path, INDEX_IDS, dim=3)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.csv", "text\nhello\n", "missing column 'video_id'"),
        ("q.csv", "video_id\na.mp4\n", "exactly one of the columns"),
        ("q.csv", "video_id,text,embedding\na.mp4,x,1\n", "exactly one of the columns"),
        ("q.csv", "video_id,embedding\na.mp4,1\n", "Parquet or JSONL"),
        ("q.csv", "video_id,text\na.mp4,  \n", "row 1 is empty"),
        ("q.csv", "query_id,video_id,text\nq,a.mp4,x\nq,b.mp4,y\n", "different texts"),
        ("q.csv", "video_id,text\nmissing.mp4,x\n", "No query"),
        ("q.jsonl", '{"video_id": "a.mp4", "text": "x"}\n{"video_id": ["b.mp4"], "text": "y"}\n', "one type on every line"),
        ("q.jsonl", '{"video_id": {"a": 1}, "text": "x"}\n', "column 'video_id' must hold strings or lists of strings"),
        ("q.jsonl", '{"video_id": "a.mp4", "query_id": [1], "text": "x"}\n', "column 'query_id' must hold strings"),
        ("q.jsonl", '{"video_id": "a.mp4", "embedding": [1, null, 0, 0]}\n', "contains null values"),
        ("q.json", "[]", "Unsupported queries file type"),
        ("absent.csv", None, "not found"),
    ],
)
def test_bad_queries_files_are_rejected(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_queries(path, INDEX_IDS, dim=4)


def test_conflicting_embeddings_are_rejected(tmp_path):
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["q", "q"], "video_id": ["a.mp4", "b.mp4"], "embedding": [[1.0, 0.0], [0.0, 1.0]]}), path)
    with pytest.raises(InvalidInputError, match="different embeddings"):
        read_queries(path, INDEX_IDS, dim=2)


# The eval command on a trained synthetic index.


def _video_ids(n):
    return [f"videos/v{i:04d}.mp4" for i in range(n)]


@pytest.fixture(scope="module")
def corpus():
    return make_synthetic_corpus(SyntheticConfig(num_videos=200, num_concepts=24, dim=32, seed=5))


@pytest.fixture(scope="module")
def trained_index(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ids = _video_ids(len(corpus.video_embeddings))
    index_dir = build_index_from_embeddings(
        ids, corpus.video_embeddings, root / "index", encoder_name="synthetic", quantizer=QuantizerConfig(levels=2, codes_per_level=16)
    )
    train = corpus.train_captions
    captions = root / "captions.parquet"
    pq.write_table(
        pa.table({"video_id": [ids[o] for o in corpus.caption_ordinals[train]], "embedding": corpus.caption_embeddings[train].tolist()}),
        captions,
    )
    train_index(index_dir, FAST_TRAINING, caption_embeddings=captions)
    return index_dir


@pytest.fixture(scope="module")
def queries_file(corpus, tmp_path_factory):
    """Held-out captions, one query with two ground truths, and one query of an unknown video."""
    ids = _video_ids(len(corpus.video_embeddings))
    test = corpus.test_captions
    query_ids = [f"q{i}" for i in range(len(test))]
    video_ids = [ids[o] for o in corpus.caption_ordinals[test]]
    embeddings = corpus.caption_embeddings[test].tolist()
    query_ids += ["q0", "unknown"]
    video_ids += [ids[int(corpus.caption_ordinals[test[1]])], "videos/missing.mp4"]
    embeddings += [embeddings[0], embeddings[1]]
    path = tmp_path_factory.mktemp("queries") / "queries.parquet"
    pq.write_table(pa.table({"query_id": query_ids, "video_id": video_ids, "embedding": embeddings}), path)
    return path


def _expected_ranks(ranked_rows, truth):
    return np.array([first_relevant_rank(np.asarray(r), t) for r, t in zip(ranked_rows, truth)])


def test_eval_json_blocks(trained_index, queries_file, corpus):
    result = CliRunner().invoke(cli, ["eval", str(trained_index), "--queries", str(queries_file), "--json", "--max-candidates", "100"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)

    queries = payload["queries"]
    assert queries["queries"] == len(corpus.test_captions) + 1
    assert queries["evaluated"] == len(corpus.test_captions)
    assert queries["skipped_unknown"] == 1
    assert queries["unknown_ids"] == 1
    assert payload["depth"] == 100
    for name in ("grdr", "dense", "faiss_hnsw", "faiss_ivfpq"):
        block = payload[name]
        for key in ("r1", "r5", "r10", "r50", "median_rank", "mean_rank", "latency_ms_p50", "latency_ms_p95", "bytes_per_video"):
            assert key in block, (name, key)
        assert 0 <= block["r1"] <= block["r5"] <= block["r10"] <= block["r50"] <= 1, name
        assert block["latency_ms_p50"] > 0, name
    grdr = payload["grdr"]
    assert 0 < grdr["candidate_hit"] <= 1
    assert grdr["r50"] <= grdr["candidate_hit"]
    assert 1 <= grdr["mean_candidates"] <= 100
    assert set(grdr["latency_split_ms"]) == {"recall", "rerank"}
    assert set(grdr["bytes_per_video"]) == {"trie", "retriever", "training_model", "shards", "manifest", "header"}
    # Measured about 0.9 for dense on this corpus; a broken rank pass gives about 0.05.
    assert payload["dense"]["r10"] >= 0.7
    assert payload["faiss_hnsw"]["r10"] >= payload["dense"]["r10"] - 0.05


def test_eval_matches_search_apis(trained_index, queries_file):
    config = EvalConfig(max_candidates=100)
    evaluation = evaluate(trained_index, queries_file, config)
    queries = read_queries(queries_file, [f"videos/v{i:04d}.mp4" for i in range(200)], dim=32)
    truth = queries.truth
    assert len(truth) == len(evaluation.runs["dense"].ranks)

    with Searcher(trained_index) as searcher:
        ordinals, _ = exact_dense_search(searcher.index.shards, queries.embeddings, k=config.depth)
        results = searcher.search_embeddings(queries.embeddings, k=config.depth, beam=config.beam, max_candidates=100)
    np.testing.assert_array_equal(evaluation.runs["dense"].ranks, _expected_ranks(ordinals, truth))
    grdr_ranked = [[hit.ordinal for hit in r.hits] for r in results]
    np.testing.assert_array_equal(evaluation.runs["grdr"].ranks, _expected_ranks(grdr_ranked, truth))
    np.testing.assert_array_equal(evaluation.runs["grdr"].candidates, [r.candidates for r in results])

    # The query with two ground truths (q0) ranks at its better one.
    q0 = queries.query_ids.index("q0")
    assert len(truth[q0]) == 2
    single = [_expected_ranks([ordinals[q0]], [np.array([t])])[0] for t in truth[q0]]
    assert evaluation.runs["dense"].ranks[q0] == min(single)


def test_eval_passes_prefix_beam_to_grdr(trained_index, queries_file):
    queries = read_queries(queries_file, [f"videos/v{i:04d}.mp4" for i in range(200)], dim=32)
    config = EvalConfig(max_candidates=100, prefix_beam=2)
    with Searcher(trained_index) as searcher:
        run = run_grdr(searcher, queries.embeddings, queries.truth, config, {}, None)
        narrow = searcher.search_embeddings(queries.embeddings, k=config.depth, max_candidates=100, prefix_beam=2)
        full = searcher.search_embeddings(queries.embeddings, k=config.depth, max_candidates=100)
        sweep = beam_sweep(searcher, queries.embeddings, queries.truth, EvalConfig(max_candidates=100, prefix_beam=2, sweep_beams=(5, 20)))
    np.testing.assert_array_equal(run.candidates, [r.candidates for r in narrow])
    assert run.candidates.sum() < sum(r.candidates for r in full)
    assert (run.settings["beam"], run.settings["prefix_beam"]) == (config.beam, 2)
    # A prefix beam that is set stays fixed across the sweep's beams.
    assert [(p.beam, p.prefix_beam) for p in sweep] == [(5, 2), (20, 2)]
    with pytest.raises(InvalidInputError, match="prefix_beam must be an integer"):
        EvalConfig(prefix_beam=0)


def test_eval_report_renders(trained_index, queries_file, tmp_path):
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(cli, ["eval", str(trained_index), "--queries", str(queries_file), "--report", str(report_dir), "--max-candidates", "100"])
    assert result.exit_code == 0, result.output
    assert "grdr" in result.stdout
    assert "faiss_ivfpq" in result.stdout

    text = (report_dir / "report.md").read_text()
    for png in ("recall_vs_candidates.png", "latency_vs_corpus_size.png"):
        assert f"]({png})" in text
        path = report_dir / png
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            assert image.size[0] >= 600
            assert image.size[1] >= 400
    assert "| beam | prefix beam | mean candidates |" in text
    assert "grdr is measured on the full index only" in text


def test_beam_labels_merge_close_points():
    from grdr_core.eval_report import beam_labels

    sweep = [
        {"beam": beam, "mean_candidates": candidates}
        for beam, candidates in [(20, 31.0), (10, 19.0), (100, 119.0), (200, 223.0), (300, 295.0), (400, 300.0)]
    ]
    assert beam_labels(sweep) == [
        (19.0, "beam 10"),
        (31.0, "beam 20"),
        (119.0, "beam 100"),
        (223.0, "beam 200"),
        (295.0, "beam 300, 400"),  # 5 apart, under 4% of the 281-candidate range
    ]
    # The MSVD sweep at level decay 0.8: 10 candidates apart, 3.6% of the range, also merge.
    close = [{"beam": beam, "mean_candidates": candidates} for beam, candidates in [(10, 21.0), (200, 236.0), (300, 290.1), (400, 300.0)]]
    assert beam_labels(close) == [(21.0, "beam 10"), (236.0, "beam 200"), (290.1, "beam 300, 400")]
    assert beam_labels([{"beam": 50, "mean_candidates": 40.0}, {"beam": 100, "mean_candidates": 40.0}]) == [(40.0, "beam 50, 100")]


def test_eval_sweeps_cover_beams_and_sizes(trained_index, queries_file):
    config = EvalConfig(max_candidates=100, sweep_beams=(5, 20), corpus_fractions=(0.25, 1.0))
    result = summary(evaluate(trained_index, queries_file, config, sweeps=True))
    sweep = result["beam_sweep"]
    assert [p["beam"] for p in sweep] == [5, 20]
    assert [p["prefix_beam"] for p in sweep] == [5, 20]
    assert sweep[0]["mean_candidates"] <= sweep[1]["mean_candidates"]
    assert sweep[0]["candidate_hit"] <= sweep[1]["candidate_hit"]
    sizes = {(p["method"], p["videos"]) for p in result["latency_vs_corpus_size"]["points"]}
    assert sizes == {("grdr", 200)} | {(m, n) for m in ("dense", "faiss_hnsw", "faiss_ivfpq") for n in (50, 200)}


def test_eval_cli_reports_bad_queries(trained_index, tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("video_id\nvideos/v0000.mp4\n")
    result = CliRunner().invoke(cli, ["eval", str(trained_index), "--queries", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInputError)


def test_eval_text_queries_time_encoding(tiny_clip_dir, tmp_path):
    from grdr_core.features import ClipEncoder, EncoderConfig

    encoder = ClipEncoder(EncoderConfig(model=str(tiny_clip_dir)))
    texts = [f"clip {i} shows a {animal} near a {place}" for i, (animal, place) in enumerate(zip(["cat", "dog", "horse", "bird"] * 6, ["river", "road", "house"] * 8))]
    ids = _video_ids(len(texts))
    embeddings = encoder.encode_text(texts)
    # Each video's embedding is its caption's, in the tiny CLIP's text space.
    index_dir = build_index_from_embeddings(ids, embeddings, tmp_path / "index", encoder_name=str(tiny_clip_dir))
    header_path = resolve_version(index_dir) / "index.json"
    header = json.loads(header_path.read_text())
    header["encoder"]["checksum"] = encoder.checksum
    header_path.write_text(json.dumps(header))
    captions = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"video_id": ids, "embedding": embeddings.tolist()}), captions)
    train_index(index_dir, FAST_TRAINING, caption_embeddings=captions)
    queries = tmp_path / "queries.csv"
    queries.write_text("video_id,text\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, texts)))

    evaluation = evaluate(index_dir, queries, EvalConfig(max_candidates=50), model=str(tiny_clip_dir))
    assert evaluation.query_kind == "text"
    grdr = evaluation.runs["grdr"]
    assert grdr.latency_ms["encode"].shape == (len(texts),)
    assert (grdr.latency_ms["encode"] > 0).all()
    assert set(summary(evaluation)["grdr"]["latency_split_ms"]) == {"encode", "recall", "rerank"}
    with Searcher(index_dir, model=str(tiny_clip_dir)) as searcher:
        ordinals, _ = exact_dense_search(searcher.index.shards, encoder.encode_text(texts), k=50)
    np.testing.assert_array_equal(evaluation.runs["dense"].ranks, _expected_ranks(ordinals, [np.array([i]) for i in range(len(texts))]))
