"""Semantic-ID trie in LMDB: allowed next codes per prefix and posting lists per full ID."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.lmdb_write import write_sorted_tables
from grdr_schemas.trie import CODE_DTYPE, DB_CHILDREN, DB_META, DB_POSTINGS, ORDINAL_DTYPE, TRIE_FORMAT_VERSION

logger = logging.getLogger(__name__)

_MAX_DBS = 3


def pack_codes(codes: np.ndarray | tuple[int, ...] | list[int]) -> bytes:
    return np.asarray(codes, dtype=CODE_DTYPE).tobytes()


def children_key(prefix: np.ndarray | tuple[int, ...] | list[int]) -> bytes:
    return bytes([len(prefix)]) + pack_codes(prefix)


def unpack_codes(key: bytes) -> tuple[int, ...]:
    return tuple(int(c) for c in np.frombuffer(key, dtype=CODE_DTYPE))


def write_trie(path: Path, codes: np.ndarray, codebook_sizes: list[int]) -> None:
    """Write the trie of ``codes``, an ``(n, views, levels)`` array indexed by ordinal.

    Keys are sorted before writing and appended by one writer in one transaction, so
    the same codes always give a byte-identical file.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise InvalidInputError(f"Expected codes of shape (n, views, levels), got {codes.shape}")
    levels = codes.shape[2]
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) > np.iinfo(CODE_DTYPE).max):
        raise InvalidInputError(f"Codes must lie in [0, {np.iinfo(CODE_DTYPE).max}], got [{int(codes.min())}, {int(codes.max())}]")

    children_items = _children_items(codes)
    posting_items = _posting_items(codes)
    meta_items = sorted(
        [
            (b"format_version", json.dumps(TRIE_FORMAT_VERSION).encode()),
            (b"levels", json.dumps(levels).encode()),
            (b"codebook_sizes", json.dumps(list(codebook_sizes)).encode()),
        ]
    )

    payload = sum(len(k) + len(v) for k, v in children_items + posting_items)
    # LMDB needs an upper bound for the file, and on Linux the file only grows to the pages
    # used. An estimate that proves too small costs a retry with a doubled map.
    map_size = max(1 << 24, 4 * payload + 64 * (len(children_items) + len(posting_items)))
    write_sorted_tables(path, [(DB_CHILDREN, children_items), (DB_POSTINGS, posting_items), (DB_META, meta_items)], map_size, _MAX_DBS)
    logger.info("Wrote trie %s: %d prefixes, %d semantic IDs", path, len(children_items), len(posting_items))


def _sort_keys(rows: np.ndarray) -> np.ndarray:
    """Return one sortable value per row of an ``(n, l)`` code array, ordered like the packed bytes.

    Up to 4 codes fit one uint64 (16 bits each, first code highest), which NumPy sorts
    fast. Longer rows become opaque byte strings, which NumPy compares bytewise, and
    bytewise order is code order for big-endian codes.
    """
    width = rows.shape[1]
    if width * 16 <= 64:
        keys = np.zeros(len(rows), dtype=np.uint64)
        for column in range(width):
            keys = (keys << np.uint64(16)) | rows[:, column].astype(np.uint64)
        return keys
    packed = np.ascontiguousarray(rows, dtype=CODE_DTYPE)
    return packed.view(np.dtype((np.void, width * CODE_DTYPE.itemsize))).ravel()


def _rows_of(keys: np.ndarray, width: int) -> np.ndarray:
    """Invert ``_sort_keys``: the ``(n, width)`` codes of sorted keys."""
    if keys.dtype == np.uint64:
        shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(16)
        return ((keys[:, None] >> shifts) & np.uint64(0xFFFF)).astype(np.int64)
    return np.frombuffer(keys.tobytes(), dtype=CODE_DTYPE).reshape(-1, width).astype(np.int64)


def _children_items(codes: np.ndarray) -> list[tuple[bytes, bytes]]:
    """Return (children key, packed sorted child codes) of every prefix, in key order."""
    levels = codes.shape[2]
    items = []
    for level in range(levels):
        # Distinct (prefix, next code) pairs, sorted by prefix and then by code.
        pairs = _rows_of(np.unique(_sort_keys(codes[:, :, : level + 1].reshape(-1, level + 1))), level + 1)
        prefixes = pairs[:, :level]
        starts = np.flatnonzero(np.concatenate(([True], (prefixes[1:] != prefixes[:-1]).any(axis=1))))
        ends = np.append(starts[1:], len(pairs))
        next_codes = pairs[:, level].astype(CODE_DTYPE)
        prefix_bytes = prefixes[starts].astype(CODE_DTYPE)
        for row, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            items.append((bytes([level]) + prefix_bytes[row].tobytes(), next_codes[start:end].tobytes()))
    return items


