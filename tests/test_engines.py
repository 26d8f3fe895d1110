"""The same input built with the local, Beam and Ray engines gives the same index."""

from __future__ import annotations

import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from click.testing import CliRunner

from grdr_core.build import build_index
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.testing.videos import write_test_video
from grdr_schemas.build import work_dir_for
from grdr_jobs.cli import cli
from index_contents import assert_same_index
from small_builds import small_build_config

MSVD_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "msvd" / "clips"


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


@pytest.fixture(scope="module")
def local_index(corpus, tiny_clip_dir, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "index"
    build_index(small_build_config(corpus, out, tiny_clip_dir), encoder=encoder)
    return out


def test_beam_engine_matches_local(corpus, local_index, tiny_clip_dir, encoder, tmp_path):
    from grdr_pipelines.beam_build import beam_map_runner

    out = tmp_path / "beam"
    runner = beam_map_runner(["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    summary = build_index(small_build_config(corpus, out, tiny_clip_dir), encoder=encoder, map_runner=runner)

    assert summary.discovered == 8
    assert summary.indexed == 7
    assert not work_dir_for(out.resolve()).exists()
    assert_same_index(out, local_index)


def test_ray_engine_matches_local(corpus, local_index, tiny_clip_dir, encoder, tmp_path):
    from grdr_pipelines.ray_build import ray_map_runner

    out = tmp_path / "ray"
    summary = build_index(small_build_config(corpus, out, tiny_clip_dir), encoder=encoder, map_runner=ray_map_runner(actors=2))

    assert summary.discovered == 8
    assert summary.indexed == 7
    assert_same_index(out, local_index)


@pytest.mark.skipif(not MSVD_CLIPS.is_dir(), reason=f"real clips not found at {MSVD_CLIPS}")
def test_cli_engines_agree_on_real_clips(tiny_clip_dir, tmp_path):
    common = ["--model", str(tiny_clip_dir), "--frames", "4", "--levels", "2", "--codes", "3", "--files-per-unit", "3"]
    commands = {
        "local": ["--workers", "2"],
        "beam": ["--engine", "beam", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        "ray": ["--engine", "ray"],
    }
    for engine, options in commands.items():
        result = CliRunner().invoke(cli, ["build", str(MSVD_CLIPS), "--out", str(tmp_path / engine), *common, *options])
        assert result.exit_code == 0, f"{engine}: {result.output} {result.exception!r}"
        assert "11 files discovered, 11 indexed" in result.output

    assert_same_index(tmp_path / "beam", tmp_path / "local")
    assert_same_index(tmp_path / "ray", tmp_path / "local")


def test_cli_rejects_beam_options_for_other_engines(tiny_clip_dir, corpus, tmp_path):
    result = CliRunner().invoke(cli, ["build", str(corpus), "--out", str(tmp_path / "i"), "--runner=DirectRunner"])

    assert result.exit_code != 0
    assert "only --engine beam passes options on to Beam" in result.output


def test_setup_py_works_as_beam_setup_file(tmp_path):
    # Beam runs `python setup.py sdist` on a --setup_file and installs the result on each worker.
    repository = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=repository, check=True, capture_output=True)

    (archive,) = tmp_path.glob("grdr-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for module in ("pipelines/beam_build.py", "pipelines/ray_build.py", "grdr_core/stages.py", "schemas/build.py", "jobs/cli.py"):
        assert module in names


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--runer=DirectRunner"], "Unknown Beam option --runer"),
        (["--direct_num_workers=abc"], "Invalid Beam options"),
        (["stray"], "write Beam options as --name=value"),
    ],
)
def test_bad_beam_options_are_rejected(options, message):
    from grdr_core.errors import InvalidInputError
    from grdr_pipelines.beam_build import beam_map_runner

    with pytest.raises(InvalidInputError, match=message):
        beam_map_runner(options)


def test_unreachable_ray_address_fails_fast(corpus, tiny_clip_dir, tmp_path):
    # A port of this machine that nothing listens on: bound, then released.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["build", str(corpus), "--out", str(tmp_path / "i"), "--model", str(tiny_clip_dir), "--workers", "1"]
    command += ["--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]

    result = subprocess.run([sys.executable, "-m", "grdr_jobs.cli", *command], capture_output=True, text=True, timeout=300)

    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"grdr-index: error: Failed to connect to a Ray cluster at 127.0.0.1:{port} ("), result.stderr


def test_malformed_ray_address_is_rejected():
    from grdr_core.errors import BuildIncompleteError
    from grdr_pipelines.ray_build import check_reachable

    for address in ("nohost", "ray://:10001", "host:port"):
        with pytest.raises(BuildIncompleteError, match="is not auto, HOST:PORT"):
            check_reachable(address)
    check_reachable("auto")
