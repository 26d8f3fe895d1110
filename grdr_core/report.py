"""Summaries of an index on disk, for ``grdr-index inspect``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from grdr_core.index import Index
from grdr_core.manifest import read_manifest


def _bytes_under(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def index_report(index: Index) -> dict[str, Any]:
    """Return counts by status, semantic-ID statistics and bytes per component."""
    layout = index.layout
    statuses = read_manifest(layout.manifest_dir, columns=["status"])["status"]
    by_status = {row["values"]: row["counts"] for row in pc.value_counts(statuses).to_pylist()}

    stats = index.trie.stats()
    sizes = index.trie.codebook_sizes
    tokenizer = index.header["tokenizer"]
    return {
        "index": str(index.root),
        "version": index.version,  # None for a single-version index
        "version_dir": str(layout.root),
        "format_version": index.header["format_version"],
        "encoder": index.header["encoder"],
        "videos": {"discovered": int(sum(by_status.values())), "indexed": len(index.shards), "by_status": dict(sorted(by_status.items()))},
        "semantic_ids": {
            "tokenizer": tokenizer["name"],
            "views": tokenizer["views"],
            "levels": index.trie.levels,
            "codebook_sizes": sizes,
            "distinct_ids": stats.distinct_ids,
            "largest_posting_list": stats.largest_posting,
            "mean_posting_list": round(stats.mean_posting, 3),
            "codes_used_per_level": stats.codes_used_per_level,
            "codebook_use_per_level": [round(used / size, 4) if size else 0.0 for used, size in zip(stats.codes_used_per_level, sizes)],
            # Distinct prefixes of 1, 2, ..., L codes (the last is distinct_ids) against the
            # product of the codebook sizes: full use of every level can still leave few
            # combinations, which makes posting lists long.
            "distinct_prefixes": index.trie.prefix_table().nodes_per_level[1:] + [stats.distinct_ids],
            "possible_prefixes": [math.prod(sizes[: length + 1]) for length in range(len(sizes))],
            "retriever": bool(tokenizer.get("retriever")),
            # Measured over every video's IDs when they were assigned (build or train).
            "view_statistics": tokenizer.get("id_statistics"),
        },
        "bytes": {
            "manifest": _bytes_under(layout.manifest_dir),
            "shards": _bytes_under(layout.shards_dir),
            "trie": _bytes_under(layout.trie),
            "model": _bytes_under(layout.model_dir),
            "header": _bytes_under(layout.header),
        },
    }


def _version_text(report: dict[str, Any]) -> str:
    return f"version {report['version']}, " if report.get("version") else ""


def _shortened(text: str, length: int) -> str:
    return text if len(text) <= length else f"{text[:length]}..."


def format_report(report: dict[str, Any]) -> str:
    videos = report["videos"]
    ids = report["semantic_ids"]
    lines = [
        f"index        {report['index']} ({_version_text(report)}format {report['format_version']})",
        *([f"cached at    {report['cached_at']}"] if report.get("cached_at") else []),
        f"encoder      {report['encoder']['name']} ({_shortened(report['encoder']['checksum'], 23)}, dim {report['encoder']['dim']})",
        f"videos       {videos['discovered']} discovered, {videos['indexed']} indexed",
    ]
    lines += [f"  {status:<16} {count}" for status, count in videos["by_status"].items()]
    lines += [
        f"semantic IDs {ids['tokenizer']}, {ids['views']} view(s) x {ids['levels']} levels, codebooks {ids['codebook_sizes']}",
        f"  distinct IDs       {ids['distinct_ids']}",
        f"  largest posting    {ids['largest_posting_list']} (mean {ids['mean_posting_list']})",
        "  codebook use       " + ", ".join(f"L{level} {used}/{size}" for level, (used, size) in enumerate(zip(ids["codes_used_per_level"], ids["codebook_sizes"]))),
        "  distinct prefixes  " + ", ".join(f"{length + 1} codes {used:,}/{possible:,}" for length, (used, possible) in enumerate(zip(ids["distinct_prefixes"], ids["possible_prefixes"]))),
    ]
    views = ids.get("view_statistics")
    if views:
        lines += [
            f"  distinct IDs/video {views['distinct_ids_per_video']:.2f} of {views['views']}",
            f"  all views one ID   {views['single_id_fraction']:.1%} of videos",
            f"  same last code     {views['identical_last_level_fraction']:.1%} of videos",
            f"  IDs shared         {views['shared_ids']} (max {views['videos_per_id_max']} videos per ID)",
        ]
    lines += [
        f"  retriever          {'trained' if ids['retriever'] else 'none (run grdr-index train)'}",
        "bytes        " + ", ".join(f"{name} {size:,}" for name, size in report["bytes"].items()),
    ]
    return "\n".join(lines)
