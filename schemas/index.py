"""Layout and header of one index version directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INDEX_FORMAT_VERSION = 1
# In an index of precomputed embeddings, the encoder checksum in ``index.json`` is this
# prefix plus the encoder name given at build time. Such an index has no text encoder.
PRECOMPUTED_PREFIX = "precomputed:"


@dataclass(frozen=True)
class IndexLayout:
    """Paths of the components inside an index directory."""

    root: Path

    @property
    def header(self) -> Path:
        return self.root / "index.json"

    @property
    def manifest_dir(self) -> Path:
        return self.root / "manifest"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def trie(self) -> Path:
        return self.root / "trie.lmdb"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"
