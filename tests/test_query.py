"""The train and query flow through the public API and the CLI, and its input errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from grdr_core.embedding_index import build_index_from_embeddings
from grdr_core.errors import IndexFormatError, InvalidInputError, ModelLoadError
from grdr_core.quantize import QuantizerConfig
from grdr_core.query_checks import DEFAULT_BEAM, DEFAULT_LEVEL_DECAY, DEFAULT_MAX_CANDIDATES
from grdr_core.searcher import Searcher
from grdr_core.testing.synthetic import SyntheticConfig, make_synthetic_corpus
from grdr_core.train_index import train_index
from grdr_core.training import TrainConfig
from grdr_core.versions import resolve_version
from grdr_jobs.cli import cli

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST_TRAINING = TrainConfig(views=3, levels=2, codes_per_level=16, hidden=64, epochs_per_level=3, polish_epochs=2, seed=0)


@pytest.fixture(scope="module")
def corpus():
    return make_synthetic_corpus(SyntheticConfig(num_videos=200, num_concepts=24, dim=32, seed=5))


def _video_ids(n):
    return [f"videos/v{i:04d}.mp4" for i in range(n)]


def _write_caption_embeddings(path, corpus, rows):
    ids = _video_ids(len(corpus.video_embeddings))
    table = pa.table(
        {
            "video_id": [ids[corpus.caption_ordinals[i]] for i in rows],
            "embedding": [corpus.caption_embeddings[i].tolist() for i in rows],
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def trained_index(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    index_dir = build_index_from_embeddings(
        _video_ids(len(corpus.video_embeddings)),
        corpus.video_embeddings,
        root / "index",
        encoder_name="synthetic",
        quantizer=QuantizerConfig(levels=2, codes_per_level=16),
    )
    captions = _write_caption_embeddings(root / "captions.parquet", corpus, corpus.train_captions)
    summary = train_index(index_dir, FAST_TRAINING, caption_embeddings=captions)
    return index_dir, summary


def test_train_reports_captions_and_ids(trained_index, corpus):
    _, summary = trained_index
    assert summary.captions.used == len(corpus.train_captions)
    assert summary.id_stats["views"] == 3
    assert summary.id_stats["distinct_ids_per_video"] > 1.0


def test_trained_index_header_and_inspect(trained_index):
    index_dir, _ = trained_index
    header = json.loads((resolve_version(index_dir) / "index.json").read_text())
    assert header["tokenizer"]["name"] == "grdr-multiview"
    assert header["tokenizer"]["retriever"] is True
    assert header["tokenizer"]["views"] == 3

    result = CliRunner().invoke(cli, ["inspect", str(index_dir), "--json"])
    assert result.exit_code == 0, result.output
    ids = json.loads(result.stdout)["semantic_ids"]
    assert ids["retriever"] is True
    assert ids["view_statistics"]["views"] == 3


def test_search_finds_held_out_captions(trained_index, corpus):
    index_dir, _ = trained_index
    queries = corpus.caption_embeddings[corpus.test_captions]
    truth = corpus.caption_ordinals[corpus.test_captions]
    with Searcher(index_dir) as searcher:
        results = searcher.search_embeddings(queries, k=10, beam=20, max_candidates=100)

    in_top10 = np.mean([t in [h.ordinal for h in r.hits] for r, t in zip(results, truth)])
    # Measured 0.7-0.9 on this corpus; a broken recall or rerank gives about 0.05.
    assert in_top10 >= 0.5
    for result in results:
        assert 1 <= result.candidates <= 100
        assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
        assert all(a.score >= b.score for a, b in zip(result.hits, result.hits[1:]))
        assert set(result.timings_ms) == {"recall", "rerank"}


def test_reloaded_index_answers_identically(trained_index, corpus):
    index_dir, _ = trained_index
    queries = corpus.caption_embeddings[corpus.test_captions[:20]]
    with Searcher(index_dir) as first:
        expected = [[(h.video_id, h.score) for h in r.hits] for r in first.search_embeddings(queries, k=5)]
    with Searcher(index_dir) as second:
        again = [[(h.video_id, h.score) for h in r.hits] for r in second.search_embeddings(queries, k=5)]
    assert again == expected


def test_query_library_stays_light(trained_index):
    index_dir, _ = trained_index
    code = (
        "import sys, time\n"
        "from grdr_core.searcher import Searcher\n"
        f"s = Searcher({str(index_dir)!r})\n"
        # pandas and pyarrow.compute take about 0.5 s to import, most of an open of 1M videos.
        "heavy = {'decord', 'av', 'torch', 'transformers', 'apache_beam', 'ray', 'numba', 'fsspec', 'pandas', 'pyarrow.compute'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_query_before_training_is_rejected(corpus, tmp_path):
    index_dir = build_index_from_embeddings(
        _video_ids(50), corpus.video_embeddings[:50], tmp_path / "untrained", encoder_name="synthetic"
    )
    with pytest.raises(IndexFormatError, match="grdr-index train"):
        Searcher(index_dir)
    # Opened through its version directory, the hint still names the index root.
    with pytest.raises(IndexFormatError, match=f"run `grdr-index train {tmp_path / 'untrained'} --captions"):
        Searcher(resolve_version(index_dir))


def test_bad_queries_are_rejected(trained_index):
    index_dir, _ = trained_index
    with Searcher(index_dir) as searcher:
        with pytest.raises(InvalidInputError, match="empty"):
            searcher.search_batch(["a cat", "  "])
        with pytest.raises(InvalidInputError, match="dimension"):
            searcher.search_embeddings(np.ones((1, 7), np.float32))
        with pytest.raises(InvalidInputError, match="k must be"):
            searcher.search_embeddings(np.ones((1, 32), np.float32), k=0)
        for prefix_beam in (0, 1001, 2.5, True):
            with pytest.raises(InvalidInputError, match=re.escape(f"prefix_beam must be an integer in [1, 1000], got {prefix_beam!r}")):
                searcher.search_embeddings(np.ones((1, 32), np.float32), prefix_beam=prefix_beam)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty or only whitespace"),
        (" \t\n", "empty or only whitespace"),
        ("a" * 10_001, "has 10001 characters; the maximum is 10000"),
        ("caf\udce9", "not valid UTF-8 text (invalid character at position 3)"),
        (b"a cat", "is a bytes, expected a string"),
    ],
)
def test_bad_query_texts_are_rejected(trained_index, text, message):
    index_dir, _ = trained_index
    with Searcher(index_dir) as searcher:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            searcher.search_batch(["a cat", text])


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"k": 0}, "k must be an integer in [1, 10000], got 0"),
        ({"k": 10_001}, "k must be an integer in [1, 10000]"),
        ({"beam": 0}, "beam must be an integer in [1, 1000], got 0"),
        ({"beam": 1_001}, "beam must be an integer in [1, 1000]"),
        ({"max_candidates": 0}, "max_candidates must be an integer in [1, 100000]"),
        ({"max_candidates": 2.5}, "max_candidates must be an integer in [1, 100000], got 2.5"),
    ],
)
def test_query_limits_out_of_range_are_rejected(trained_index, limits, message):
    index_dir, _ = trained_index
    with Searcher(index_dir) as searcher:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            searcher.search_embeddings(np.ones((1, 32), np.float32), **limits)


def test_nan_query_embedding_is_rejected(trained_index):
    index_dir, _ = trained_index
    query = np.ones((2, 32), np.float32)
    query[1, 3] = np.nan
    with Searcher(index_dir) as searcher:
        with pytest.raises(InvalidInputError, match="NaN"):
            searcher.search_embeddings(query)


def test_query_embeddings_are_normalised(trained_index, corpus):
    index_dir, _ = trained_index
    queries = corpus.caption_embeddings[:5]
    with Searcher(index_dir) as searcher:
        unit = searcher.search_embeddings(queries, beam=3, max_candidates=20)
        scaled = searcher.search_embeddings(queries * np.array([[0.01], [3.0], [1.0], [250.0], [0.5]], np.float32), beam=3, max_candidates=20)
    for a, b in zip(unit, scaled):
        assert [h.ordinal for h in a.hits] == [h.ordinal for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
        assert all(h.score <= 1.0 + 1e-5 for h in b.hits)


@pytest.mark.parametrize(
    "queries, message",
    [
        (np.zeros((2, 32), np.float32), "Query embedding 0 is all zeros"),
        (np.ones((1, 32), np.int64), "must be floating point"),
    ],
)
def test_unusable_query_embeddings_are_rejected(trained_index, queries, message):
    index_dir, _ = trained_index
    with Searcher(index_dir) as searcher:
        with pytest.raises(InvalidInputError, match=message):
            searcher.search_embeddings(queries)


def _held_out_queries(corpus, count):
    return corpus.caption_embeddings[corpus.test_captions[:count]]


def test_cli_query_file_of_embeddings(trained_index, corpus, tmp_path):
    index_dir, _ = trained_index
    queries = _held_out_queries(corpus, 300)  # more than one batch of the CLI
    parquet = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(len(queries))], "embedding": queries.tolist()}), parquet)
    npy = tmp_path / "queries.npy"
    np.save(npy, queries * 7.0)  # any length: queries are normalised
    with Searcher(index_dir) as searcher:
        expected = [[h.ordinal for h in r.hits] for r in searcher.search_embeddings(queries, k=5)]
    runner = CliRunner()

    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(parquet), "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query_id"] for line in lines] == [f"q{i}" for i in range(len(queries))]
    assert [[hit["ordinal"] for hit in line["results"]] for line in lines] == expected
    assert all("query" not in line and set(line["timings_ms"]) == {"recall", "rerank"} for line in lines)

    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query_id"] for line in lines] == [str(i + 1) for i in range(len(queries))]
    assert [[hit["ordinal"] for hit in line["results"]] for line in lines] == expected

    with Searcher(index_dir) as searcher:
        decayed = [[h.ordinal for h in r.hits] for r in searcher.search_embeddings(queries, k=5, level_decay=0.3)]
    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "-k", "5", "--json", "--level-decay", "0.3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [[hit["ordinal"] for hit in line["results"]] for line in lines] == decayed
    assert {line["level_decay"] for line in lines} == {0.3}
    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "--level-decay", "0"])
    assert result.exit_code == 2
    assert "0<x<=1" in result.output

    # The prefix beam reaches the search: one prefix per level keeps the candidates
    # under a single two-code prefix, so fewer of them than the full beam recalls.
    with Searcher(index_dir) as searcher:
        full = searcher.search_embeddings(queries, k=5)
        narrow = searcher.search_embeddings(queries, k=5, prefix_beam=1)
    assert sum(r.candidates for r in narrow) < sum(r.candidates for r in full)
    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "-k", "5", "--json", "--prefix-beam", "1"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [[hit["ordinal"] for hit in line["results"]] for line in lines] == [[h.ordinal for h in r.hits] for r in narrow]
    assert [line["candidates"] for line in lines] == [r.candidates for r in narrow]
    assert {(line["beam"], line["prefix_beam"]) for line in lines} == {(DEFAULT_BEAM, 1)}
    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "--prefix-beam", "0"])
    assert result.exit_code == 2
    assert "1<=x<=1000" in result.output
    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "--level-decay", "nan"])
    assert result.exit_code == 2
    assert "must be a number, got nan" in result.output

    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(npy), "-k", "2"])
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    assert len(blocks) == len(queries)
    assert blocks[1].splitlines()[0] == "query 2"
    assert len(blocks[1].splitlines()) == 4  # heading, two hits, candidates and timings


def test_cli_search_file_of_embeddings(trained_index, corpus, tmp_path):
    from grdr_core.index import open_index
    from grdr_core.search import exact_dense_search

    index_dir, _ = trained_index
    queries = _held_out_queries(corpus, 20)
    npy = tmp_path / "queries.npy"
    np.save(npy, queries)
    index = open_index(index_dir)
    try:
        expected, _ = exact_dense_search(index.shards, queries / np.linalg.norm(queries, axis=1, keepdims=True), 3)
    finally:
        index.close()

    result = CliRunner().invoke(cli, ["search", str(index_dir), "--queries", str(npy), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query_id"] for line in lines] == [str(i + 1) for i in range(len(queries))]
    assert [[hit["ordinal"] for hit in line["results"]] for line in lines] == expected.tolist()


def _write_npy(path, array):
    np.save(path, array)
    return path


@pytest.mark.parametrize("command", ["query", "search"])
def test_cli_query_file_errors(trained_index, tmp_path, command):
    index_dir, _ = trained_index
    runner = CliRunner()
    nan_rows = np.ones((8, 32), np.float32)
    nan_rows[[2, 6]] = np.nan
    empty_id = tmp_path / "empty_id.parquet"
    pq.write_table(pa.table({"query_id": ["a", " "], "embedding": [[1.0] * 32, [1.0] * 32]}), empty_id)
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("query_id,caption\nq1,a cat\n")
    cases = [
        (_write_npy(tmp_path / "narrow.npy", np.ones((2, 16), np.float32)), "contains 16-dimensional embeddings; the index stores 32-dimensional"),
        (_write_npy(tmp_path / "nan.npy", nan_rows), r"2 rows are zero or not finite \(rows 3, 7\)"),
        (_write_npy(tmp_path / "ints.npy", np.ones((2, 32), np.int64)), "2-D floating-point matrix"),
        (_write_npy(tmp_path / "none.npy", np.ones((0, 32), np.float32)), "has no query rows"),
        (empty_id, "query_id of row 2 is empty"),
        (no_column, "needs exactly one of the columns 'text' and 'embedding'"),
        (tmp_path / "missing.parquet", "Queries file not found"),
        (tmp_path, "is not a regular file"),
    ]
    text_file = tmp_path / "queries.txt"
    text_file.write_text("a cat\n")
    cases.append((text_file, r"Unsupported queries file type '\.txt'.*'\.npy'"))
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    cases.append((empty, "Cannot read .* as a NumPy array"))
    archive = tmp_path / "archive.npy"
    with archive.open("wb") as file:
        np.savez(file, queries=np.ones((2, 32), np.float32))
    cases.append((archive, r"is an \.npz archive"))
    cases.append((_write_npy(tmp_path / "empty1d.npy", np.ones(0, np.float32)), "has no query rows"))
    bad_tables = {
        "scalar_embedding": ({"embedding": [1.0, 2.0]}, "column 'embedding' must hold lists of numbers, got double"),
        "string_embedding": ({"embedding": ["x" * 32]}, "column 'embedding' must hold lists of numbers, got string"),
        "null_element": ({"embedding": [[1.0] * 31 + [None]]}, "embedding of row 1 contains null values"),
        "list_query_id": ({"query_id": [[1, 2]], "embedding": [[1.0] * 32]}, "column 'query_id' must hold strings, got list"),
        "binary_text": ({"text": [b"\xff\xfe"]}, "column 'text' must hold strings, got binary"),
    }
    for name, (columns, message) in bad_tables.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table(columns), path)
        cases.append((path, message))
    for path, message in cases:
        result = runner.invoke(cli, [command, str(index_dir), "--queries", str(path)])
        assert result.exit_code != 0, path
        assert isinstance(result.exception, InvalidInputError), (path, result.exception)
        assert re.search(message, str(result.exception)), (path, str(result.exception))

    # Rows of huge or tiny values are valid: their norms are taken in float64.
    extreme = tmp_path / "extreme.parquet"
    pq.write_table(pa.table({"embedding": [[1e30] * 32, [1e-30] * 32]}), extreme)
    result = runner.invoke(cli, [command, str(index_dir), "--queries", str(extreme), "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2

    result = runner.invoke(cli, [command, str(index_dir), "a cat", "--queries", str(empty_id)])
    assert result.exit_code == 2
    assert "Give either TEXT or --queries FILE" in result.output
    result = runner.invoke(cli, [command, str(index_dir)])
    assert result.exit_code == 2
    assert "Give either TEXT or --queries FILE" in result.output


def test_cli_text_query_file_needs_text_encoder(trained_index, tmp_path):
    index_dir, _ = trained_index
    path = tmp_path / "texts.csv"
    path.write_text("text\na cat\n")
    result = CliRunner().invoke(cli, ["query", str(index_dir), "--queries", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ModelLoadError)


def test_empty_query_batches_return_nothing(trained_index):
    index_dir, _ = trained_index
    with Searcher(index_dir) as searcher:
        assert searcher.search_embeddings(np.zeros((0, 32), np.float32)) == []
        assert searcher.search_batch([]) == []


def test_closed_searcher_is_rejected(trained_index):
    index_dir, _ = trained_index
    searcher = Searcher(index_dir)
    searcher.close()
    with pytest.raises(InvalidInputError, match="is closed"):
        searcher.search_embeddings(np.ones((1, 32), np.float32))


def test_text_search_on_precomputed_index_is_rejected(trained_index):
    from grdr_core.index import open_index
    from grdr_core.search import load_query_encoder

    index_dir, _ = trained_index
    index = open_index(index_dir)
    try:
        with pytest.raises(ModelLoadError, match="precomputed embeddings .* stores no text encoder"):
            load_query_encoder(index)
    finally:
        index.close()


def test_k_above_candidates_returns_all_candidates(trained_index, corpus):
    index_dir, _ = trained_index
    with Searcher(index_dir) as searcher:
        (result,) = searcher.search_embeddings(corpus.caption_embeddings[:1], k=10_000, max_candidates=7)
    assert result.candidates == 7
    assert len(result.hits) == 7


def test_caption_embeddings_of_another_dimension_are_rejected(trained_index, tmp_path):
    index_dir, _ = trained_index
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"video_id": ["videos/v0000.mp4"], "embedding": [[1.0, 2.0]]}), path)
    with pytest.raises(InvalidInputError, match="2 dimensions"):
        train_index(index_dir, FAST_TRAINING, caption_embeddings=path)


def test_train_needs_exactly_one_caption_source(trained_index):
    index_dir, _ = trained_index
    with pytest.raises(InvalidInputError, match="exactly one"):
        train_index(index_dir, FAST_TRAINING)


def test_cli_train_rejects_caption_file_without_column(trained_index, tmp_path):
    index_dir, _ = trained_index
    path = tmp_path / "captions.csv"
    path.write_text("video,text\nvideos/v0000.mp4,a cat\n")
    result = subprocess.run(
        [sys.executable, "-m", "grdr_jobs.cli", "train", str(index_dir), "--captions", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "missing column(s) ['video_id', 'caption']" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not (SHARED_DATA / "msvd" / "clips").is_dir(), reason=f"real test videos not found at {SHARED_DATA}")
def test_msvd_build_train_query_offline(tiny_clip_dir, tmp_path):
    captions = json.loads((SHARED_DATA / "msvd" / "captions.json").read_text())
    clips = sorted(p.stem for p in (SHARED_DATA / "msvd" / "clips").glob("*.avi"))
    caption_file = tmp_path / "captions.jsonl"
    with caption_file.open("w") as f:
        for clip in clips:
            for caption in captions[clip][:10]:
                f.write(json.dumps({"video_id": clip, "caption": caption}) + "\n")
    index_dir = tmp_path / "msvd"
    runner = CliRunner()

    result = runner.invoke(cli, ["build", str(SHARED_DATA / "msvd" / "clips"), "--out", str(index_dir), "--model", str(tiny_clip_dir), "--frames", "4"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(cli, ["query", str(index_dir), "a man plays a guitar"])
    assert result.exit_code != 0
    assert "grdr-index train" in str(result.exception)

    result = runner.invoke(cli, ["train", str(index_dir), "--captions", str(caption_file), "--epochs", "2", "--codes", "8"])
    assert result.exit_code == 0, result.output
    assert "used for 11 videos" in result.stdout

    result = runner.invoke(cli, ["query", str(index_dir), "a man plays a guitar", "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["beam"], payload["prefix_beam"], payload["max_candidates"], payload["level_decay"]) == (DEFAULT_BEAM, DEFAULT_BEAM, DEFAULT_MAX_CANDIDATES, DEFAULT_LEVEL_DECAY)
    assert len(payload["results"]) == 5
    assert {r["video_id"] for r in payload["results"]} <= {f"{clip}.avi" for clip in clips}
    assert 5 <= payload["candidates"] <= 11
    assert set(payload["timings_ms"]) == {"encode", "recall", "rerank"}

    queries = tmp_path / "queries.csv"
    queries.write_text('query_id,text\nguitar,a man plays a guitar\ncook,"someone is cooking, then eating"\n')
    result = runner.invoke(cli, ["query", str(index_dir), "--queries", str(queries), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["query_id"], line["query"]) for line in lines] == [("guitar", "a man plays a guitar"), ("cook", "someone is cooking, then eating")]
    # Encoded in a batch of two, the first query scores within float32 noise of its single run.
    assert [hit["ordinal"] for hit in lines[0]["results"]] == [hit["ordinal"] for hit in payload["results"][:3]]
    np.testing.assert_allclose([hit["score"] for hit in lines[0]["results"]], [hit["score"] for hit in payload["results"][:3]], atol=1e-5)
    assert all(set(line["timings_ms"]) == {"encode", "recall", "rerank"} for line in lines)

    result = runner.invoke(cli, ["search", str(index_dir), "--queries", str(queries), "-k", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "query guitar: a man plays a guitar"
    assert len(result.stdout.splitlines()) == 9  # per query a heading and three hits, one blank line between

    multiline = tmp_path / "multiline.jsonl"
    multiline.write_text(json.dumps({"query_id": "a\nb", "text": "a man\nplays"}) + "\n")
    result = runner.invoke(cli, ["search", str(index_dir), "--queries", str(multiline), "-k", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "query a\\nb: a man\\nplays"
    assert len(result.stdout.splitlines()) == 2

    result = runner.invoke(cli, ["query", str(index_dir), "   "])
    assert result.exit_code != 0

    # The longest accepted query is truncated to CLIP's 77-token context and returns results.
    result = runner.invoke(cli, ["query", str(index_dir), "guitar " * 1428 + "abcd", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 3

    # Command-line bytes that are not UTF-8 reach Python as lone surrogates.
    not_utf8 = b"caf\xe9".decode("utf-8", "surrogateescape")
    result = runner.invoke(cli, ["query", str(index_dir), not_utf8])
    assert result.exit_code != 0
    assert "not valid UTF-8" in str(result.exception)


def test_query_with_another_encoder_is_rejected(tmp_path):
    from grdr_core.testing.tiny_clip import write_tiny_clip

    corpus = make_synthetic_corpus(SyntheticConfig(num_videos=40, num_concepts=8, dim=16, seed=1))
    index_dir = build_index_from_embeddings(_video_ids(40), corpus.video_embeddings, tmp_path / "i", encoder_name="synthetic")
    captions = _write_caption_embeddings(tmp_path / "c.parquet", corpus, corpus.train_captions)
    train_index(index_dir, FAST_TRAINING, caption_embeddings=captions)

    other = write_tiny_clip(tmp_path / "other", seed=1)
    with Searcher(index_dir, model=str(other)) as searcher:
        with pytest.raises(ModelLoadError, match="was built with"):
            searcher.search("a cat")
