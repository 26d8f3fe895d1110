"""The same input built with the local, Beam and Ray engines gives the same index."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from grdr_core.build import BuildConfig, build_index
from grdr_core.decode import DecodeConfig
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.quantize import QuantizerConfig
from grdr_core.testing.videos import write_test_video
from grdr_schemas.build import work_dir_for
from index_contents import assert_same_index


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    for i in range(7):
        write_test_video(root / f"part{i % 2}" / f"clip{i}.mp4", frames=6 + i, width=48 + 8 * i, height=40)
    (root / "broken.avi").write_bytes(b"not a video" * 50)
    return root


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return ClipEncoder(EncoderConfig(model=str(tiny_clip_dir), batch_size=8))


def _config(corpus: Path, out: Path, tiny_clip_dir: Path) -> BuildConfig:
    return BuildConfig(
        input_root=corpus,
        out_dir=out,
        decode=DecodeConfig(num_frames=3, timeout_s=60),
        encoder=EncoderConfig(model=str(tiny_clip_dir), batch_size=8),
        quantizer=QuantizerConfig(levels=2, codes_per_level=3, seed=0),
        workers=1,
        records_per_shard=3,
        files_per_unit=2,
    )


@pytest.fixture(scope="module")
def local_index(corpus, tiny_clip_dir, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "index"
    build_index(_config(corpus, out, tiny_clip_dir), encoder=encoder)
    return out


def test_beam_engine_matches_local(corpus, local_index, tiny_clip_dir, encoder, tmp_path):
    from grdr_pipelines.beam_build import beam_map_runner

    out = tmp_path / "beam"
    runner = beam_map_runner(["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    summary = build_index(_config(corpus, out, tiny_clip_dir), encoder=encoder, map_runner=runner)

    assert summary.discovered == 8 and summary.indexed == 7
    assert not work_dir_for(out.resolve()).exists()
    assert_same_index(out, local_index)


def test_ray_engine_matches_local(corpus, local_index, tiny_clip_dir, encoder, tmp_path):
    from grdr_pipelines.ray_build import ray_map_runner

    out = tmp_path / "ray"
    summary = build_index(_config(corpus, out, tiny_clip_dir), encoder=encoder, map_runner=ray_map_runner(actors=2))

    assert summary.discovered == 8 and summary.indexed == 7
    assert_same_index(out, local_index)
