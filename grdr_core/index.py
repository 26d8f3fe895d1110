"""Index versions on disk: the ``index.json`` header, atomic publishing and read access."""

from __future__ import annotations

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
from grdr_core.verify import check_on_open, read_header, sha256_file
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
        checksums[relative] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
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
    if out_dir.is_symlink() or not out_dir.is_dir() or not _is_grdr_index(out_dir):
        raise IndexExistsError(
            f"Output path {out_dir} exists and is not a grdr index (no index.json with a format "
            "version, shard store and trie); --overwrite only replaces an index, so remove it "
            "yourself or choose another path"
        )


def _is_grdr_index(directory: Path) -> bool:
    """Return whether ``directory`` has the header and the files every grdr index version has."""
    layout = IndexLayout(directory)
    try:
        header = json.loads(layout.header.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict) or not {"format_version", "shards"} <= header.keys():
        return False
    return layout.shards_dir.is_dir() and layout.trie.is_file()


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
    """Open an index directory for reading, checking its format version and its files.

    Every file listed in ``index.json`` must exist with its recorded size, and the trie
    and model files must match their SHA-256 sums. ``grdr_core.verify`` explains what
    this quick check leaves to ``grdr-index verify``. Raises ``IndexFormatError`` naming
    the damaged files.
    """
    layout = IndexLayout(Path(directory))
    header = read_header(layout)
    check_on_open(layout, header)

    store = header["shards"]
    shards = ShardReader(layout.shards_dir, store["count"], store["dim"], store["records_per_shard"])
    trie = TrieReader(layout.trie)
    try:
        video_ids, uris = _read_ordinal_map(layout, store["count"])
    except BaseException:
        trie.close()  # LMDB refuses a second open of the same file while this one lives
        raise
    return Index(layout=layout, header=header, shards=shards, trie=trie, video_ids=video_ids, uris=uris)


def _read_ordinal_map(layout: IndexLayout, count: int) -> tuple[pa.Array, pa.Array]:
    """Return the video_id and uri of every stored embedding, indexed by ordinal."""
    table = read_manifest(layout.manifest_dir, columns=["video_id", "uri", "ordinal"])
    table = table.filter(pc.is_valid(table["ordinal"]))
    ordinals = table["ordinal"].to_numpy()
    if len(ordinals) != count:
        raise IndexFormatError(f"Manifest of {layout.root} lists {len(ordinals)} ordinals for {count} stored embeddings")
    if not np.array_equal(ordinals, np.arange(count)):
        # Builds write rows in ordinal order; accept any permutation of the ordinals.
        order = np.argsort(ordinals)
        if not np.array_equal(ordinals[order], np.arange(count)):
            raise IndexFormatError(f"Manifest ordinals of {layout.root} do not cover the {count} stored embeddings")
        table = table.take(order)
    return table["video_id"].combine_chunks(), table["uri"].combine_chunks()
