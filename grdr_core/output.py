"""The output of a build or update: a local index root, or an fsspec URL (s3://, gs://).

LMDB needs a local file, so a build for a URL publishes into a local index root in the
cache (``$GRDR_CACHE_DIR/builds/<hash of the URL>/index``) and then uploads only the new
version: its files first, its ``index.json`` after them, and the root's ``CURRENT``
last, so a reader of the URL never finds a version pointer before the files it names.
Then the URL's versions beyond the newest ``keep`` are deleted, never the current one.
Readers of a URL work on a downloaded copy (``grdr_core.remote.open_remote_index``), so
deleting an old remote version does not disturb a reader that already opened it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from grdr_core import remote
from grdr_core.errors import IndexExistsError, IndexFormatError, InvalidInputError
from grdr_core.index import check_output_path, staging_dir_for
from grdr_core.versions import VersionInfo, next_version_name, publish_version, read_current
from grdr_schemas.index import IndexLayout, IndexRoot, version_name, version_number

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOutput:
    """The output of a build or update: ``root`` is where it publishes locally, ``url`` the URL it uploads to (or None)."""

    root: Path
    url: str | None = None

    @classmethod
    def of(cls, out: str | Path) -> "IndexOutput":
        if remote.is_remote(out):
            url = str(out).rstrip("/")
            key = hashlib.sha256(url.encode()).hexdigest()[:24]
            return cls(remote.default_cache_dir() / "builds" / key / "index", url)
        return cls(remote.local_path(out).resolve())

    @property
    def name(self) -> Path | str:
        """The output's name in messages and summaries: the URL, or the local root."""
        return self.url or self.root

    def check(self, overwrite: bool, input_root: str | Path | None = None) -> None:
        """Reject an output that contains something other than an index, or an index without ``overwrite``."""
        if self.url is None:
            local_input = None if input_root is None or remote.is_remote(input_root) else Path(input_root)
            check_output_path(self.root, overwrite, input_root=local_input)
            return
        fs, path = remote.filesystem(self.url)
        fs.invalidate_cache(path)
        has_index = fs.exists(f"{path}/{remote.CURRENT_NAME}") or fs.exists(f"{path}/{remote.HEADER_NAME}")
        if has_index and not overwrite:
            raise IndexExistsError(f"An index exists at {self.url} (pass --overwrite to publish a new version of it)")
        if not has_index and fs.exists(path) and fs.ls(path):
            raise IndexExistsError(f"{self.url} exists and is not a grdr index; choose another output URL")

    def next_version(self) -> str:
        """Return the name of the version to publish: above every local and remote version."""
        numbers = [version_number(next_version_name(self.root)) if self.root.exists() else 1]
        numbers += [number + 1 for number in self._remote_numbers()]
        return version_name(max(numbers))

    def pull(self, keep: int) -> str:
        """Make the URL's current version the current version of the local root; return its name.

        Downloads it unless the local root contains the same version (equal ``index.json``).
        A complete version newer than the URL's CURRENT is a publish killed before it wrote
        CURRENT, so its CURRENT is written first.
        """
        if self.url is None:
            raise InvalidInputError(f"{self.root} is a local index; only a URL is pulled")
        name = remote.read_current_url(self.url)
        if name is None:
            raise InvalidInputError(
                f"{self.url} has no CURRENT file; only a versioned index (written by grdr-index build) can be updated at a URL"
            )
        newest = max(self._remote_numbers(complete=True), default=0)
        if version_number(name) is not None and version_number(name) < newest:
            logger.warning(
                "%s/CURRENT names %s, but the complete version %s is newer: finishing its publish",
                self.url, name, version_name(newest),
            )
            name = version_name(newest)
            fs, path = remote.filesystem(self.url)
            fs.pipe_file(f"{path}/{remote.CURRENT_NAME}", (name + "\n").encode())
        header = remote.read_header_url(self._header_url(name), self.url)
        local = IndexRoot(self.root).version_dir(name)
        if _read_bytes(IndexLayout(local).header) != header:
            if local.exists():
                # Another machine published a version of this name; nothing reads this copy.
                shutil.rmtree(local)
            staging = staging_dir_for(self.root)
            self.root.parent.mkdir(parents=True, exist_ok=True)
            remote.download_tree(f"{self.url}/{remote.VERSIONS_DIR}/{name}", staging)
            if _read_bytes(IndexLayout(staging).header) != header:
                shutil.rmtree(staging)
                raise IndexFormatError(f"{self.url} changed while {name} was downloaded; run the command again")
            publish_version(staging, self.root, version=name, keep=keep)
        elif read_current(self.root) != name:
            publish_version(staging_dir_for(self.root), self.root, version=name, keep=keep)
        return name

    def finish(self, version: str, keep: int) -> list[str]:
        """Upload ``version`` of a URL output and prune the URL's old versions; return the deleted names.

        A local output needs nothing more: ``publish`` already switched and pruned it.
        Raises ``IndexExistsError`` when the URL contains another version of that name.
        """
        if self.url is None:
            return []
        fs, path = remote.filesystem(self.url)
        local = IndexRoot(self.root).version_dir(version)
        header = _read_bytes(IndexLayout(local).header)
        try:
            uploaded = remote.read_header_url(self._header_url(version), self.url)
        except IndexFormatError:
            uploaded = None
        if uploaded is None:
            target = f"{path}/{remote.VERSIONS_DIR}/{version}"
            if fs.exists(target):
                # Files of an upload killed earlier, which may list other shards: start clean.
                fs.rm(target, recursive=True)
            remote.upload_tree(local, f"{self.url}/{remote.VERSIONS_DIR}/{version}")
        elif uploaded != header:
            raise IndexExistsError(
                f"{self.url} already contains a different version {version}, published while this one was prepared; "
                f"the local copy stays in {self.root}"
            )
        # An equal header means a killed run uploaded this version already; only CURRENT is left.
        fs.pipe_file(f"{path}/{remote.CURRENT_NAME}", (version + "\n").encode())
        current = read_current(self.root)
        if current != version:
            logger.warning("The local copy %s now serves %s, not the uploaded %s", self.root, current, version)
        return self.prune(keep)

    def prune(self, keep: int) -> list[str]:
        """Delete the URL's complete versions beyond the newest ``keep``, never its current one; return their names.

        A version folder without ``index.json`` may be an upload in progress, so it is
        neither counted nor deleted.
        """
        if self.url is None:
            return []
        fs, path = remote.filesystem(self.url)
        current = remote.read_current_url(self.url)
        numbers = sorted(self._remote_numbers(complete=True))
        stale = [version_name(n) for n in numbers[: max(0, len(numbers) - keep)] if version_name(n) != current]
        for name in stale:
            fs.rm(f"{path}/{remote.VERSIONS_DIR}/{name}", recursive=True)
        if stale:
            logger.info("Deleted %d old versions of %s: %s", len(stale), self.url, ", ".join(stale))
        return stale

    def describe_versions(self) -> list[VersionInfo]:
        """Return the URL's version folders, oldest first, each with its parsed ``index.json`` (None while uploading)."""
        if self.url is None:
            raise InvalidInputError(f"{self.root} is a local index; use grdr_core.versions.describe_versions")
        current = remote.read_current_url(self.url)
        infos = []
        for number in sorted(self._remote_numbers()):
            name = version_name(number)
            try:
                header = json.loads(remote.read_header_url(self._header_url(name), self.url))
            except (IndexFormatError, ValueError):
                header = None
            infos.append(VersionInfo(name, f"{self.url}/{remote.VERSIONS_DIR}/{name}", name == current, header))
        if not infos:
            raise IndexFormatError(f"Not a versioned grdr index (no version folders under {self.url}/{remote.VERSIONS_DIR})")
        return infos

    def _remote_numbers(self, complete: bool = False) -> list[int]:
        """Return the numbers of the URL's version folders; ``complete``: only those with ``index.json``."""
        if self.url is None:
            return []
        fs, path = remote.filesystem(self.url)
        versions = f"{path}/{remote.VERSIONS_DIR}"
        fs.invalidate_cache(versions)
        if not fs.exists(versions):
            return []
        names = [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(versions, detail=False)]
        numbers = [n for n in (version_number(name) for name in names) if n is not None]
        if complete:
            numbers = [n for n in numbers if fs.exists(f"{versions}/{version_name(n)}/{remote.HEADER_NAME}")]
        return numbers

    def _header_url(self, version: str) -> str:
        return f"{self.url}/{remote.VERSIONS_DIR}/{version}/{remote.HEADER_NAME}"


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
