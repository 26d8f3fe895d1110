"""On-disk layout of an index: the root with its versions, and one version directory.

An index root contains::

    CURRENT              one line: the name of the version readers open, e.g. "v000002"
    versions/v000001/    a complete index version (see ``IndexLayout``)
    versions/v000002/
    publish.lock         taken by publishers so that two publishes never interleave

Version names are ``v`` and at least six decimal digits, numbered upwards from 1, so
the number orders them. A version directory is written elsewhere and renamed into
``versions/`` only when complete, and it never changes afterwards. ``CURRENT`` is
replaced with an atomic rename, so a reader that reads it once sees one whole version.

A directory that contains ``index.json`` itself is a single-version index written by
grdr releases before the root layout. Readers open it as before. Publishing a new
version into it first links its files into ``versions/v000001/``.

The root layout has no version number of its own: ``INDEX_FORMAT_VERSION`` in each
version's ``index.json`` covers the version's files, and the root has only the
``CURRENT`` file and ``versions/`` folder. A future incompatible root layout must use
other names, so that this grdr rejects it as not an index instead of misreading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Version 2 stores the trie as flat arrays (grdr_schemas.trie, format 2).
INDEX_FORMAT_VERSION = 2
# In an index of precomputed embeddings, the encoder checksum in ``index.json`` is this
# prefix plus the encoder name given at build time. Such an index has no text encoder.
PRECOMPUTED_PREFIX = "precomputed:"

# "v" and at least six decimal digits.
VERSION_NAME_PATTERN = re.compile(r"v[0-9]{6,}")
VERSION_NAME_DIGITS = 6


def version_name(number: int) -> str:
    """Return the directory name of version ``number`` (1 -> "v000001")."""
    return f"v{number:0{VERSION_NAME_DIGITS}d}"


def version_number(name: str) -> int | None:
    """Return the number of a version name, or None when ``name`` is not one."""
    if VERSION_NAME_PATTERN.fullmatch(name) is None:
        return None
    return int(name[1:])


@dataclass(frozen=True)
class IndexRoot:
    """Paths of the entries in an index root."""

    root: Path

    @property
    def current(self) -> Path:
        return self.root / "CURRENT"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def publish_lock(self) -> Path:
        return self.root / "publish.lock"

    def version_dir(self, name: str) -> Path:
        return self.versions_dir / name


@dataclass(frozen=True)
class IndexLayout:
    """Paths of the components inside one index version directory."""

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
