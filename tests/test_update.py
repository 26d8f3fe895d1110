"""Incremental updates: only new and changed files are decoded, and the result matches a fresh build."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grdr_core.build import build_index
from grdr_core.errors import InvalidInputError
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.index import open_index
from grdr_core.quantize import ResidualKMeansTokenizer
from grdr_core.stages import run_local
from grdr_core.testing.videos import write_test_video
from grdr_core.update import UpdateConfig, update_index
from grdr_core.versions import list_versions, read_current, rollback
from grdr_schemas.update import update_work_dir_for
from index_contents import assert_same_index, index_contents
from small_builds import Interrupted, small_build_config, update_stopped_at

FILES_PER_UNIT = 2
ADDED = {"new/a.mp4", "new/b.mp4"}
CHANGED = "clip1.mp4"
REMOVED = "clip2.mp4"


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return ClipEncoder(EncoderConfig(model=str(tiny_clip_dir), batch_size=8))


@pytest.fixture(scope="module")
def corpus_v1(tmp_path_factory) -> Path:
    """Five small videos and one file that fails to decode."""
    root = tmp_path_factory.mktemp("corpus_v1")
    for i in range(5):
        write_test_video(root / f"clip{i}.mp4", frames=6 + i, width=48 + 8 * i, height=40)
    (root / "broken.avi").write_bytes(b"not a video" * 50)
    return root


@pytest.fixture(scope="module")
def corpus_v2(corpus_v1, tmp_path_factory) -> Path:
    """``corpus_v1`` with two files added, one rewritten with other content and one deleted."""
    root = tmp_path_factory.mktemp("corpus_v2") / "videos"
    shutil.copytree(corpus_v1, root)
    write_test_video(root / "new" / "a.mp4", frames=12, width=64, height=48)
    write_test_video(root / "new" / "b.mp4", frames=5, width=40, height=56)
    write_test_video(root / CHANGED, frames=20, width=72, height=40)
    (root / REMOVED).unlink()
    return root


def _update_config(index: Path, corpus: Path, tiny_clip_dir: Path, **overrides) -> UpdateConfig:
    settings = dict(index_dir=index, input_root=corpus, model=str(tiny_clip_dir), batch_size=8, workers=1, files_per_unit=FILES_PER_UNIT)
    return UpdateConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def base_index(corpus_v1, tiny_clip_dir, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "index"
    build_index(small_build_config(corpus_v1, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder)
    return out


@pytest.fixture(scope="module")
def fresh_v2(corpus_v2, tiny_clip_dir, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fresh") / "index"
    build_index(small_build_config(corpus_v2, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder)
    return out


def _copy_index(index: Path, parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    copy = parent / "index"
    shutil.copytree(index, copy)
    return copy


@pytest.fixture(scope="module")
def updated(base_index, corpus_v2, tiny_clip_dir, encoder, tmp_path_factory):
    """A copy of ``base_index`` updated to ``corpus_v2``, the summary and the files that were decoded."""
    index = _copy_index(base_index, tmp_path_factory.mktemp("updated"))
    decoded: list[str] = []
    summary = update_index(
        _update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder, progress=lambda file, status: decoded.append(file.video_id)
    )
    return index, summary, decoded


def test_update_counts(updated):
    index, summary, _ = updated

    assert summary.added == 2
    assert summary.changed == 1
    assert summary.removed == 1
    assert summary.unchanged == 4  # clip0, clip3, clip4 and the failed broken.avi
    assert summary.failed == 0
    assert summary.discovered == 7
    assert summary.indexed == 6
    assert summary.version == "v000002"
    assert summary.base_version == "v000001"


def test_update_counts_in_header(updated):
    index, summary, _ = updated
    header = open_index(index).header
    plan_id = header["update"].pop("plan_id")
    assert isinstance(plan_id, str) and len(plan_id) == 32
    assert header["update"] == {
        "base_version": "v000001", "added": 2, "changed": 1, "removed": 1, "unchanged": 4, "failed": 0, "retrained": False,
    }
    assert header["counts"]["discovered"] == header["counts"]["indexed"] + header["counts"]["failed"] == 7
    assert list_versions(index) == ["v000001", "v000002"]
    assert read_current(index) == "v000002"
    assert not update_work_dir_for(index).exists()


def test_update_decodes_only_new_and_changed(updated):
    _, _, decoded = updated
    assert sorted(decoded) == sorted(ADDED | {CHANGED})


def test_update_matches_fresh_build(updated, fresh_v2, base_index):
    index, _, _ = updated
    got, fresh = index_contents(index), index_contents(fresh_v2)

    # Same files in the same order with the same rows, ordinals included. An unchanged
    # failed file keeps its old row, whose error message names the old input folder.
    old_error = index_contents(base_index)["manifest"]["broken.avi"]["error"]
    assert got["manifest"]["broken.avi"]["error"] == old_error
    assert got["manifest"].keys() == fresh["manifest"].keys()
    for video_id, row in fresh["manifest"].items():
        assert {**got["manifest"][video_id], "error": None} == {**row, "error": None}, video_id
    assert got["embeddings"].keys() == fresh["embeddings"].keys()
    for video_id, embedding in fresh["embeddings"].items():
        stored = np.frombuffer(got["embeddings"][video_id], dtype=np.float16).astype(np.float32)
        expected = np.frombuffer(embedding, dtype=np.float16).astype(np.float32)
        # Encoder batches group other videos than in the fresh build; float16 rounding may differ by one step.
        np.testing.assert_allclose(stored, expected, atol=2e-3, err_msg=video_id)

    # IDs come from the old tokenizer, applied to the fresh build's embeddings.
    old = open_index(base_index)
    tokenizer = ResidualKMeansTokenizer.load(old.layout.model_dir)
    old.close()
    for video_id, embedding in fresh["embeddings"].items():
        codes = tokenizer.encode(np.frombuffer(embedding, dtype=np.float16).astype(np.float32)[None])
        assert got["semantic_ids"][video_id] == {tuple(int(c) for c in codes[0, 0])}, video_id
    assert got["tokenizer"]["name"] == "rq-kmeans"
    assert got["tokenizer"]["codebook_sizes"] == index_contents(base_index)["tokenizer"]["codebook_sizes"]


def test_retrain_equals_fresh_build(base_index, corpus_v2, fresh_v2, tiny_clip_dir, encoder, tmp_path):
    index = _copy_index(base_index, tmp_path)

    summary = update_index(_update_config(index, corpus_v2, tiny_clip_dir, retrain=True), encoder=encoder)

    assert summary.retrained
    got, fresh = index_contents(index), index_contents(fresh_v2)
    assert got["manifest"].keys() == fresh["manifest"].keys()
    assert got["tokenizer"]["codebook_sizes"] == fresh["tokenizer"]["codebook_sizes"]
    assert got["counts"] == fresh["counts"]
    if got["embeddings"] == fresh["embeddings"]:
        # With identical embeddings the refitted k-means must be the fresh build's.
        assert got["semantic_ids"] == fresh["semantic_ids"]
        assert got["trie"] == fresh["trie"]


def test_update_without_changes_publishes_nothing(updated, corpus_v2, tiny_clip_dir, encoder):
    index, _, _ = updated
    before = list_versions(index)

    summary = update_index(_update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder)

    assert summary.up_to_date
    assert summary.version is None
    assert summary.base_version == "v000002"
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (0, 0, 0, 7)
    assert list_versions(index) == before
    assert "up to date" in summary.describe()


def test_retrain_without_changes_refits_baseline(base_index, corpus_v1, tiny_clip_dir, encoder, tmp_path):
    index = _copy_index(base_index, tmp_path)
    before = index_contents(index)

    summary = update_index(_update_config(index, corpus_v1, tiny_clip_dir, retrain=True), encoder=encoder)

    assert not summary.up_to_date
    assert summary.retrained
    assert summary.version == "v000002"
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (0, 0, 0, 6)
    assert list_versions(index) == ["v000001", "v000002"]
    after = index_contents(index)
    assert after["embeddings"] == before["embeddings"]
    assert after["manifest"] == before["manifest"]
    # The same embeddings and k-means seed give the same codebook and IDs.
    assert after["semantic_ids"] == before["semantic_ids"]
    assert json.loads((index / "versions" / "v000002" / "index.json").read_text())["update"]["retrained"] is True


def test_stale_plan_is_discarded(base_index, corpus_v2, tiny_clip_dir, encoder, tmp_path, monkeypatch):
    index = _copy_index(base_index, tmp_path)
    work = update_work_dir_for(index)

    # This update is stopped before publishing its version v000002.
    with update_stopped_at(monkeypatch, "before-publish"):
        update_index(_update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder)
    assert json.loads((work / "plan.json").read_text())["version"] == "v000002"

    # Another update, with its own work folder, publishes a version of the same name.
    other = update_index(_update_config(index, corpus_v2, tiny_clip_dir, work_dir=tmp_path / "other-work"), encoder=encoder)
    assert other.version == "v000002"

    summary = update_index(_update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder)

    assert summary.up_to_date
    assert summary.base_version == "v000002"
    assert not work.exists()
    assert list_versions(index) == ["v000001", "v000002"]


def test_update_rejects_other_encoder(base_index, corpus_v2, tmp_path):
    from grdr_core.testing.tiny_clip import write_tiny_clip

    other = write_tiny_clip(tmp_path / "other_clip", seed=1)
    index = _copy_index(base_index, tmp_path / "copy")

    with pytest.raises(InvalidInputError, match="was built with"):
        update_index(_update_config(index, corpus_v2, other))
    assert list_versions(index) == ["v000001"]


def test_update_defaults_to_recorded_input(base_index, corpus_v1, tiny_clip_dir, encoder, tmp_path):
    index = _copy_index(base_index, tmp_path)
    summary = update_index(_update_config(index, None, tiny_clip_dir), encoder=encoder)
    assert summary.up_to_date
    assert summary.unchanged == 6


def test_nightly_job_and_cli_json(base_index, corpus_v2, tmp_path, caplog, monkeypatch):
    from click.testing import CliRunner

    from grdr_jobs.cli import cli
    from grdr_jobs.nightly_update import main

    index = _copy_index(base_index, tmp_path)
    with caplog.at_level("INFO", logger="grdr_jobs.nightly_update"):
        assert main([str(index), str(corpus_v2), "--workers", "1", "--keep-versions", "1"]) == 0
    summary_lines = [r.getMessage() for r in caplog.records if r.name == "grdr_jobs.nightly_update"]
    assert len(summary_lines) == 1
    assert "published v000002" in summary_lines[0]
    assert "added=2 changed=1 removed=1 unchanged=4 failed=0" in summary_lines[0]
    assert list_versions(index) == ["v000002"]

    result = CliRunner().invoke(cli, ["update", str(index), str(corpus_v2), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["up_to_date"] is True
    assert payload["version"] is None
    assert (payload["added"], payload["changed"], payload["removed"], payload["unchanged"]) == (0, 0, 0, 7)

    assert main([str(tmp_path / "missing")]) == 1
    monkeypatch.chdir(tmp_path)
    assert main([str(index), "--work-dir", "s3://bucket/work"]) == 1
    assert not (tmp_path / "s3:").exists()


UPDATE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from grdr_core.update import UpdateConfig, update_index

    if __name__ == "__main__":
        index, corpus, model, files_per_unit = sys.argv[1:5]
        update_index(UpdateConfig(
            index_dir=Path(index), input_root=Path(corpus), model=model, batch_size=8,
            workers=1, files_per_unit=int(files_per_unit),
        ))
    """
)

