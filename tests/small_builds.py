"""Build settings and interruptions that the engine, resume, update and remote tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from grdr_core.build import BuildConfig
from grdr_core.decode import DecodeConfig
from grdr_core.features import EncoderConfig
from grdr_core.quantize import QuantizerConfig


def small_build_config(
    corpus: Path, out: Path, tiny_clip_dir: Path, frames: int = 3, files_per_unit: int = 2, overwrite: bool = False
) -> BuildConfig:
    """Return a build of ``corpus`` with the tiny CLIP, 3 frames per video and shards of 3 records."""
    return BuildConfig(
        input_root=corpus,
        out_dir=out,
        decode=DecodeConfig(num_frames=frames, timeout_s=60),
        encoder=EncoderConfig(model=str(tiny_clip_dir), batch_size=8),
        quantizer=QuantizerConfig(levels=2, codes_per_level=3, seed=0),
        workers=1,
        records_per_shard=3,
        files_per_unit=files_per_unit,
        overwrite=overwrite,
    )


class Interrupted(Exception):
    """Raised in place of a kill, to stop a build or an update at a chosen point."""


@contextmanager
def update_stopped_at(monkeypatch: pytest.MonkeyPatch, point: str) -> Iterator[None]:
    """Stop the update run in the block at its checkpoint ``point``; fail when it does not get there."""

    def stop(name: str) -> None:
        if name == point:
            raise Interrupted()

    with monkeypatch.context() as patch:
        patch.setattr("grdr_core.update.checkpoint", stop)
        with pytest.raises(Interrupted):
            yield
