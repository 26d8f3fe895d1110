"""Integrity checks of an index directory against the sizes and SHA-256 sums in ``index.json``.

Two depths trade time for coverage:

- ``check_index_files(..., full=False)`` runs whenever an index is opened. It checks
  that every listed file exists with its recorded size, and it hashes every file except
  the embedding shards and manifest parts. The rest are the trie and the model, and
  the trie's posting lists take 4 bytes per video and view (about 16 MB for a million
  videos with 4 views). So a damaged trie, which LMDB could crash on, is found before
  LMDB maps it. The shards and manifest parts grow with the corpus, the shards to GBs,
  so they are checked for size only. A shard's ``.npy`` header is still validated when
  it is memory-mapped. Manifest parts written with schema version 2 or later carry
  CRC-32 page checksums, which are verified when pages are read. A flipped bit inside a
  shard's embeddings is not found on open.
- ``verify_index`` hashes every file, for ``grdr-index verify``. It reads the whole
  index once, which at a million 512-d videos is about 1 GB of shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from grdr_core.errors import IndexFormatError
from grdr_core.versions import resolve_version
from grdr_schemas.index import INDEX_FORMAT_VERSION, IndexLayout
from grdr_schemas.shards import shard_file_name

logger = logging.getLogger(__name__)

# Folders whose files are checked for size only when an index is opened.
SIZE_CHECKED_ON_OPEN = ("shards/", "manifest/")
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class FileProblem:
    """One file of an index that does not match ``index.json``."""

    path: str  # relative to the index root, as listed in index.json
    kind: str  # "missing", "truncated", "size_mismatch" or "corrupted"
    detail: str

    def describe(self) -> str:
        return f"{self.path}: {self.kind.replace('_', ' ')}: {self.detail}"


@dataclass
class VerifyReport:
    """Outcome of ``verify_index``: the files checked, what is wrong with them, and what index.json does not list."""

    root: Path
    checked: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # files under the root that index.json does not list

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        text = f"{self.checked} files of {self.root} checked against index.json: "
        text += "all match" if self.ok else f"{len(self.problems)} damaged or missing"
        if self.unlisted:
            text += f"; {len(self.unlisted)} files not listed in index.json, not checked"
        return text


def read_header(layout: IndexLayout) -> dict[str, Any]:
    """Read and check ``index.json``: its format version and the fields every reader needs."""
    if not layout.header.is_file():
        raise IndexFormatError(f"Not a grdr index (no index.json): {layout.root}")
    try:
        header = json.loads(layout.header.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"Cannot read {layout.header}: {exc}") from exc
    if not isinstance(header, dict):
        raise IndexFormatError(f"{layout.header} does not contain a JSON object")
    if header.get("format_version") != INDEX_FORMAT_VERSION:
        raise IndexFormatError(
            f"Index {layout.root} has format version {header.get('format_version')}, "
            f"this grdr reads version {INDEX_FORMAT_VERSION}; rebuild the index"
        )

    files = header.get("files")
    shards = header.get("shards")
    if not isinstance(files, dict) or not all(_is_file_entry(entry) for entry in files.values()):
        raise IndexFormatError(f"{layout.header} has no valid 'files' list of sizes and checksums")
    if not isinstance(shards, dict) or not all(isinstance(shards.get(k), int) and shards[k] > 0 for k in ("count", "dim", "records_per_shard")):
        raise IndexFormatError(f"{layout.header} has no valid 'shards' section (positive count, dim, records_per_shard)")
    for section, keys in (("encoder", ("name", "checksum")), ("tokenizer", ("name",))):
        entry = header.get(section)
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in keys):
            raise IndexFormatError(f"{layout.header} has no valid '{section}' section ({', '.join(keys)})")
    outside = [name for name in files if not _is_inside_index(name)]
    if outside:
        raise IndexFormatError(f"{layout.header} lists files outside the index: {outside[:3]}")
    missing = [name for name in required_files(shards) if name not in files]
    if missing:
        raise IndexFormatError(f"{layout.header} does not list the index files {missing[:3]}; the header is damaged")
    return header


def required_files(shards: dict[str, int]) -> list[str]:
    """Return the relative paths every index with this shard store has: the trie and each shard."""
    count = -(-shards["count"] // shards["records_per_shard"])
    return ["trie.lmdb"] + [f"shards/{shard_file_name(i)}" for i in range(count)]


def _is_inside_index(name: str) -> bool:
    """Return whether a ``files`` key is a plain relative path that stays inside the index."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def _is_file_entry(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_index_files(root: Path, files: dict[str, dict[str, Any]], full: bool) -> list[FileProblem]:
    """Compare the files under ``root`` with their ``index.json`` entries.

    With ``full``, every file is hashed. Without it, files under ``SIZE_CHECKED_ON_OPEN``
    are checked for existence and size only.
    """
    problems = []
    for relative, entry in sorted(files.items()):
        problem = _check_file(root, relative, entry, hash_it=full or not relative.startswith(SIZE_CHECKED_ON_OPEN))
        if problem is not None:
            problems.append(problem)
    return problems


def _check_file(root: Path, relative: str, entry: dict[str, Any], hash_it: bool) -> FileProblem | None:
    path = root / relative
    expected = entry["bytes"]
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return FileProblem(relative, "missing", "the file does not exist")
    except OSError as exc:
        return FileProblem(relative, "missing", f"cannot read the file: {exc}")
    if not path.is_file():
        return FileProblem(relative, "missing", "not a regular file")
    if size < expected:
        return FileProblem(relative, "truncated", f"{size} of {expected} bytes")
    if size > expected:
        return FileProblem(relative, "size_mismatch", f"{size} bytes, index.json records {expected}")
    if hash_it:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return FileProblem(relative, "missing", f"cannot read the file: {exc}")
        if digest != entry["sha256"]:
            detail = f"SHA-256 differs from index.json (file {digest[:16]}, recorded {entry['sha256'][:16]}, first 16 hex digits)"
            return FileProblem(relative, "corrupted", detail)
    return None


def check_on_open(layout: IndexLayout, header: dict[str, Any]) -> None:
    """Raise ``IndexFormatError`` naming every file that the quick check on open finds damaged."""
    problems = check_index_files(layout.root, header["files"], full=False)
    if problems:
        listed = "; ".join(problem.describe() for problem in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise IndexFormatError(
            f"Index {layout.root} is damaged: {listed}{more}. Run `grdr-index verify {layout.root}` to check "
            "every file, then rebuild the index or restore it from a copy"
        )


def verify_index(directory: str | os.PathLike[str]) -> VerifyReport:
    """Hash every file of the current version of an index and compare it with ``index.json``.

    ``directory`` is an index root, a single-version index or one version directory.
    Raises ``IndexFormatError`` only when there is no version to check or its
    ``index.json`` is missing or invalid. Damaged files are listed in the report.
    """
    layout = IndexLayout(resolve_version(directory))
    header = read_header(layout)
    files = header["files"]
    report = VerifyReport(root=layout.root, checked=len(files))
    report.problems = check_index_files(layout.root, files, full=True)
    present = {p.relative_to(layout.root).as_posix() for p in layout.root.rglob("*") if p.is_file()}
    report.unlisted = sorted(present - set(files) - {layout.header.name})
    logger.info("Verified %s", report.describe())
    return report
