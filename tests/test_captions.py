import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grdr_core.captions import match_caption_embeddings, match_captions
from grdr_core.errors import InvalidInputError

INDEX_IDS = np.array(["a/clip1.mp4", "a/clip2.mp4", "b/clip1.avi", "007.mp4"], dtype=object)


def test_csv_counts_unknown_empty_and_duplicates(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text(
        "video_id,caption\n"
        'a/clip1.mp4,"a dog, running"\n'
        "a/clip1.mp4,a dog runs\n"
        "a/clip1.mp4,a dog runs\n"
        "a/clip2.mp4,   \n"
        "a/clip2.mp4,\n"
        "missing.mp4,something\n"
        "007.mp4,numeric looking id\n"
    )
    result = match_captions(path, INDEX_IDS)

    assert result.texts == ["a dog, running", "a dog runs", "numeric looking id"]
    assert result.ordinals.tolist() == [0, 0, 3]
    report = result.report
    assert (report.rows, report.used, report.unknown_video, report.empty, report.duplicate) == (7, 3, 1, 2, 1)
    assert report.rows == report.used + report.unknown_video + report.empty + report.duplicate
    assert report.videos_with_captions == 2
    assert "missing.mp4" in report.describe()


def test_jsonl_and_parquet_read_the_same(tmp_path):
    rows = [{"video_id": "b/clip1.avi", "caption": "a cat"}, {"video_id": "a/clip2.mp4", "caption": "a bird"}]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)

    for path in (jsonl, parquet):
        result = match_captions(path, INDEX_IDS)
        assert result.texts == ["a cat", "a bird"]
        assert result.ordinals.tolist() == [2, 1]


def test_ids_match_without_extension_when_unambiguous(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("video_id,caption\na/clip2,x\na/clip1,y\n007,z\n")
    result = match_captions(path, np.array(["a/clip1.mp4", "a/clip1.avi", "a/clip2.mp4", "007.mp4"], dtype=object))

    assert result.ordinals.tolist() == [2, 3]
    assert result.report.unknown_video == 1
    assert result.report.matched_without_extension == 2


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("video,text\nx,y\n")
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) \['video_id', 'caption'\]"):
        match_captions(path, INDEX_IDS)


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        match_captions(tmp_path / "nope.csv", INDEX_IDS)
    other = tmp_path / "c.xml"
    other.write_text("<x/>")
    with pytest.raises(InvalidInputError, match="Unsupported caption file type"):
        match_captions(other, INDEX_IDS)


def test_no_usable_caption_raises(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("video_id,caption\nunknown.mp4,x\n")
    with pytest.raises(InvalidInputError, match="No usable captions"):
        match_captions(path, INDEX_IDS)


def test_precomputed_embeddings(tmp_path):
    rows = [
        {"video_id": "a/clip1.mp4", "embedding": [3.0, 4.0]},
        {"video_id": "a/clip1.mp4", "embedding": [3.0, 4.0]},
        {"video_id": "b/clip1.avi", "embedding": None},
        {"video_id": "nope", "embedding": [1.0, 0.0]},
        {"video_id": "007.mp4", "embedding": [0.0, 2.0]},
    ]
    path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = match_caption_embeddings(path, INDEX_IDS)

    assert result.ordinals.tolist() == [0, 3]
    np.testing.assert_allclose(result.embeddings, [[0.6, 0.8], [0.0, 1.0]])
    assert (result.report.duplicate, result.report.empty, result.report.unknown_video) == (1, 1, 1)


def test_precomputed_embeddings_with_mixed_dimensions_raise(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist([{"video_id": "007.mp4", "embedding": [1.0, 0.0]}, {"video_id": "007.mp4", "embedding": [1.0]}]), path)
    with pytest.raises(InvalidInputError, match="has 1 values"):
        match_caption_embeddings(path, INDEX_IDS)


def test_json_file_gets_a_json_lines_hint(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"clip": ["a caption"]}')
    with pytest.raises(InvalidInputError, match="JSON Lines"):
        match_captions(path, INDEX_IDS)
