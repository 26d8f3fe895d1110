"""Object-store paths: fsspec URLs for build inputs, index upload and a local cache of remote indexes.

A path with a protocol other than ``file`` (``s3://bucket/videos``, ``gs://...``) is
remote. Plain local paths and ``file://`` URLs are local. LMDB needs a local file, so an
index is always built in a local directory, uploaded with ``upload_tree`` and, for
reading, downloaded into a cache directory by ``open_remote_index``.

Clients find their credentials and endpoints the usual way for each backend (for S3:
``AWS_*`` environment variables, ``~/.aws`` files). ``client_environment`` and
``apply_client_environment`` carry the environment variables of those clients into
decoder worker processes, which start from a forkserver and would otherwise keep the
environment of the moment that server started.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.registry import known_implementations
from fsspec.registry import registry as loaded_filesystems
from fsspec.utils import get_protocol

from grdr_core.errors import IndexFormatError, InvalidInputError, VideoDecodeError
from grdr_schemas import VideoStatus

logger = logging.getLogger(__name__)

LOCAL_PROTOCOLS = frozenset({"file", "local"})
# A URL scheme: a letter, then letters, digits, '+', '-' or '.'.
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

# Name of the small text object at the root of a versioned index. It contains the name of
# the current version, whose files are under ``versions/<name>/``.
CURRENT_NAME = "CURRENT"
VERSIONS_DIR = "versions"
HEADER_NAME = "index.json"

# Environment variables that configure object-store clients: credentials, endpoints,
# regions, profiles and proxies of the fsspec backends for S3, GCS and Azure.
_CLIENT_ENV_PREFIXES = ("AWS_", "BOTO_", "GOOGLE_", "GCSFS_", "CLOUDSDK_", "AZURE_", "FSSPEC_")
_CLIENT_ENV_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})

_CHECK_ACCESS = "Check the URL, the credentials and the endpoint."


@dataclass(frozen=True)
class RemoteFile:
    """One file found under a listed prefix."""

    relative_path: str  # POSIX path below the listed prefix
    url: str  # full URL, protocol included
    path: str  # path within the filesystem, without the protocol
    size_bytes: int
    info: Mapping[str, Any]  # the backend's metadata for the file, as ``fs.info`` returns it


# --- URLs and filesystems -----------------------------------------------------------


def is_remote(url: str | os.PathLike[str]) -> bool:
    """Return True when ``url`` names a path outside the local filesystem.

    ``os.PathLike`` values are always local. A string is remote when it starts with a
    protocol other than ``file`` or ``local`` (``s3://``, ``gs://``, ``memory://``,
    chained URLs such as ``simplecache::s3://``). A relative local path that starts
    like a scheme followed by ``::`` or ``://`` ("x::y") reads as a URL.
    """
    if not isinstance(url, str):
        return False
    protocol = get_protocol(url)
    # A local name with "::" in it ("/videos/a::b.mp4") gives a "protocol" that is no
    # URL scheme, so it stays local.
    return protocol not in LOCAL_PROTOCOLS and _URL_SCHEME.fullmatch(protocol) is not None


def filesystem(url: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the path within it, without the protocol.

    Raises ``InvalidInputError`` for a protocol that fsspec does not know and for a known
    one whose backend package is not installed (``gcsfs`` for ``gs://``, say).
    """
    if not is_remote(url):
        # fsspec would read "::" in a local name as a chained URL.
        return fsspec.filesystem("file"), local_path(url).absolute().as_posix()
    text = os.fspath(url)
    for protocol in _protocols_of(text):
        _check_backend(protocol, text)
    return fsspec.core.url_to_fs(text)


def _protocols_of(url: str) -> list[str]:
    # A chained URL ("simplecache::s3://b/k") has one protocol per link.
    return [get_protocol(part) for part in url.split("::")]


def _check_backend(protocol: str, url: str) -> None:
    if protocol not in fsspec.available_protocols():
        raise InvalidInputError(
            f"Unknown protocol {protocol!r} in {url}. Use a local path or an fsspec URL "
            "such as s3://bucket/prefix, gs://bucket/prefix or file:///path."
        )
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        spec = known_implementations.get(protocol, {})
        package = spec.get("class", "").split(".")[0] or "the backend package"
        raise InvalidInputError(
            f"Cannot open {url}: the fsspec backend for {protocol}:// is not installed ({exc}). "
            f"Install it with `pip install {package}`."
        ) from exc


def local_path(url: str | os.PathLike[str]) -> Path:
    """Return the local filesystem path of a local path or ``file://`` URL."""
    if is_remote(url):
        raise InvalidInputError(f"Expected a local path or file:// URL, got {url}")
    if isinstance(url, str) and fsspec.core.split_protocol(url)[0] is not None:
        return Path(fsspec.core.url_to_fs(url)[1])
    # A plain path is used as given, so relative paths and undecodable bytes stay as they are.
    return Path(url)


def join_url(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path segments to a local path or URL, with ``/`` for URLs."""
    if not is_remote(base):
        return os.path.join(os.fspath(base), *parts)
    joined = os.fspath(base).rstrip("/")
    for part in parts:
        joined = f"{joined}/{part.strip('/')}"
    return joined


# --- client environment for worker processes -----------------------------------------


def client_environment() -> dict[str, str]:
    """Return the environment variables that configure object-store clients in this process."""
    return {name: value for name, value in os.environ.items() if _is_client_variable(name)}


def apply_client_environment(env: Mapping[str, str]) -> None:
    """Make this process's object-store client variables equal to ``env``.

    Variables of that kind missing from ``env`` are removed. When anything changes,
    fsspec's cached filesystem instances are dropped, so that the next client is created
    with the new endpoint and credentials.
    """
    current = client_environment()
    if current == dict(env):
        return
    for name in current.keys() - env.keys():
        del os.environ[name]
    os.environ.update(env)
    for cls in loaded_filesystems.values():
        cls.clear_instance_cache()


def _is_client_variable(name: str) -> bool:
    return name.startswith(_CLIENT_ENV_PREFIXES) or name in _CLIENT_ENV_NAMES


# --- listing ------------------------------------------------------------------------


def list_files(url: str) -> list[RemoteFile]:
    """List every file under the prefix ``url``, recursively, sorted by relative path.

    Raises ``InvalidInputError`` when ``url`` is not a directory (for object stores: no
    object has that prefix) or cannot be listed.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # a cached listing from earlier in this process may be stale
    try:
        if not fs.isdir(root):
            raise InvalidInputError(f"Input folder not found or not a directory: {url}")
        found = fs.find(root, detail=True)
    except OSError as exc:
        raise InvalidInputError(f"Failed to list {url}: {exc}. {_CHECK_ACCESS}") from exc

    files = []
    for name, info in found.items():
        # A zero-byte key that ends with "/" is a folder marker, as the S3 console creates them.
        if info.get("type") != "file" or not name.startswith(root + "/") or name.endswith("/"):
            continue
        files.append(
            RemoteFile(
                relative_path=name[len(root) + 1 :],
                url=fs.unstrip_protocol(name),
                path=name,
                size_bytes=int(info.get("size") or 0),
                info=info,
            )
        )
    files.sort(key=lambda f: f.relative_path)
    return files


def fingerprint_from_listing(info: Mapping[str, Any], size: int) -> str:
    """Return a change fingerprint of a listed object from its metadata, without reading it.

    ``etag:<size>:<etag>`` when the backend gives an ETag (S3, GCS, Azure), else
    ``mtime:<size>:<time>`` with the modification time, or the creation time where a
    backend stores only that (``memory://``), else ``size:<size>``. An S3 ETag is the
    MD5 of the content only for single-part uploads, so the same bytes uploaded in parts
    of another size get another fingerprint.
    """
    etag = info.get("ETag") or info.get("etag")
    if etag:
        etag = str(etag).strip('"')  # S3 sends the ETag in double quotes
        return f"etag:{size}:{etag}"
    for key in ("LastModified", "last_modified", "mtime", "updated", "modified", "created"):
        value = info.get(key)
        if value:
            text = value.isoformat() if hasattr(value, "isoformat") else str(value)
            return f"mtime:{size}:{text}"
    return f"size:{size}"


# --- one object, for decoding -------------------------------------------------------


def download_video(url: str, directory: str | os.PathLike[str]) -> Path:
    """Download the object at ``url`` into a new file in ``directory`` and return its path.

    The local name keeps the object's extension, which FFmpeg uses to tell raw streams
    apart. Raises ``VideoDecodeError`` with status TOO_LARGE when the object is larger
    than the free space in ``directory``, and READ_ERROR when it is missing or the
    download fails.
    """
    suffix = posixpath.splitext(url.rstrip("/"))[1][:16]
    fd, name = tempfile.mkstemp(prefix="video-", suffix=suffix, dir=directory)
    os.close(fd)
    local = Path(name)
    try:
        _download_object(url, local)
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    return local


def _download_object(url: str, local: Path) -> None:
    try:
        fs, path = filesystem(url)
        size = fs.size(path)
    except FileNotFoundError as exc:
        raise VideoDecodeError(VideoStatus.READ_ERROR.value, f"failed to read {url}: object not found") from exc
    # Any failure to reach or read the object (missing credentials, a refused connection,
    # an HTTP error) fails this one file, and the message keeps the client's reason.
    except Exception as exc:
        message = f"failed to read {url}: {type(exc).__name__}: {exc}"
        raise VideoDecodeError(VideoStatus.READ_ERROR.value, message) from exc

    free = shutil.disk_usage(local.parent).free
    if size is not None and size > free:
        raise VideoDecodeError(
            VideoStatus.TOO_LARGE.value,
            f"{url} is {size} bytes, more than the {free} bytes free in {local.parent} to download it. "
            "Set TMPDIR to a folder on a larger disk.",
        )

    try:
        fs.get_file(path, str(local))
    except Exception as exc:
        raise VideoDecodeError(
            VideoStatus.READ_ERROR.value, f"failed to download {url}: {type(exc).__name__}: {exc}"
        ) from exc


# --- directory trees ----------------------------------------------------------------


def upload_tree(local_dir: str | os.PathLike[str], url: str) -> list[str]:
    """Upload every file under ``local_dir`` to the prefix ``url`` and return the uploaded URLs.

    ``index.json`` files go after the other files, and ``CURRENT`` files last, so a
    reader that sees a new header or version pointer finds the files it names. Remote
    files that do not exist locally are left in place, so upload a new index to a new
    prefix or a new version directory, not over an older one.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise InvalidInputError(f"Folder to upload not found or not a directory: {root}")
    fs, base = filesystem(url)
    base = base.rstrip("/")

    relative = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    if not relative:
        raise InvalidInputError(f"Folder to upload is empty: {root}")
    uploaded = []
    for group in _upload_order(relative):
        sources = [str(root / name) for name in group]
        targets = [f"{base}/{name}" for name in group]
        if not is_remote(url):
            for target in targets:
                os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            fs.put(sources, targets)
        except OSError as exc:
            raise InvalidInputError(f"Failed to upload {root} to {url}: {exc}. {_CHECK_ACCESS}") from exc
        uploaded.extend(fs.unstrip_protocol(t) for t in targets)
    logger.info("Uploaded %d files from %s to %s", len(uploaded), root, url)
    return uploaded


def _upload_order(relative: list[str]) -> list[list[str]]:
    last_names = (HEADER_NAME, CURRENT_NAME)
    groups = [[name for name in relative if posixpath.basename(name) not in last_names]]
    groups += [[name for name in relative if posixpath.basename(name) == last] for last in last_names]
    return [group for group in groups if group]


def download_tree(url: str, local_dir: str | os.PathLike[str]) -> list[Path]:
    """Download every file under the prefix ``url`` into ``local_dir`` and return the local paths.

    Raises ``InvalidInputError`` when ``url`` has no files, or when an object's name
    would land outside ``local_dir`` (a key with a ``..`` segment, say).
    """
    files = list_files(url)
    if not files:
        raise InvalidInputError(f"No files to download under {url}")
    root = Path(local_dir).resolve()
    fs, _ = filesystem(url)

    sources, targets = [], []
    for file in files:
        target = _safe_target(root, file.relative_path, url)
        target.parent.mkdir(parents=True, exist_ok=True)
        sources.append(file.path)
        targets.append(str(target))
    try:
        fs.get(sources, targets)
    except OSError as exc:
        raise InvalidInputError(f"Failed to download {url} to {root}: {exc}. {_CHECK_ACCESS}") from exc
    logger.info("Downloaded %d files from %s to %s", len(targets), url, root)
    return [Path(t) for t in targets]


def _safe_target(root: Path, relative: str, url: str) -> Path:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidInputError(
            f"Cannot download {url}/{relative}: its name has an empty, '.' or '..' segment, "
            "so its local copy could land outside the target folder"
        )
    return root.joinpath(*parts)


# --- cached remote indexes ------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return ``$GRDR_CACHE_DIR``, else ``$XDG_CACHE_HOME/grdr``, else ``~/.cache/grdr``."""
    if os.environ.get("GRDR_CACHE_DIR"):
        return Path(os.environ["GRDR_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "grdr"


def open_remote_index(url: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local directory with the index at ``url``, downloading it into a cache when remote.

    A local path or ``file://`` URL is returned as a local path, unchanged. For a remote
    index, ``CURRENT`` and ``index.json`` are read on every call. The files are
    downloaded only when the cache has no copy with the same ``CURRENT`` and the same
    ``index.json`` bytes, and since ``index.json`` lists the checksum of every other
    file, an unchanged header means unchanged files. The local copy has the remote
    layout: a versioned index gets ``CURRENT`` and its current version only.

    Raises ``IndexFormatError`` when ``url`` has no ``index.json`` (directly or in the
    version that ``CURRENT`` names).
    """
    if not is_remote(url):
        return local_path(url)
    url = str(url).rstrip("/")
    fs, root = filesystem(url)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    url_dir = cache_root / "indexes" / hashlib.sha256(url.encode()).hexdigest()[:24]
    url_dir.mkdir(parents=True, exist_ok=True)

    # A new index can be published between reading its header and downloading its
    # files. The downloaded header is then compared with the one read, and a mismatch
    # starts over.
    for _ in range(3):
        # s3fs and gcsfs serve file metadata from listings cached earlier in this process, which
        # would hide a newly published version.
        fs.invalidate_cache(root)
        version = read_current_url(url)
        header_url = join_url(url, VERSIONS_DIR, version, HEADER_NAME) if version else join_url(url, HEADER_NAME)
        header = read_header_url(header_url, url)
        key = hashlib.sha256((version or "").encode() + b"\0" + header).hexdigest()[:24]
        target = url_dir / key
        if target.is_dir():
            logger.info("Using the cached copy of %s in %s", url, target)
            return target
        if _download_index(url, version, header, url_dir, target):
            _remove_other_copies(url_dir, keep=target)
            return target
        logger.info("%s changed while it was being downloaded; downloading it again", url)
    raise IndexFormatError(
        f"{url} changed during each of 3 downloads. Open it again when it is no longer being written."
    )


def read_current_url(url: str) -> str | None:
    """Return the version name in ``url/CURRENT``, or None for an index without versions."""
    current_url = join_url(url, CURRENT_NAME)
    try:
        with fsspec.open(current_url, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInputError(f"Failed to read {current_url}: {exc}. {_CHECK_ACCESS}") from exc
    name = data.decode("utf-8", errors="replace").strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise IndexFormatError(f"{current_url} must contain the name of one version directory, got {name!r}")
    return name


def read_header_url(header_url: str, url: str) -> bytes:
    """Return the bytes of the ``index.json`` at ``header_url`` of the index ``url``."""
    try:
        with fsspec.open(header_url, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise IndexFormatError(f"{url} is not a grdr index: {header_url} not found") from exc
    except OSError as exc:
        raise InvalidInputError(f"Failed to read {header_url}: {exc}. {_CHECK_ACCESS}") from exc


def _download_index(url: str, version: str | None, header: bytes, url_dir: Path, target: Path) -> bool:
    """Download into a temporary sibling of ``target`` and rename it into place.

    Returns False, keeping nothing, when the downloaded ``index.json`` differs from ``header``.
    """
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=url_dir))
    try:
        if version:
            index_dir = staging / VERSIONS_DIR / version
            download_tree(join_url(url, VERSIONS_DIR, version), index_dir)
            (staging / CURRENT_NAME).write_text(version + "\n")
        else:
            index_dir = staging
            download_tree(url, index_dir)
        if (index_dir / HEADER_NAME).read_bytes() != header:
            return False
        try:
            staging.rename(target)
        except OSError:
            # Another process published the same copy first. Its copy is complete
            # because it was renamed into place.
            if not target.is_dir():
                raise
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_other_copies(url_dir: Path, keep: Path) -> None:
    # NOTE: a process that still reads an older copy keeps its open files on Linux and
    # macOS, where deleting an open file is allowed, but may fail on Windows.
    for entry in url_dir.iterdir():
        if entry != keep and entry.is_dir() and not entry.name.startswith(".download-"):
            logger.info("Removing the outdated cached index copy %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