def _posting_items(codes: np.ndarray) -> list[tuple[bytes, bytes]]:
    """Return (packed semantic ID, packed sorted distinct ordinals) of every ID, in key order."""
    num_videos, views, levels = codes.shape
    ids, inverse = np.unique(_sort_keys(codes.reshape(-1, levels)), return_inverse=True)
    ordinals = np.repeat(np.arange(num_videos, dtype=np.int64), views)
    order = np.lexsort((ordinals, inverse))
    ids_sorted, ordinals_sorted = inverse[order], ordinals[order]
    # A video filed twice under one ID (two views with equal IDs) is listed once.
    keep = np.concatenate(([True], (ids_sorted[1:] != ids_sorted[:-1]) | (ordinals_sorted[1:] != ordinals_sorted[:-1])))
    ids_sorted, packed = ids_sorted[keep], ordinals_sorted[keep].astype(ORDINAL_DTYPE)
    bounds = np.searchsorted(ids_sorted, np.arange(len(ids) + 1)).tolist()
    raw_ids = _rows_of(ids, levels).astype(CODE_DTYPE).tobytes()
    width = levels * CODE_DTYPE.itemsize
    return [
        (raw_ids[i * width : (i + 1) * width], packed[bounds[i] : bounds[i + 1]].tobytes())
        for i in range(len(ids))
    ]


@dataclass(frozen=True)
class PrefixTable:
    """Every prefix of the trie as a node of a flat child list, for vectorised beam search.

    Node 0 is the root. Nodes are numbered in key order (by prefix length, then code
    order), and ``codes`` lists the children of node 0, then of node 1, and so on. So
    the child at position ``e`` of ``codes`` is node ``e + 1``, except that the children
    of the last level's nodes are full semantic IDs, which are not nodes.
    """

    codes: np.ndarray  # (entries,) int64, children of every node, grouped by node
    first_child: np.ndarray  # (nodes,) int64, position in codes of a node's first child
    child_count: np.ndarray  # (nodes,) int64, at least 1 for every node
    nodes_per_level: list[int]  # nodes with a prefix of length 0, 1, ..., L-1


@dataclass(frozen=True)
class TrieStats:
    distinct_ids: int
    largest_posting: int
    mean_posting: float
    codes_used_per_level: list[int]