def test_killed_update_resumes(base_index, corpus_v2, updated, tiny_clip_dir, encoder, tmp_path, monkeypatch):
    index = _copy_index(base_index, tmp_path / "copy")
    work = update_work_dir_for(index)

    # 1. The map stage stops after the first of two units.
    def one_unit(settings, pending):
        run_local(settings, pending[:1], encoder=encoder)
        raise Interrupted()

    with pytest.raises(Interrupted):
        update_index(_update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder, map_runner=one_unit)
    assert len(list(work.glob("units/*/_SUCCESS"))) == 1

    # 2. A process is killed with SIGKILL after writing the trie, before the step's marker.
    script = tmp_path / "update_script.py"
    script.write_text(UPDATE_SCRIPT)
    process = subprocess.run(
        [sys.executable, str(script), str(index), str(corpus_v2), str(tiny_clip_dir), str(FILES_PER_UNIT)],
        env={**os.environ, "GRDR_KILL_AT": "ids-written"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stdout.decode(errors="replace")
    assert len(list(work.glob("units/*/_SUCCESS"))) == 2
    assert (work / "merged.json").is_file()
    assert not (work / "ids.json").is_file()
    assert read_current(index) == "v000001"

    # 3. The update stops right after publishing, before removing its work directory.
    with update_stopped_at(monkeypatch, "after-publish"):
        update_index(_update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder)
    assert read_current(index) == "v000002"
    assert work.is_dir()

    decoded: list[str] = []
    summary = update_index(
        _update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder, progress=lambda file, status: decoded.append(file.video_id)
    )

    assert decoded == []
    assert summary.units_resumed == summary.units == 2
    assert summary.version == "v000002"
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (2, 1, 1, 4)
    assert not work.exists()
    assert list_versions(index) == ["v000001", "v000002"]
    assert_same_index(index, updated[0])


# A trained index: the tokenizer and retriever are trained on caption embeddings.


def _write_caption_embeddings(index: Path, path: Path) -> Path:
    """Write two noisy copies of each stored embedding as that video's caption embeddings."""
    opened = open_index(index)
    try:
        ids = opened.video_ids.to_pylist()
        embeddings = opened.shards.get(np.arange(len(ids)))
    finally:
        opened.close()
    rng = np.random.default_rng(0)
    rows = [(video_id, e + 0.05 * rng.standard_normal(e.shape)) for video_id, e in zip(ids, embeddings) for _ in range(2)]
    table = pa.table({"video_id": [r[0] for r in rows], "embedding": [r[1].astype(np.float32).tolist() for r in rows]})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def trained_index(base_index, tmp_path_factory) -> Path:
    from grdr_core.train_index import train_index
    from grdr_core.training import TrainConfig

    index = _copy_index(base_index, tmp_path_factory.mktemp("trained"))
    captions = _write_caption_embeddings(index, index.parent / "captions.parquet")
    config = TrainConfig(views=2, levels=2, codes_per_level=2, hidden=16, epochs_per_level=1, polish_epochs=0, batch_size=8, seed=0)
    train_index(index, config, caption_embeddings=captions)
    return index


def test_trained_update_keeps_readers_and_rollback(trained_index, corpus_v2, tiny_clip_dir, encoder, tmp_path):
    from grdr_core.searcher import Searcher
    from grdr_core.training import TrainedModel

    index = _copy_index(trained_index, tmp_path)
    assert read_current(index) == "v000002"
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((6, encoder.dim)).astype(np.float32)

    def answers(searcher: Searcher) -> list[list[tuple[str, float]]]:
        return [[(hit.video_id, hit.score) for hit in result.hits] for result in searcher.search_embeddings(queries, k=10)]

    old_reader = Searcher(index)
    before = answers(old_reader)

    summary = update_index(_update_config(index, corpus_v2, tiny_clip_dir), encoder=encoder)

    assert summary.version == "v000003"
    assert (summary.added, summary.changed, summary.removed) == (2, 1, 1)
    assert answers(old_reader) == before
    _assert_versions_listing(index)
    old_reader.close()

    opened = open_index(index)
    header, model_dir = opened.header, opened.layout.model_dir
    embeddings = opened.shards.get(np.arange(len(opened.shards)))
    ids = opened.video_ids.to_pylist()
    opened.close()
    assert header["tokenizer"]["retriever"] is True
    codes = TrainedModel.load(model_dir).assign(embeddings)
    semantic_ids = index_contents(index)["semantic_ids"]
    for ordinal, video_id in enumerate(ids):
        assert semantic_ids[video_id] == {tuple(int(c) for c in view) for view in codes[ordinal]}, video_id

    with Searcher(index) as new_reader:
        found = {hit.video_id for result in new_reader.search_embeddings(queries, k=10) for hit in result.hits}
    assert ADDED <= found
    assert REMOVED not in found

    rollback(index)
    with Searcher(index) as rolled_back:
        assert answers(rolled_back) == before


def test_trained_retrain_needs_captions(trained_index, corpus_v2, tiny_clip_dir, encoder, tmp_path):
    index = _copy_index(trained_index, tmp_path)
    with pytest.raises(InvalidInputError, match="--captions"):
        update_index(_update_config(index, corpus_v2, tiny_clip_dir, retrain=True), encoder=encoder)
    assert list_versions(index) == ["v000001", "v000002"]


def test_trained_retrain_without_changes_retrains(trained_index, corpus_v1, tiny_clip_dir, encoder, tmp_path):
    index = _copy_index(trained_index, tmp_path)
    captions = tmp_path / "captions.parquet"
    shutil.copy(trained_index.parent / "captions.parquet", captions)
    old_trained_at = json.loads((index / "versions" / "v000002" / "index.json").read_text())["tokenizer"]["trained_at"]

    summary = update_index(
        _update_config(index, corpus_v1, tiny_clip_dir, retrain=True, caption_embeddings=captions), encoder=encoder
    )

    assert summary.trained_version == summary.version == "v000003"
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (0, 0, 0, 6)
    assert "retrained model published as v000003" in summary.describe()
    header = json.loads((index / "versions" / "v000003" / "index.json").read_text())
    assert header["tokenizer"]["retriever"] is True
    assert header["tokenizer"]["trained_at"] >= old_trained_at
    assert index_contents(index)["manifest"] == index_contents(trained_index)["manifest"]
    _assert_versions_listing(index)


def _assert_versions_listing(index: Path) -> None:
    """``grdr-index versions`` gives each version the time it was published, and its model's training time."""
    from click.testing import CliRunner

    from grdr_jobs.cli import cli

    result = CliRunner().invoke(cli, ["versions", str(index), "--json"])
    assert result.exit_code == 0, result.output
    for row in json.loads(result.output):
        header = json.loads((index / "versions" / row["name"] / "index.json").read_text())
        assert row["created_at"] == header["created_at"], row
        assert row["trained_at"] == header["tokenizer"].get("trained_at"), row
