"""Read an index's contents in a form that two builds of the same input can be compared by.

Everything is keyed by ``video_id`` so that the comparison does not depend on the order
in which an engine finished its work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from grdr_core.index import open_index
from grdr_core.manifest import read_manifest
from grdr_core.trie import TrieReader


def index_contents(index_dir: Path) -> dict[str, Any]:
    """Return the manifest rows, embeddings, semantic IDs and trie entries of an index."""
    index = open_index(index_dir)
    try:
        root = index.layout.root
        ids = index.video_ids.to_pylist()
        embeddings = {ids[o]: index.shards.get([o])[0].astype(np.float16).tobytes() for o in range(len(ids))}
        manifest = {}
        for row in read_manifest(index.layout.manifest_dir).to_pylist():
            row = dict(row)
            # A row's uri_bytes is bytes; the ordinal is kept: every engine merges in unit order.
            manifest[row["video_id"]] = row
        header = json.loads((root / "index.json").read_text())
    finally:
        index.close()

    trie = TrieReader(root / "trie.lmdb")
    try:
        postings = {semantic_id: ordinals.tolist() for semantic_id, ordinals in trie.iter_postings()}
        prefix_table = trie.prefix_table()
        tables = {
            "postings": postings,
            "child_codes": prefix_table.codes.tolist(),
            "child_counts": prefix_table.child_count.tolist(),
            "codebook_sizes": trie.codebook_sizes,
        }
    finally:
        trie.close()

    semantic_ids: dict[str, set[tuple[int, ...]]] = {video_id: set() for video_id in ids}
    for semantic_id, ordinals in postings.items():
        for ordinal in ordinals:
            semantic_ids[ids[ordinal]].add(semantic_id)
    return {
        "manifest": manifest,
        "embeddings": embeddings,
        "semantic_ids": semantic_ids,
        "trie": tables,
        "counts": header["counts"],
        "tokenizer": {k: v for k, v in header["tokenizer"].items()},
        "encoder": header["encoder"],
    }


def assert_same_index(first: Path, second: Path) -> None:
    """Assert that two indexes hold the same videos, embeddings, IDs, trie and manifest rows."""
    a, b = index_contents(first), index_contents(second)
    assert a["manifest"].keys() == b["manifest"].keys()
    for video_id, row in a["manifest"].items():
        assert row == b["manifest"][video_id], video_id
    assert a["embeddings"] == b["embeddings"]
    assert a["semantic_ids"] == b["semantic_ids"]
    assert a["trie"] == b["trie"]
    assert a["counts"] == b["counts"]
    assert a["tokenizer"] == b["tokenizer"]
    assert a["encoder"] == b["encoder"]
