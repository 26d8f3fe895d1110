"""Index versions on disk: the ``index.json`` header, publishing and read access.

``grdr_core.versions`` keeps the versions of an index root; this module writes and
opens one version.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from grdr_core.errors import IndexExistsError, IndexFormatError, InvalidInputError
from grdr_core.manifest import read_manifest
from grdr_core.shards import ShardReader
from grdr_core.trie import TrieReader
from grdr_core.verify import check_on_open, read_header, sha256_file
from grdr_core.versions import DEFAULT_KEEP, is_index_root, list_versions, local_index_path, open_resolved, publish_version, version_root_of
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
    """Reject an output path where publishing could destroy or hide data that is not an index.

    ``--overwrite`` publishes a new version of an existing grdr index (a root with
    CURRENT and ``versions/``, or a single-version directory with ``index.json``); it
    never touches another directory, a file, or the input itself.
    """
    out_dir = Path(out_dir).absolute()
    if input_root is not None:
        root = Path(input_root).resolve()
        resolved = out_dir.resolve()
        if resolved == root or resolved in root.parents:
            raise InvalidInputError(f"--out {out_dir} is the input folder or contains it; choose another output path")
    version_root = version_root_of(out_dir) if out_dir.is_dir() else None
    if version_root is not None:
        raise InvalidInputError(f"--out {out_dir} is a version directory of the index {version_root}; publish to {version_root} instead")
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not overwrite:
        raise IndexExistsError(f"Output path already exists: {out_dir} (pass --overwrite to publish a new version of an existing grdr index)")
    if out_dir.is_dir() and not out_dir.is_symlink() and not is_index_root(out_dir) and list_versions(out_dir):
        raise IndexExistsError(
            f"Output path {out_dir} has index versions but no CURRENT file; repair it with "
            f"`grdr-index rollback {out_dir} --to NAME` (versions: {', '.join(list_versions(out_dir))}), then publish again"
        )
    if out_dir.is_symlink() or not out_dir.is_dir() or not is_index_root(out_dir):
        raise IndexExistsError(
            f"Output path {out_dir} exists and is not a grdr index (no CURRENT file and versions/ folder, "
            "nor an index.json with a format version, shard store and trie); --overwrite only adds a "
            "version to an index, so remove it yourself or choose another path"
        )


def publish(
    staging: Path,
    out_dir: Path,
    overwrite: bool,
    *,
    keep: int = DEFAULT_KEEP,
    version: str | None = None,
    expected_current: str | None = None,
) -> str:
    """Publish a complete staging directory as the new current version of the index at ``out_dir``.

    Readers see either the previous version or the new one, never a partial one, and
    readers that opened the previous version keep using it. ``overwrite`` allows an
    existing index at ``out_dir``. Keeps the newest ``keep`` versions and returns the
    new version's name; ``grdr_core.versions.publish_version`` explains ``version`` and
    ``expected_current``.
    """
    check_output_path(out_dir, overwrite)
    return publish_version(staging, out_dir, version=version, keep=keep, expected_current=expected_current)


@dataclass
class Index:
    """An opened index version: header, shard store, trie and ordinal-to-video map."""

    root: Path  # the path the caller opened, made absolute: an index root or a single version
    version: str | None  # the version name, or None for a single-version index
    layout: IndexLayout  # paths inside the opened version directory
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
    """Open the current version of an index for reading, checking its format version and its files.

    ``directory`` is an index root, a single-version index or one version directory,
    or the URL of a remote index, which is downloaded into a local cache first.
    The version is resolved once, so a publish meanwhile cannot mix two versions. Every
    file listed in ``index.json`` must exist with its recorded size, and the trie and
    model files must match their SHA-256 sums. ``grdr_core.verify`` explains what this
    quick check leaves to ``grdr-index verify``. Raises ``IndexFormatError`` naming the
    damaged files.
    """
    directory = local_index_path(directory)
    return open_resolved(directory, lambda version_dir: open_index_version(Path(directory), version_dir))


def open_index_version(root: Path, version_dir: Path) -> Index:
    """Open the version directory ``version_dir`` of the index ``root`` (see ``open_index``)."""
    layout = IndexLayout(version_dir)
    header = read_header(layout)
    check_on_open(layout, header)

    store = header["shards"]
    shards = ShardReader(layout.shards_dir, store["count"], store["dim"], store["records_per_shard"])
    trie = TrieReader(layout.trie)
    try:
        largest = trie.max_ordinal()
        if largest >= store["count"]:
            raise IndexFormatError(f"Trie {layout.trie} files video ordinal {largest}, but the index stores {store['count']} embeddings")
        video_ids, uris = _read_ordinal_map(layout, store["count"])
    except BaseException:
        trie.close()  # LMDB refuses a second open of the same file while this one lives
        raise
    version = version_dir.name if version_root_of(version_dir) is not None else None
    return Index(
        root=root.absolute(), version=version, layout=layout, header=header, shards=shards, trie=trie, video_ids=video_ids, uris=uris
    )


def _read_ordinal_map(layout: IndexLayout, count: int) -> tuple[pa.Array, pa.Array]:
    """Return the video_id and uri of every stored embedding, indexed by ordinal."""
    table = read_manifest(layout.manifest_dir, columns=["video_id", "uri", "ordinal"])
    if table["ordinal"].null_count:
        # Imported here: pyarrow.compute takes about 0.3 s to import, most of the time it
        # takes to open an index of a million videos where every video was indexed.
        import pyarrow.compute as pc

        table = table.filter(pc.is_valid(table["ordinal"]))
    ordinals = np.concatenate([_int64_values(chunk) for chunk in table["ordinal"].chunks] or [np.empty(0, np.int64)])
    if len(ordinals) != count:
        raise IndexFormatError(f"Manifest of {layout.root} lists {len(ordinals)} ordinals for {count} stored embeddings")
    if not np.array_equal(ordinals, np.arange(count)):
        # Builds write rows in ordinal order; accept any permutation of the ordinals.
        order = np.argsort(ordinals)
        if not np.array_equal(ordinals[order], np.arange(count)):
            raise IndexFormatError(f"Manifest ordinals of {layout.root} do not cover the {count} stored embeddings")
        table = table.take(order)
    return table["video_id"].combine_chunks(), table["uri"].combine_chunks()


def _int64_values(chunk: pa.Array) -> np.ndarray:
    """Return the values of an int64 array without nulls, read from its data buffer.

    ``pa.Array.to_numpy`` imports pandas and pyarrow.compute (about 0.5 s together),
    which would be most of the time it takes to open an index of a million videos.
    """
    return np.frombuffer(chunk.buffers()[1], dtype=np.int64, count=len(chunk), offset=chunk.offset * 8)
