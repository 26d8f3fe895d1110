"""Builds killed with SIGKILL at chosen points resume to the index an uninterrupted build writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from grdr_core.build import build_index
from grdr_core.errors import BuildIncompleteError, InvalidInputError
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.stages import run_local
from grdr_core.testing.videos import write_test_video
from grdr_schemas.build import WorkLayout, work_dir_for
from index_contents import assert_same_index
from small_builds import Interrupted, small_build_config

FILES_PER_UNIT = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Nine small videos and two files that fail, in six units of two files."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(9):
        write_test_video(root / f"clip{i}.mp4", frames=6 + i, width=48 + 8 * i, height=40)
    (root / "broken.avi").write_bytes(b"not a video" * 50)
    (root / "empty.mp4").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return ClipEncoder(EncoderConfig(model=str(tiny_clip_dir), batch_size=8))


@pytest.fixture(scope="module")
def reference(corpus, tiny_clip_dir, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "index"
    build_index(small_build_config(corpus, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder)
    return out


BUILD_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from grdr_core.build import BuildConfig, build_index
    from grdr_core.decode import DecodeConfig
    from grdr_core.features import EncoderConfig
    from grdr_core.quantize import QuantizerConfig

    if __name__ == "__main__":
        corpus, out, model, files_per_unit = sys.argv[1:5]
        build_index(BuildConfig(
            input_root=Path(corpus), out_dir=Path(out),
            decode=DecodeConfig(num_frames=3, timeout_s=60),
            encoder=EncoderConfig(model=model, batch_size=8),
            quantizer=QuantizerConfig(levels=2, codes_per_level=3, seed=0),
            workers=1, records_per_shard=3, files_per_unit=int(files_per_unit),
        ))
    """
)


def _start_build(corpus: Path, out: Path, tiny_clip_dir: Path, tmp_path: Path, kill_at: str | None) -> subprocess.Popen:
    script = tmp_path / "build_script.py"
    script.write_text(BUILD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GRDR_KILL_AT"}
    if kill_at is not None:
        env["GRDR_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, str(script), str(corpus), str(out), str(tiny_clip_dir), str(FILES_PER_UNIT)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _finished_units(work: WorkLayout) -> int:
    return len(list(work.units_dir.glob("*/_SUCCESS"))) if work.units_dir.exists() else 0


# Each point, in build order, with the units finished when the build is killed there.
KILL_POINTS = [
    ("unit-files-written:2", 1),  # mid-shard: the second unit's files are written, its marker is not
    ("unit-files-written:3", 3),  # again after resuming: units 1 and 2 finish, unit 3 is cut short
    ("mid-merge", 6),
    ("ids-written", 6),  # the trie is written, the step's marker is not
    ("before-publish", 6),
    ("after-publish", 6),  # published, but the work directory is not yet removed
]


def test_resume_after_kill_at_each_point(corpus, reference, tiny_clip_dir, encoder, tmp_path):
    out = tmp_path / "index"
    work = WorkLayout(work_dir_for(out.resolve()))

    for kill_at, units_done in KILL_POINTS:
        process = _start_build(corpus, out, tiny_clip_dir, tmp_path, kill_at)
        output = process.communicate(timeout=300)[0].decode(errors="replace")
        assert process.returncode == -signal.SIGKILL, f"{kill_at}: {output}"
        assert _finished_units(work) == units_done, kill_at
        assert work.plan.is_file()
        assert out.exists() == (kill_at == "after-publish")

    summary = build_index(small_build_config(corpus, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder)

    assert summary.units == 6
    assert summary.units_resumed == 6
    assert summary.discovered == summary.indexed + summary.failed == 11
    assert not work.root.exists()
    assert_same_index(out, reference)


def _interrupted_build(corpus: Path, out: Path, tiny_clip_dir: Path, encoder: ClipEncoder, units: int) -> WorkLayout:
    """Run a build whose map stage stops with an error after ``units`` units."""

    def runner(settings, pending):
        run_local(settings, pending[:units], encoder=encoder)
        raise Interrupted()

    with pytest.raises(Interrupted):
        build_index(small_build_config(corpus, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder, map_runner=runner)
    work = WorkLayout(work_dir_for(out.resolve()))
    assert _finished_units(work) == units
    return work


def test_resume_after_kill_at_random_moment(corpus, reference, tiny_clip_dir, encoder, tmp_path):
    out = tmp_path / "index"
    work = WorkLayout(work_dir_for(out.resolve()))
    process = _start_build(corpus, out, tiny_clip_dir, tmp_path, kill_at=None)
    deadline = time.monotonic() + 300
    while _finished_units(work) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    summary = build_index(small_build_config(corpus, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder)

    assert summary.units_resumed >= 3
    assert_same_index(out, reference)


def test_changed_settings_start_afresh(corpus, tiny_clip_dir, encoder, tmp_path, caplog):
    out = tmp_path / "index"
    work = _interrupted_build(corpus, out, tiny_clip_dir, encoder, units=3)
    assert json.loads(work.plan.read_text())["settings"]["decode"]["num_frames"] == 3

    with caplog.at_level("WARNING", logger="grdr_core.build"):
        summary = build_index(small_build_config(corpus, out, tiny_clip_dir, frames=2, files_per_unit=FILES_PER_UNIT), encoder=encoder)

    assert summary.units_resumed == 0
    assert any("other settings" in record.getMessage() for record in caplog.records)
    assert not work.root.exists()


def test_unit_without_marker_is_redone(corpus, reference, tiny_clip_dir, encoder, tmp_path):
    out = tmp_path / "index"
    work = _interrupted_build(corpus, out, tiny_clip_dir, encoder, units=4)
    # Damage one finished unit the way a crash before its marker would leave it.
    work.unit_marker(2).unlink()
    work.unit_embeddings(2).write_bytes(b"partial")

    summary = build_index(small_build_config(corpus, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder)

    assert summary.units_resumed == 3
    assert_same_index(out, reference)


def test_unfinished_map_stage_keeps_work(corpus, tiny_clip_dir, encoder, tmp_path):
    out = tmp_path / "index"

    def runner(settings, pending):
        run_local(settings, pending[:1], encoder=encoder)

    with pytest.raises(BuildIncompleteError, match="5 of 6 units unfinished.*run the same command again"):
        build_index(small_build_config(corpus, out, tiny_clip_dir, files_per_unit=FILES_PER_UNIT), encoder=encoder, map_runner=runner)
    assert not out.exists()
    assert _finished_units(WorkLayout(work_dir_for(out.resolve()))) == 1


def test_foreign_work_dir_is_never_deleted(corpus, tiny_clip_dir, encoder, tmp_path):
    work_dir = tmp_path / "shared-folder"
    work_dir.mkdir()
    (work_dir / "important.txt").write_text("keep")
    config = replace(small_build_config(corpus, tmp_path / "index", tiny_clip_dir, files_per_unit=FILES_PER_UNIT), work_dir=work_dir)

    with pytest.raises(InvalidInputError, match="no grdr plan.json"):
        build_index(config, encoder=encoder)

    assert (work_dir / "important.txt").read_text() == "keep"
