"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random CLIP (seed 0) that loads offline; its features are meaningless."""
    # Imported here so that test modules that need no model do not pay for loading torch.
    from grdr_core.testing.tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)
