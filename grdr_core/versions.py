"""Versions of an index root: resolve, publish, prune and roll back.

``grdr_schemas.index`` describes the layout. Readers call ``resolve_version`` once per
open and then use only the returned directory, so a publish or a rollback that
replaces ``CURRENT`` meanwhile cannot mix two versions in one reader.

Pruning renames an old version out of ``versions/`` and deletes it, even while a
reader has it open. On POSIX filesystems an open file or memory map of a deleted file
stays valid, and an opened ``Index`` keeps every file it reads mapped or in memory
(shards and trie are memory-mapped, the manifest columns are loaded), so such a reader
keeps answering from the old version. Its disk space is freed when the last reader
closes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grdr_core.errors import IndexExistsError, IndexFormatError, InvalidInputError
from grdr_schemas.index import IndexLayout, IndexRoot, version_name, version_number

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 3
# A CURRENT file longer than this is not a version name, so no more of it is read.
_CURRENT_MAX_BYTES = 256
# An open retries when the version it resolved was pruned before all its files were opened.
_OPEN_ATTEMPTS = 3
# Entries of a single-version directory from before the root layout.
_LEGACY_DIRS = ("manifest", "shards", "model")

T = TypeVar("T")


@dataclass(frozen=True)
class VersionInfo:
    """One version of an index root, for listings."""

    name: str
    path: Path | str  # a URL for a version at a URL
    current: bool
    header: dict[str, Any] | None  # the parsed index.json, or None when it cannot be read


def read_current(root: str | os.PathLike[str]) -> str | None:
    """Return the version name in ``root/CURRENT``, or None when there is no CURRENT file.

    Raises ``IndexFormatError`` when the file does not contain a version name.
    """
    paths = IndexRoot(Path(root))
    try:
        with open(paths.current, "rb") as f:
            data = f.read(_CURRENT_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IndexFormatError(f"Cannot read {paths.current}: {exc}") from exc
    text = data.decode("utf-8", errors="replace")
    name = text.strip()
    if len(data) > _CURRENT_MAX_BYTES or version_number(name) is None:
        raise IndexFormatError(
            f"{paths.current} contains {text[:40]!r}, not a version name like 'v000001'; "
            f"run `grdr-index rollback {paths.root} --to NAME` with one of: {_names_or_none(paths.root)}"
        )
    return name


def resolve_version(root: str | os.PathLike[str]) -> Path:
    """Return the real path of the version directory that a reader of ``root`` opens.

    That is the version named in ``root/CURRENT``, or ``root`` itself when it contains
    ``index.json`` and no CURRENT file (a single-version index, or a version directory
    given directly). Raises ``IndexFormatError`` naming the path otherwise.
    """
    paths = IndexRoot(Path(root))
    name = read_current(paths.root)
    if name is not None:
        directory = paths.version_dir(name)
        if not IndexLayout(directory).header.is_file():
            raise IndexFormatError(
                f"{paths.current} names version {name}, but {directory} contains no index.json; "
                f"run `grdr-index rollback {paths.root} --to NAME` with one of: {_names_or_none(paths.root)}"
            )
        return Path(os.path.realpath(directory))
    if IndexLayout(paths.root).header.is_file():
        return Path(os.path.realpath(paths.root))
    if list_versions(paths.root):
        raise IndexFormatError(
            f"Index {paths.root} has versions but no CURRENT file; "
            f"run `grdr-index rollback {paths.root} --to NAME` with one of: {_names_or_none(paths.root)}"
        )
    raise IndexFormatError(f"Not a grdr index (no CURRENT file or index.json): {paths.root}")


def local_index_path(root: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """Return ``root``, or for a remote URL (s3://...) a local copy of that index from the cache.

    ``grdr_core.remote.open_remote_index`` explains the cache. fsspec is imported only
    for a URL, so opening a local index stays light.
    """
    if isinstance(root, str) and ("://" in root or "::" in root):
        from grdr_core import remote

        if remote.is_remote(root):
            return remote.open_remote_index(root)
    return root


def open_resolved(root: str | os.PathLike[str], opener: Callable[[Path], T]) -> T:
    """Return ``opener(version_dir)`` for the version that ``root`` resolves to.

    When the open fails because that version was pruned or replaced meanwhile (its
    directory is gone or CURRENT names another), the version is resolved and opened
    again, up to three times in all. Any other failure is raised at once.
    """
    attempt = 1
    while True:
        try:
            directory = resolve_version(root)
        except IndexFormatError:
            # CURRENT may name a version that a publish pruned right after this read.
            if attempt == _OPEN_ATTEMPTS:
                raise
            attempt += 1
            continue
        try:
            return opener(directory)
        except (IndexFormatError, OSError):
            if attempt == _OPEN_ATTEMPTS or not _was_replaced(root, directory):
                raise
        logger.info("Version %s was replaced while it was being opened; opening the current version again", directory)
        attempt += 1


def _was_replaced(root: str | os.PathLike[str], directory: Path) -> bool:
    """Return whether ``directory`` was deleted or is no longer the version ``root`` resolves to."""
    if not directory.exists():
        return True
    try:
        return resolve_version(root) != directory
    except IndexFormatError:
        return False


def list_versions(root: str | os.PathLike[str]) -> list[str]:
    """Return the version names under ``root/versions``, oldest first."""
    versions_dir = IndexRoot(Path(root)).versions_dir
    try:
        entries = list(os.scandir(versions_dir))
    except FileNotFoundError:
        return []
    names = [entry.name for entry in entries if version_number(entry.name) is not None and entry.is_dir(follow_symlinks=False)]
    return sorted(names, key=version_number)


def describe_versions(root: str | os.PathLike[str]) -> list[VersionInfo]:
    """Return every version of ``root`` with its header, oldest first.

    A single-version index from before the root layout is listed as one current
    version named after its directory.
    """
    paths = IndexRoot(Path(root))
    names = list_versions(paths.root)
    current = read_current(paths.root)
    if not names and current is None:
        resolve_version(paths.root)  # raises when root is no index at all
        return [VersionInfo(paths.root.name, paths.root, True, _read_header_or_none(paths.root))]
    return [
        VersionInfo(name, paths.version_dir(name), name == current, _read_header_or_none(paths.version_dir(name)))
        for name in names
    ]


def next_version_name(root: str | os.PathLike[str]) -> str:
    """Return the name one above the highest version of ``root`` (``v000001`` for none)."""
    numbers = [version_number(name) for name in list_versions(root)]
    try:
        current = read_current(root)
    except IndexFormatError:
        current = None
    if current is not None:
        numbers.append(version_number(current))
    return version_name(max(numbers, default=0) + 1)


def is_index_version(directory: Path) -> bool:
    """Return whether ``directory`` has the header and the files every grdr index version has."""
    layout = IndexLayout(directory)
    try:
        header = json.loads(layout.header.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict) or not {"format_version", "shards"} <= header.keys():
        return False
    return layout.shards_dir.is_dir() and layout.trie.is_file()


def is_index_root(directory: Path) -> bool:
    """Return whether ``directory`` is a grdr index root: CURRENT and ``versions/``, or a single-version index."""
    paths = IndexRoot(directory)
    if paths.current.is_file() and paths.versions_dir.is_dir():
        return True
    return is_index_version(directory)


def version_root_of(directory: Path) -> Path | None:
    """Return the index root when ``directory`` is one of its version directories, else None."""
    directory = Path(os.path.realpath(directory))
    if version_number(directory.name) is None or directory.parent.name != "versions":
        return None
    root = directory.parent.parent
    return root if IndexRoot(root).current.is_file() else None


def publish_version(
    staging: str | os.PathLike[str],
    root: str | os.PathLike[str],
    version: str | None = None,
    keep: int = DEFAULT_KEEP,
    expected_current: str | None = None,
) -> str:
    """Publish the complete index version in ``staging`` as the current version of ``root``.

    Renames ``staging`` to ``root/versions/<version>`` (default: the next free name),
    replaces ``CURRENT`` atomically, then prunes all but the newest ``keep`` versions
    and the current one. Returns the version name.

    A killed publish can be repeated with the same ``version``: when that version
    exists and ``staging`` does not, only CURRENT is written and old versions pruned.
    ``expected_current``, when given, must still be the current version, so that a
    version derived from it never replaces a newer one. A single-version ``root`` from
    before the root layout first becomes version ``v000001``.
    """
    staging = Path(staging).absolute()
    root = Path(root).absolute()
    _check_keep(keep)
    if version is not None and version_number(version) is None:
        raise InvalidInputError(f"Invalid version name {version!r}: use 'v' and at least six digits, e.g. 'v000001'")
    if version_root_of(root) is not None:
        raise InvalidInputError(f"{root} is a version directory of the index {version_root_of(root)}; publish to that index instead")

    if not root.exists():
        return _publish_first(staging, root, version or version_name(1))
    if not is_index_root(root):
        raise IndexExistsError(f"{root} exists and is not a grdr index; publish to a new path or to an existing index")
    with _publish_lock(root):
        legacy = _migrate_legacy(root)
        current = read_current(root) if legacy is None else legacy
        name = version or next_version_name(root)
        # A repeated publish may find its own version current already.
        if expected_current is not None and current not in (expected_current, name):
            raise IndexExistsError(
                f"Index {root} changed while this version was prepared: its current version is {current}, "
                f"not {expected_current}; run the step again on the current version"
            )
        _place_version(staging, root, name)
        _write_current(root, name)
        # Also clears the files of a migration whose publish was killed after CURRENT was written.
        if IndexLayout(root).header.exists():
            _remove_legacy_files(root)
        _prune_locked(root, keep)
    logger.info("Published version %s of index %s", name, root)
    return name


def rollback(root: str | os.PathLike[str], to: str | None = None) -> str:
    """Make ``to`` (default: the newest version older than the current one) current; return its name."""
    root = Path(root).absolute()
    # A root whose CURRENT was lost still has its versions: --to repairs it.
    if not is_index_root(root) and not list_versions(root):
        resolve_version(root)  # raises the reader's error for a path that is no index
    with _publish_lock(root):
        names = list_versions(root)
        if not names:
            resolve_version(root)  # raises when root is no index at all
            raise InvalidInputError(f"Index {root} has a single version and nothing to roll back to")
        if to is not None:
            if to not in names:
                raise InvalidInputError(f"Index {root} has no version {to!r}; versions: {', '.join(names)}")
            target = to
        else:
            current = read_current(root)
            if current is None:
                raise IndexFormatError(f"Index {root} has no CURRENT file; pass --to with one of: {', '.join(names)}")
            older = [name for name in names if version_number(name) < version_number(current)]
            if not older:
                raise InvalidInputError(f"Index {root} has no version older than the current {current}; versions: {', '.join(names)}")
            target = older[-1]
        target_dir = IndexRoot(root).version_dir(target)
        if not is_index_version(target_dir):
            raise IndexFormatError(f"Version {target} of {root} is incomplete (no valid index.json, shards/ or trie.lmdb); choose another")
        # The readers' own header check, so that rollback rejects every version they would.
        # Imported here because grdr_core.verify imports this module.
        from grdr_core.verify import read_header

        try:
            read_header(IndexLayout(target_dir))
        except IndexFormatError as exc:
            raise IndexFormatError(f"Cannot roll back to version {target}: {exc}; choose another version") from exc
        _write_current(root, target)
    logger.info("Rollback made version %s current in index %s", target, root)
    return target


def prune_versions(root: str | os.PathLike[str], keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete all versions of ``root`` but the newest ``keep`` and the current one; return the deleted names.

    Readers that have a deleted version open keep using it (see the module docstring).
    """
    _check_keep(keep)
    root = Path(root).absolute()
    if not is_index_root(root):
        resolve_version(root)  # raises the reader's error for a path that is no index
    with _publish_lock(root):
        return _prune_locked(root, keep)


def _prune_locked(root: Path, keep: int) -> list[str]:
    """Prune ``root`` while the caller holds its publish lock.

    Each version is first renamed out of ``versions/``, so a prune killed halfway never
    leaves a partial version in the listing.
    """
    paths = IndexRoot(root)
    names = list_versions(paths.root)
    current = read_current(paths.root)
    doomed = [name for name in names[: max(len(names) - keep, 0)] if name != current]
    for name in doomed:
        trash = paths.versions_dir / f".{name}.deleting-{uuid.uuid4().hex[:12]}"
        os.rename(paths.version_dir(name), trash)
        shutil.rmtree(trash)
        logger.info("Deleted version %s of index %s", name, paths.root)
    # Leftovers of a prune or a migration that was killed before it finished.
    for pattern in (".v*.deleting-*", ".v*.migrating-*"):
        for leftover in paths.versions_dir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
    return doomed


def _write_current(root: Path, name: str) -> None:
    """Replace ``root/CURRENT`` with ``name`` atomically and durably."""
    paths = IndexRoot(root)
    temporary = paths.root / f".CURRENT.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, paths.current)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_dir(paths.root)


def _publish_first(staging: Path, root: Path, name: str) -> str:
    """Create ``root`` with ``staging`` as its only version, with one rename of the whole root."""
    if not staging.is_dir():
        raise InvalidInputError(f"Cannot publish {staging}: no such directory, and index {root} does not exist")
    building = root.parent / f".{root.name}.root-{uuid.uuid4().hex[:12]}"
    paths = IndexRoot(building)
    paths.versions_dir.mkdir(parents=True)
    try:
        _prepare_staging(staging)
        os.rename(staging, paths.version_dir(name))
        _fsync_dir(paths.versions_dir)
        _write_current(building, name)
        try:
            os.rename(building, root)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            os.rename(paths.version_dir(name), staging)  # give the caller its staging back
            raise IndexExistsError(f"Index {root} was created by another publish meanwhile; publish again to add a version") from exc
    finally:
        if building.exists():
            shutil.rmtree(building)
    _fsync_dir(root.parent)
    logger.info("Published version %s of new index %s", name, root)
    return name


def _place_version(staging: Path, root: Path, name: str) -> None:
    """Rename ``staging`` to ``versions/<name>``, or accept a complete version left by a killed publish."""
    paths = IndexRoot(root)
    target = paths.version_dir(name)
    if staging.exists():
        if target.exists():
            raise IndexExistsError(f"Version {name} of index {root} already exists; versions never change, so publish under a new name")
        paths.versions_dir.mkdir(exist_ok=True)
        _prepare_staging(staging)
        os.rename(staging, target)
        _fsync_dir(paths.versions_dir)
    elif is_index_version(target):
        logger.info("Version %s of %s is already in place; writing CURRENT only", name, root)
    else:
        raise InvalidInputError(f"Cannot publish {staging}: no such directory, and version {name} of {root} is not complete")


def _migrate_legacy(root: Path) -> str | None:
    """Link a single-version index in ``root`` into ``versions/v000001``; return that name, or None.

    Readers of ``root`` keep opening the old files until CURRENT is written, because
    CURRENT is the only thing that turns ``root`` into a root with versions.
    """
    paths = IndexRoot(root)
    if paths.current.exists() or not is_index_version(root):
        return None
    name = version_name(1)
    target = paths.version_dir(name)
    if target.exists() and not is_index_version(target):
        raise IndexFormatError(f"{target} exists but is not a complete index version; move it away, then publish again")
    if not target.exists():
        building = paths.versions_dir / f".{name}.migrating-{uuid.uuid4().hex[:12]}"
        for relative in _legacy_entries(root):
            destination = building / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(root / relative, destination)
        _prepare_staging(building)
        os.rename(building, target)
        _fsync_dir(paths.versions_dir)
        logger.info("Linked the single-version index %s into %s", root, target)
    return name


def _legacy_entries(root: Path) -> list[str]:
    """Return the relative paths of the files of a single-version index: index.json and what it lists."""
    layout = IndexLayout(root)
    header = json.loads(layout.header.read_text())
    listed = header.get("files") if isinstance(header, dict) else None
    names = [name for name in (listed or {}) if (root / name).is_file()]
    # Without a usable file list, take the whole layout.
    if not names:
        names = [p.relative_to(root).as_posix() for d in _LEGACY_DIRS for p in (root / d).rglob("*") if p.is_file()]
        names += [layout.trie.name] if layout.trie.is_file() else []
    return [layout.header.name] + sorted(set(names) - {layout.header.name})


def _remove_legacy_files(root: Path) -> None:
    """Delete the single-version files at ``root`` once CURRENT names their copy in ``versions/``.

    ``index.json`` goes last, so a publish killed halfway leaves it as the sign that
    the next publish must finish the cleanup.
    """
    for name in ("trie.lmdb", "trie.lmdb-lock"):
        (root / name).unlink(missing_ok=True)
    for name in _LEGACY_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    IndexLayout(root).header.unlink(missing_ok=True)


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _prepare_staging(staging: Path) -> None:
    """Make every file of ``staging`` readable by all and flush it to disk before it is published.

    CURRENT may name the version right after the rename, and after a power loss it
    must not name files whose data never reached the disk.
    """
    umask = _umask()
    for directory, dirnames, filenames in os.walk(staging):
        for filename in filenames:
            path = os.path.join(directory, filename)
            # Some writers (safetensors) create files with mode 0600; an index is shared data.
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(directory, 0o777 & ~umask)
        _fsync_dir(Path(directory))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _publish_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/publish.lock`` so that publishes and rollbacks run one at a time."""
    path = IndexRoot(root).publish_lock
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError as exc:
        raise IndexFormatError(f"Not a grdr index (no such directory): {root}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another publish or rollback of %s to finish", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_keep(keep: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInputError(f"keep must be an integer >= 1 (the number of versions to keep), got {keep!r}")


def _names_or_none(root: Path) -> str:
    names = list_versions(root)
    return ", ".join(names) if names else "(no versions found)"


def _read_header_or_none(directory: Path) -> dict[str, Any] | None:
    try:
        header = json.loads(IndexLayout(directory).header.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None
