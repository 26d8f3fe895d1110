"""Index versions on disk: the ``index.json`` header, atomic publishing and read access."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from grdr_core.errors import IndexExistsError, IndexFormatError, InvalidInputError
from grdr_core.manifest import read_manifest
from grdr_core.shards import ShardReader
from grdr_core.trie import TrieReader
from grdr_schemas.index import INDEX_FORMAT_VERSION, IndexLayout

logger = logging.getLogger(__name__)


def staging_dir_for(out_dir: Path) -> Path:
    """Return a fresh sibling of ``out_dir`` to build into, on the same filesystem."""
    return out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"


def file_checksums(root: Path, exclude: set[str]) -> dict[str, dict[str, Any]]:
    """Return ``{relative path: {"bytes": n, "sha256": hex}}`` for every file under ``root``."""
    checksums: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative in exclude:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        checksums[relative] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return checksums


def write_header(layout: IndexLayout, header: dict[str, Any]) -> None:
    """Write ``index.json`` with the format version and the checksums of every other file."""
    header = {"format_version": INDEX_FORMAT_VERSION, **header}
    header["files"] = file_checksums(layout.root, exclude={layout.header.name})
    layout.header.write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")


def check_output_path(out_dir: Path, overwrite: bool, input_root: Path | None = None) -> None:
    """Reject an output path whose replacement could destroy data that is not an index.

    ``--overwrite`` replaces only an existing grdr index (a directory with
    ``index.json``); it never deletes another directory, a file, or the input itself.
    """
    out_dir = Path(out_dir).absolute()
    if input_root is not None:
        root = Path(input_root).resolve()
        resolved = out_dir.resolve()
        if resolved == root or resolved in root.parents:
            raise InvalidInputError(f"--out {out_dir} is the input folder or contains it; choose another output path")
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not overwrite:
        raise IndexExistsError(f"Output path already exists: {out_dir} (pass --overwrite to replace an existing grdr index)")
    if out_dir.is_symlink() or not out_dir.is_dir() or not (out_dir / "index.json").is_file():
        raise IndexExistsError(
            f"Output path {out_dir} exists and is not a grdr index (no index.json); "
            "--overwrite only replaces an index, so remove it yourself or choose another path"
        )


def publish(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Make a complete staging directory visible as ``out_dir`` with a rename.

    Readers see either the previous index or the new one, never a partial one. When
    ``overwrite`` replaces an existing index there is a moment between the two renames
    where ``out_dir`` does not exist.
    """
    check_output_path(out_dir, overwrite)
    _make_readable(staging)
    previous = None
    if out_dir.exists():
        previous = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(out_dir, previous)
    os.rename(staging, out_dir)
    if previous is not None:
        shutil.rmtree(previous)
    logger.info("Published index %s", out_dir)


def _make_readable(root: Path) -> None:
    # Some writers (safetensors) create files with mode 0600; an index is shared data.
    umask = os.umask(0)
    os.umask(umask)
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
        elif path.is_dir():
            path.chmod(0o777 & ~umask)
    root.chmod(0o777 & ~umask)


@dataclass
class Index:
    """An opened index version: header, shard store, trie and ordinal-to-video map."""

    layout: IndexLayout
    header: dict[str, Any]
    shards: ShardReader
    trie: TrieReader
    video_ids: pa.Array  # video_id strings, indexed by ordinal
    uris: pa.Array  # source paths, indexed by ordinal

    def video_id(self, ordinal: int) -> str:
        return self.video_ids[ordinal].as_py()

    def uri(self, ordinal: int) -> str:
        return self.uris[ordinal].as_py()

    def close(self) -> None:
        self.trie.close()


def open_index(directory: str | os.PathLike[str]) -> Index:
    """Open an index directory for reading, checking its format version."""
    layout = IndexLayout(Path(directory))
    if not layout.header.is_file():
        raise IndexFormatError(f"Not a grdr index (no index.json): {layout.root}")
    try:
        header = json.loads(layout.header.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"Cannot read {layout.header}: {exc}") from exc
    if header.get("format_version") != INDEX_FORMAT_VERSION:
        raise IndexFormatError(
            f"Index {layout.root} has format version {header.get('format_version')}, "
            f"this grdr reads version {INDEX_FORMAT_VERSION}; rebuild the index"
        )

    store = header["shards"]
    shards = ShardReader(layout.shards_dir, store["count"], store["dim"], store["records_per_shard"])
    trie = TrieReader(layout.trie)

    table = read_manifest(layout.manifest_dir, columns=["video_id", "uri", "ordinal"])
    table = table.filter(pc.is_valid(table["ordinal"]))
    ordinals = table["ordinal"].to_numpy()
    if len(ordinals) != store["count"]:
        raise IndexFormatError(f"Manifest of {layout.root} lists {len(ordinals)} ordinals for {store['count']} stored embeddings")
    if not np.array_equal(ordinals, np.arange(store["count"])):
        # Builds write rows in ordinal order; accept any permutation of the ordinals.
        order = np.argsort(ordinals)
        if not np.array_equal(ordinals[order], np.arange(store["count"])):
            raise IndexFormatError(f"Manifest ordinals of {layout.root} do not cover the {store['count']} stored embeddings")
        table = table.take(order)
    video_ids = table["video_id"].combine_chunks()
    uris = table["uri"].combine_chunks()
    return Index(layout=layout, header=header, shards=shards, trie=trie, video_ids=video_ids, uris=uris)