class TrieReader:
    """Read-only access to a trie file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise IndexFormatError(f"Trie file not found: {path}")
        try:
            self._env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=_MAX_DBS)
            self._children = self._env.open_db(DB_CHILDREN, create=False)
            self._postings = self._env.open_db(DB_POSTINGS, create=False)
            meta_db = self._env.open_db(DB_META, create=False)
        except lmdb.Error as exc:
            raise IndexFormatError(f"Cannot open trie {path}: {exc}") from exc
        with self._env.begin(db=meta_db) as txn:
            meta = {k.decode(): json.loads(v) for k, v in txn.cursor()}
        if meta.get("format_version") != TRIE_FORMAT_VERSION:
            raise IndexFormatError(f"Trie {path} has format version {meta.get('format_version')}, expected {TRIE_FORMAT_VERSION}")
        self.levels: int = meta["levels"]
        self.codebook_sizes: list[int] = meta["codebook_sizes"]
        # At most 1 + K + ... + K^(L-1) prefixes exist whatever the corpus size, so
        # caching every lookup stays small and makes repeated beam searches cheap.
        self._children_cache: dict[tuple[int, ...], np.ndarray] = {}
        self._prefix_table: PrefixTable | None = None
        self._path = Path(path)

    def close(self) -> None:
        self._env.close()

    def children(self, prefix: tuple[int, ...] | list[int]) -> np.ndarray:
        """Return the codes that may follow ``prefix`` (empty when the prefix is unknown)."""
        # Beam search passes tuples of ints; converting those again costs more than the lookup.
        if type(prefix) is not tuple:
            prefix = tuple(int(c) for c in prefix)
        cached = self._children_cache.get(prefix)
        if cached is not None:
            return cached
        with self._env.begin(db=self._children, buffers=True) as txn:
            value = txn.get(children_key(prefix))
            codes = np.frombuffer(bytes(value), dtype=CODE_DTYPE).astype(np.int64) if value is not None else np.empty(0, np.int64)
        codes.flags.writeable = False
        self._children_cache[prefix] = codes
        return codes

    def prefix_table(self) -> PrefixTable:
        """Return every prefix and its children as flat arrays, read on first use and kept.

        Contains one code per prefix and per distinct semantic ID: 2 bytes each in the file,
        8 in memory (a few MB for millions of distinct IDs).
        """
        if self._prefix_table is None:
            self._prefix_table = self._read_prefix_table()
        return self._prefix_table

    def _read_prefix_table(self) -> PrefixTable:
        values: list[bytes] = []
        nodes_per_level = [0] * self.levels
        with self._env.begin(db=self._children, buffers=True) as txn:
            for key, value in txn.cursor():
                level = key[0]
                if level >= self.levels or len(key) != 1 + level * CODE_DTYPE.itemsize:
                    raise IndexFormatError(f"Trie {self._path} has a malformed children key {bytes(key)!r}")
                nodes_per_level[level] += 1
                values.append(bytes(value))
        counts = np.array([len(v) // CODE_DTYPE.itemsize for v in values], dtype=np.int64)
        codes = np.frombuffer(b"".join(values), dtype=CODE_DTYPE).astype(np.int64)
        # Key order lists parents before children, so the children of level l's nodes are
        # exactly level l+1's nodes, in order. A count mismatch means a damaged file.
        for level in range(self.levels - 1):
            parents = slice(sum(nodes_per_level[:level]), sum(nodes_per_level[: level + 1]))
            if int(counts[parents].sum()) != nodes_per_level[level + 1]:
                raise IndexFormatError(f"Trie {self._path} is inconsistent: level {level} lists children that have no entry")
        if len(values) and (counts < 1).any():
            raise IndexFormatError(f"Trie {self._path} has a prefix without children")
        return PrefixTable(
            codes=codes,
            first_child=np.cumsum(counts) - counts,
            child_count=counts,
            nodes_per_level=nodes_per_level,
        )

    def iter_postings(self, semantic_ids: Iterable[bytes], limit: int | None = None) -> Iterator[np.ndarray]:
        """Yield the ordinal list of each packed semantic ID (see ``pack_codes``), all in one read transaction.

        Like ``postings``, each list is ascending, empty for an unknown ID and cut to
        ``limit`` before it is copied out of the memory map. Close the generator (or
        exhaust it) to end the transaction.
        """
        with self._env.begin(db=self._postings, buffers=True) as txn:
            for key in semantic_ids:
                value = txn.get(key)
                if value is None:
                    yield np.empty(0, np.int64)
                else:
                    yield np.frombuffer(value, dtype=ORDINAL_DTYPE)[:limit].astype(np.int64)

    def iter_posting_bytes(self, semantic_ids: Iterable[bytes], limit: int) -> Iterator[bytes]:
        """Yield the raw ordinal list (``ORDINAL_DTYPE``) of each packed semantic ID, cut to ``limit`` ordinals.

        Like ``iter_postings``, but each list is one copied ``bytes`` object, which costs
        less than an array per list when the caller joins them. An unknown ID yields b"".
        """
        size = limit * ORDINAL_DTYPE.itemsize
        with self._env.begin(db=self._postings, buffers=True) as txn:
            for key in semantic_ids:
                value = txn.get(key)
                yield b"" if value is None else bytes(value[:size])

    def postings(self, semantic_id: tuple[int, ...] | list[int], limit: int | None = None) -> np.ndarray:
        """Return the ordinals filed under a full semantic ID (empty when unknown), ascending.

        With ``limit``, return only the first ``limit`` of them; only those are copied out
        of the memory map, which matters for lists of many thousand videos.
        """
        with self._env.begin(db=self._postings, buffers=True) as txn:
            value = txn.get(pack_codes(semantic_id))
            if value is None:
                return np.empty(0, np.int64)
            # astype copies, so the result does not point into the map after the transaction ends.
            return np.frombuffer(value, dtype=ORDINAL_DTYPE)[:limit].astype(np.int64)

    def stats(self) -> TrieStats:
        """Return statistics over all postings, reading the whole postings database."""
        used: list[set[int]] = [set() for _ in range(self.levels)]
        distinct = 0
        largest = 0
        total = 0
        with self._env.begin(db=self._postings, buffers=True) as txn:
            for key, value in txn.cursor():
                distinct += 1
                size = len(value) // ORDINAL_DTYPE.itemsize
                largest = max(largest, size)
                total += size
                for level, code in enumerate(np.frombuffer(bytes(key), dtype=CODE_DTYPE)):
                    used[level].add(int(code))
        return TrieStats(
            distinct_ids=distinct,
            largest_posting=largest,
            mean_posting=total / distinct if distinct else 0.0,
            codes_used_per_level=[len(u) for u in used],
        )
