"""Discovery: find the video files under an input root and fingerprint them.

The root is a local folder, a ``file://`` URL or an fsspec URL of a prefix in an object
store (``s3://bucket/videos``). Local files get a content fingerprint, remote objects one
from their listing metadata (see ``grdr_core.remote.fingerprint_from_listing``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from grdr_core import remote
from grdr_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts", ".ogv"}
)

# Files up to this size are hashed whole; larger ones by three samples of this size.
_FINGERPRINT_CHUNK = 1 << 20


# Fingerprint of a file that could not be read, or that is not a regular file and so
# is never opened (opening a FIFO would block the build).
UNREADABLE = "unreadable"
NOT_A_REGULAR_FILE = "not-a-regular-file"


@dataclass(frozen=True)
class VideoFile:
    """One discovered input file.

    ``video_id`` and ``uri`` are valid UTF-8 text for the manifest. A file name that is
    not valid UTF-8 (a Latin-1 name on Linux, say) shows each invalid byte as a ``\\xNN``
    escape there. ``path`` is the name to open, and ``uri_bytes`` keeps the raw bytes.
    """

    video_id: str  # POSIX path relative to the input root, extension included
    uri: str  # absolute path or full URL, valid UTF-8
    size_bytes: int  # -1 when the file could not be examined
    fingerprint: str
    path: str  # absolute path as the OS names it (surrogate escapes for undecodable bytes), or the URL
    uri_bytes: bytes | None = None  # raw bytes of the absolute path when it is not valid UTF-8


def path_text(path: str) -> tuple[str, bytes | None]:
    """Return ``path`` as valid UTF-8 text, and its raw bytes when they are not valid UTF-8.

    ``os.walk`` gives undecodable bytes of a name as lone surrogates, which Arrow cannot
    store. They become ``\\xNN`` escapes in the text, and the raw bytes are kept beside it.
    """
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="backslashreplace"), raw


def fingerprint_file(path: str | os.PathLike[str], size: int) -> str:
    """Return a content fingerprint of a file.

    Files of at most 3 MiB are hashed whole. Larger files hash their size and 1 MiB at
    the start, the middle and the end, so that fingerprinting a data lake of large videos
    reads a bounded amount per file. Prefixed with the scheme: ``blake2b:`` or
    ``blake2b-sampled:``.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        if size <= 3 * _FINGERPRINT_CHUNK:
            while chunk := f.read(_FINGERPRINT_CHUNK):
                digest.update(chunk)
            return "blake2b:" + digest.hexdigest()
        for offset in (0, (size - _FINGERPRINT_CHUNK) // 2, size - _FINGERPRINT_CHUNK):
            f.seek(offset)
            digest.update(f.read(_FINGERPRINT_CHUNK))
    return "blake2b-sampled:" + digest.hexdigest()


def discover_videos(root: str | os.PathLike[str], extensions: frozenset[str] = VIDEO_EXTENSIONS) -> list[VideoFile]:
    """Walk ``root`` recursively and return its video files sorted by ``video_id``.

    A file counts as a video by its extension (case-insensitive). The ``video_id`` is the
    file's path relative to ``root`` in POSIX form, so ids are unique within a build and
    stable across builds of the same tree. Symbolic links to files are followed; links to
    directories are not, so a link cycle cannot make the walk loop.

    ``root`` may be an fsspec URL. A remote prefix is listed recursively, and its videos
    get the URL as ``uri`` and ``path``. Raises ``InvalidInputError`` when ``root`` is not
    found, is not a folder or prefix, or has an unknown protocol.
    """
    if remote.is_remote(root):
        return _discover_remote(str(root), extensions)
    root_path = remote.local_path(root)
    if not root_path.is_dir():
        raise InvalidInputError(f"Input folder not found or not a directory: {root_path}")
    root_path = root_path.resolve()

    found: list[VideoFile] = []
    for dirpath, dirnames, filenames in os.walk(root_path, onerror=_log_walk_error):
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                logger.info("Skipping %s: symbolic links to folders are not followed", os.path.join(dirpath, name))
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in extensions:
                continue
            path = Path(dirpath) / name
            found.append(_describe_file(root_path, path))

    # NOTE: a name that is not valid UTF-8 gets \xNN escapes in its id. A file whose
    # name contains the same escapes literally would get the same id, and nothing checks that.
    found.sort(key=lambda v: v.video_id)
    logger.info("Discovered %d video files under %s", len(found), root_path)
    return found


def _discover_remote(url: str, extensions: frozenset[str]) -> list[VideoFile]:
    found = [
        VideoFile(
            video_id=file.relative_path,
            uri=file.url,
            size_bytes=file.size_bytes,
            fingerprint=remote.fingerprint_from_listing(file.info, file.size_bytes),
            path=file.url,
        )
        for file in remote.list_files(url)
        if posixpath.splitext(file.relative_path)[1].lower() in extensions
    ]
    logger.info("Discovered %d video files under %s", len(found), url)
    return found


def _describe_file(root: Path, path: Path) -> VideoFile:
    video_id, _ = path_text(path.relative_to(root).as_posix())
    uri, uri_bytes = path_text(str(path))
    size, fingerprint = _fingerprint_or_reason(path)
    return VideoFile(
        video_id=video_id, uri=uri, size_bytes=size, fingerprint=fingerprint, path=str(path), uri_bytes=uri_bytes
    )


def _fingerprint_or_reason(path: Path) -> tuple[int, str]:
    # Unreadable and special files still get a manifest row, and decoding records the read error.
    try:
        info = path.stat()
    except OSError as exc:
        logger.warning("Cannot examine %s: %s", path, exc)
        return -1, UNREADABLE
    if not stat.S_ISREG(info.st_mode):
        logger.warning("Not fingerprinting %s: it is not a regular file", path)
        return info.st_size, NOT_A_REGULAR_FILE
    try:
        return info.st_size, fingerprint_file(path, info.st_size)
    except OSError as exc:
        logger.warning("Cannot read %s for fingerprinting: %s", path, exc)
        return info.st_size, UNREADABLE


def _log_walk_error(exc: OSError) -> None:
    logger.warning("Cannot list %s: %s", exc.filename, exc)
