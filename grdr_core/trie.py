"""Semantic-ID trie in LMDB: allowed next codes per prefix and posting lists per full ID.

The file stores flat arrays (see ``grdr_schemas.trie``). ``TrieReader`` keeps the child
lists and posting-list ends in memory and reads the ordinals of the posting lists
through LMDB's memory map, without a copy when LMDB stores them aligned (any trie large
enough for LMDB's overflow pages).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.lmdb_write import write_sorted_tables
from grdr_schemas.trie import (
    CODE_DTYPE,
    COUNT_DTYPE,
    DB_ARRAYS,
    DB_META,
    KEY_CHILD_CODES,
    KEY_CHILD_COUNTS,
    KEY_ORDINALS,
    KEY_POSTING_ENDS,
    ORDINAL_DTYPE,
    TRIE_FORMAT_VERSION,
)

logger = logging.getLogger(__name__)

_MAX_DBS = 2
# Codes take 16 bits, so (node << 16) | code orders entries like the child lists do.
_CODE_BITS = 16


def write_trie(path: Path, codes: np.ndarray, codebook_sizes: list[int]) -> None:
    """Write the trie of ``codes``, an ``(n, views, levels)`` array indexed by ordinal, to a new file.

    The arrays depend on the codes only and are written by one writer in one
    transaction, so the same codes and codebook sizes give a byte-identical file.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise InvalidInputError(f"Expected codes of shape (n, views, levels), got {codes.shape}")
    levels = codes.shape[2]
    if levels < 1:
        raise InvalidInputError(f"Expected at least one level of codes, got shape {codes.shape}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) > np.iinfo(CODE_DTYPE).max):
        raise InvalidInputError(f"Codes must lie in [0, {np.iinfo(CODE_DTYPE).max}], got [{int(codes.min())}, {int(codes.max())}]")

    child_codes, child_counts, nodes_per_level = _child_arrays(codes)
    posting_ends, ordinals = _posting_arrays(codes)
    arrays = [
        (KEY_CHILD_CODES, child_codes.astype(CODE_DTYPE).tobytes()),
        (KEY_CHILD_COUNTS, child_counts.astype(COUNT_DTYPE).tobytes()),
        (KEY_ORDINALS, ordinals.astype(ORDINAL_DTYPE).tobytes()),
        (KEY_POSTING_ENDS, posting_ends.astype(COUNT_DTYPE).tobytes()),
    ]
    meta = [
        (b"codebook_sizes", json.dumps(list(codebook_sizes)).encode()),
        (b"format_version", json.dumps(TRIE_FORMAT_VERSION).encode()),
        (b"levels", json.dumps(levels).encode()),
        (b"nodes_per_level", json.dumps(nodes_per_level).encode()),
    ]
    payload = sum(len(value) for _, value in arrays)
    # LMDB needs an upper bound for the file, and on Linux the file only grows to the pages
    # used. An estimate that proves too small costs a retry with a doubled map.
    map_size = max(1 << 24, 2 * payload + (1 << 20))
    write_sorted_tables(path, [(DB_ARRAYS, sorted(arrays)), (DB_META, sorted(meta))], map_size, _MAX_DBS)
    logger.info("Wrote trie %s: %d prefixes, %d semantic IDs, %d postings", path, sum(nodes_per_level), len(posting_ends), len(ordinals))


def _sort_keys(rows: np.ndarray) -> np.ndarray:
    """Return one sortable value per row of an ``(n, l)`` code array, ordered like the rows' codes.

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
    packed = np.ascontiguousarray(rows, dtype=">u2")
    return packed.view(np.dtype((np.void, width * 2))).ravel()


def _rows_of(keys: np.ndarray, width: int) -> np.ndarray:
    """Invert ``_sort_keys``: the ``(n, width)`` codes of sorted keys."""
    if keys.dtype == np.uint64:
        shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(16)
        return ((keys[:, None] >> shifts) & np.uint64(0xFFFF)).astype(np.int64)
    return np.frombuffer(keys.tobytes(), dtype=">u2").reshape(-1, width).astype(np.int64)


def _child_arrays(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Return every node's sorted child codes (concatenated), its child counts and the nodes per level."""
    levels = codes.shape[2]
    child_codes, child_counts, nodes_per_level = [], [], []
    for level in range(levels):
        # Distinct (prefix, next code) pairs, sorted by prefix and then by code.
        pairs = _rows_of(np.unique(_sort_keys(codes[:, :, : level + 1].reshape(-1, level + 1))), level + 1)
        prefixes = pairs[:, :level]
        new_prefix = np.concatenate(([True], (prefixes[1:] != prefixes[:-1]).any(axis=1))) if len(pairs) else np.empty(0, bool)
        starts = np.flatnonzero(new_prefix)
        child_counts.append(np.diff(np.append(starts, len(pairs))))
        child_codes.append(pairs[:, level])
        nodes_per_level.append(len(starts))
    return np.concatenate(child_codes), np.concatenate(child_counts), nodes_per_level


def _posting_arrays(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the end of each full ID's posting list (IDs in code order) and the lists' ordinals."""
    num_videos, views, levels = codes.shape
    ids, inverse = np.unique(_sort_keys(codes.reshape(-1, levels)), return_inverse=True)
    inverse = inverse.ravel()
    ordinals = np.repeat(np.arange(num_videos, dtype=np.int64), views)
    order = np.lexsort((ordinals, inverse))
    ids_sorted, ordinals_sorted = inverse[order], ordinals[order]
    # A video filed twice under one ID (two views with equal IDs) is listed once.
    keep = np.ones(len(ids_sorted), bool)
    keep[1:] = (ids_sorted[1:] != ids_sorted[:-1]) | (ordinals_sorted[1:] != ordinals_sorted[:-1])
    ids_sorted, ordinals_sorted = ids_sorted[keep], ordinals_sorted[keep]
    if len(ordinals_sorted) > np.iinfo(COUNT_DTYPE).max:
        raise InvalidInputError(
            f"Too many postings for one trie: {len(ordinals_sorted)} distinct (semantic ID, video) pairs, the limit is {np.iinfo(COUNT_DTYPE).max}; "
            "build fewer videos per index or use fewer views"
        )
    posting_ends = np.searchsorted(ids_sorted, np.arange(1, len(ids) + 1))
    return posting_ends, ordinals_sorted


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
    """Read-only access to a trie file; safe to share between threads.

    The ordinals of the posting lists are read through one read transaction that stays
    open until ``close``. No array this class returns points into the memory map, and
    ``close`` waits for the lookups in progress in other threads, so none reads the map
    after it is gone.
    """

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise IndexFormatError(f"Trie file not found: {path}")
        self._path = Path(path)
        self._lock = threading.Lock()
        self._readers = 0  # lookups in progress that read the memory map
        self._closed = False
        self._txn: lmdb.Transaction | None = None
        self._entry_keys: np.ndarray | None = None
        try:
            self._env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=_MAX_DBS)
        except lmdb.Error as exc:
            raise IndexFormatError(f"Cannot open trie {path}: {exc}") from exc
        try:
            self._read(Path(path))
        except BaseException:
            self.close()
            raise

    def _read(self, path: Path) -> None:
        # Reading a page past the end of a truncated file kills the process with SIGBUS.
        expected = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        size = path.stat().st_size
        if size < expected:
            raise IndexFormatError(f"Trie {path} is truncated: {size} of {expected} bytes; rebuild the index or restore it from a copy")
        try:
            meta_db = self._env.open_db(DB_META, create=False)
            with self._env.begin(db=meta_db) as txn:
                meta = {k.decode(): json.loads(v) for k, v in txn.cursor()}
            if meta.get("format_version") != TRIE_FORMAT_VERSION:
                raise IndexFormatError(
                    f"Trie {path} has format version {meta.get('format_version')}, expected {TRIE_FORMAT_VERSION}; "
                    "rebuild the index with this version of grdr"
                )
            arrays_db = self._env.open_db(DB_ARRAYS, create=False)
            # Buffers stay valid while the transaction is open, and close() ends it.
            self._txn = self._env.begin(db=arrays_db, buffers=True)
            values = {key: self._txn.get(key) for key in (KEY_CHILD_CODES, KEY_CHILD_COUNTS, KEY_POSTING_ENDS, KEY_ORDINALS)}
        except lmdb.Error as exc:
            raise IndexFormatError(f"Cannot read trie {path}: {exc}") from exc
        except ValueError as exc:  # JSON or UTF-8 decoding
            raise IndexFormatError(f"Trie {path} has unreadable metadata: {exc}") from exc
        missing = [key.decode() for key, value in values.items() if value is None]
        missing += [key for key in ("levels", "codebook_sizes", "nodes_per_level") if key not in meta]
        if missing:
            raise IndexFormatError(f"Trie {path} is missing its {', '.join(missing)}")
        levels, nodes_per_level = meta["levels"], meta["nodes_per_level"]
        if not _is_int(levels) or levels < 1 or not isinstance(nodes_per_level, list) or not all(_is_int(n) and n >= 0 for n in nodes_per_level):
            raise IndexFormatError(f"Trie {path} has invalid metadata: levels {levels!r}, nodes per level {nodes_per_level!r}")
        self.levels: int = levels
        self.codebook_sizes: list[int] = meta["codebook_sizes"]
        codes = _array(values[KEY_CHILD_CODES], CODE_DTYPE, path).astype(np.int64)
        counts = _array(values[KEY_CHILD_COUNTS], COUNT_DTYPE, path).astype(np.int64)
        self._posting_ends = _array(values[KEY_POSTING_ENDS], COUNT_DTYPE, path).astype(np.int64)
        self._ordinals = _array(values[KEY_ORDINALS], ORDINAL_DTYPE, path)
        self._prefix_table = _check_prefix_table(path, self.levels, nodes_per_level, codes, counts)
        # The children of the last level's nodes are the full IDs, in code order.
        last_level_nodes = sum(nodes_per_level[:-1])
        self._first_leaf = int(self._prefix_table.first_child[last_level_nodes]) if len(counts) else 0
        self._check_postings(path)

    def _check_postings(self, path: Path) -> None:
        ends = self._posting_ends
        if len(ends) != len(self._prefix_table.codes) - self._first_leaf:
            raise IndexFormatError(f"Trie {path} is inconsistent: {len(ends)} posting lists for {len(self._prefix_table.codes) - self._first_leaf} semantic IDs")
        if len(ends) and (ends[-1] != len(self._ordinals) or (np.diff(ends) < 1).any() or ends[0] < 1):
            raise IndexFormatError(f"Trie {path} is inconsistent: posting list ends are not increasing up to the {len(self._ordinals)} ordinals")

    def close(self) -> None:
        """Close the file once the lookups in progress in other threads finish; later lookups raise."""
        with self._lock:
            self._closed = True
            if self._readers:
                return  # the last of them releases the map
        self._release()

    def _release(self) -> None:
        self._ordinals = np.empty(0, ORDINAL_DTYPE)
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()

    @contextmanager
    def _mapped(self) -> Iterator[np.ndarray]:
        """Yield the ordinals array, which points into the memory map, keeping the map open meanwhile."""
        with self._lock:
            if self._closed:
                raise InvalidInputError(f"Trie {self._path} is closed; open the index again to read it")
            self._readers += 1
        try:
            yield self._ordinals
        finally:
            with self._lock:
                self._readers -= 1
                release = self._closed and self._readers == 0
            if release:
                self._release()

    def prefix_table(self) -> PrefixTable:
        """Return every prefix and its children as flat arrays, kept in memory from the open on."""
        return self._prefix_table

    def children(self, prefix: tuple[int, ...] | list[int]) -> np.ndarray:
        """Return the codes that may follow ``prefix`` (empty when the prefix is unknown)."""
        if len(prefix) >= self.levels:
            return np.empty(0, np.int64)
        node = 0
        for code in prefix:
            entry = self._entry(node, int(code))
            if entry < 0:
                return np.empty(0, np.int64)
            node = entry + 1
        table = self._prefix_table
        if node >= len(table.child_count):  # empty trie
            return np.empty(0, np.int64)
        start = table.first_child[node]
        return table.codes[start : start + table.child_count[node]]

    def leaf_indices(self, paths: np.ndarray) -> np.ndarray:
        """Return the position in code order of each full ID of ``(n, levels)`` ``paths``, -1 where unknown."""
        paths = np.asarray(paths, dtype=np.int64)
        if paths.ndim != 2 or paths.shape[1] != self.levels:
            raise InvalidInputError(f"Expected semantic IDs of shape (n, {self.levels}), got {paths.shape}")
        keys = self._keys()
        if len(keys) == 0:
            return np.full(len(paths), -1, np.int64)
        nodes = np.zeros(len(paths), np.int64)
        entries = np.zeros(len(paths), np.int64)
        known = np.ones(len(paths), bool)
        for level in range(self.levels):
            codes = paths[:, level]
            known &= (codes >= 0) & (codes < 1 << _CODE_BITS)
            target = (nodes << _CODE_BITS) | np.where(known, codes, 0)
            entries = np.minimum(np.searchsorted(keys, target), len(keys) - 1)
            known &= keys[entries] == target
            nodes = entries + 1
        return np.where(known, entries - self._first_leaf, -1)

    def pool(self, paths: np.ndarray, limit: int, kernel: Callable[..., np.ndarray] | None = None) -> np.ndarray:
        """Return the union of the posting lists of ``(n, levels)`` ``paths`` in row order, without duplicates, cut to ``limit``.

        Unknown IDs add nothing. ``kernel`` is ``recall_kernels.first_occurrences_in_ranges``;
        without it the union is taken with NumPy.
        """
        leaves = self.leaf_indices(paths)
        return self._pool_leaves(leaves[leaves >= 0], limit, kernel)

    def pool_entries(self, entries: np.ndarray, limit: int, kernel: Callable[..., np.ndarray] | None = None) -> np.ndarray:
        """Like ``pool``, for full IDs given as their positions in ``prefix_table().codes``.

        The decode kernel reports these positions, which spares ``pool``'s search for each
        ID's codes, level by level.
        """
        leaves = np.asarray(entries, dtype=np.int64) - self._first_leaf
        if len(leaves) and (leaves.min() < 0 or leaves.max() >= len(self._posting_ends)):
            raise InvalidInputError(f"Entries must be positions of full IDs in the prefix table, [{self._first_leaf}, {len(self._prefix_table.codes)})")
        return self._pool_leaves(leaves, limit, kernel)

    def _pool_leaves(self, leaves: np.ndarray, limit: int, kernel: Callable[..., np.ndarray] | None) -> np.ndarray:
        ends = self._posting_ends[leaves]
        starts = np.where(leaves > 0, self._posting_ends[np.maximum(leaves - 1, 0)], 0)
        with self._mapped() as ordinals:
            if kernel is not None:
                return kernel(ordinals, starts, ends, limit)
            return _first_occurrences_in_ranges(ordinals, starts, ends, limit)

    def postings(self, semantic_id: tuple[int, ...] | list[int], limit: int | None = None) -> np.ndarray:
        """Return the ordinals filed under a full semantic ID (empty when unknown), ascending, at most ``limit``."""
        if len(semantic_id) != self.levels:
            return np.empty(0, np.int64)
        (leaf,) = self.leaf_indices(np.array([semantic_id], dtype=np.int64)).tolist()
        if leaf < 0:
            return np.empty(0, np.int64)
        start = int(self._posting_ends[leaf - 1]) if leaf else 0
        end = int(self._posting_ends[leaf]) if limit is None else min(int(self._posting_ends[leaf]), start + limit)
        with self._mapped() as ordinals:
            return ordinals[start:end].astype(np.int64)

    def max_ordinal(self) -> int:
        """Return the largest ordinal in any posting list, -1 for an empty trie."""
        with self._mapped() as ordinals:
            return int(ordinals.max()) if len(ordinals) else -1

    def semantic_ids(self) -> np.ndarray:
        """Return every full semantic ID, ``(ids, levels)`` int64 in code order."""
        table = self._prefix_table
        parents = _entry_parents(table.child_count)
        columns = [table.codes[self._first_leaf :]]
        nodes = parents[self._first_leaf :]
        for _ in range(self.levels - 1):
            # Node n is the child at position n - 1 of the child list.
            columns.append(table.codes[nodes - 1])
            nodes = parents[nodes - 1]
        return np.stack(columns[::-1], axis=1) if len(columns[0]) else np.empty((0, self.levels), np.int64)

    def iter_postings(self) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        """Yield every full semantic ID in code order with its ordinals."""
        starts = np.concatenate(([0], self._posting_ends[:-1]))
        with self._mapped() as ordinals:
            copied = ordinals.astype(np.int64)
        for semantic_id, start, end in zip(self.semantic_ids().tolist(), starts.tolist(), self._posting_ends.tolist()):
            yield tuple(semantic_id), copied[start:end]

    def stats(self) -> TrieStats:
        """Return statistics over all postings."""
        table = self._prefix_table
        sizes = np.diff(np.concatenate(([0], self._posting_ends)))
        used = []
        boundaries = np.cumsum([0] + table.nodes_per_level)
        for level in range(self.levels):
            first, last = boundaries[level], boundaries[level + 1]
            if last > first:
                start, stop = table.first_child[first], table.first_child[last - 1] + table.child_count[last - 1]
                used.append(len(np.unique(table.codes[start:stop])))
            else:
                used.append(0)
        return TrieStats(
            distinct_ids=len(sizes),
            largest_posting=int(sizes.max()) if len(sizes) else 0,
            mean_posting=float(sizes.mean()) if len(sizes) else 0.0,
            codes_used_per_level=used,
        )

    def _keys(self) -> np.ndarray:
        """Return ``(node << 16) | code`` of every child-list entry, ascending."""
        if self._entry_keys is None:
            table = self._prefix_table
            parents = _entry_parents(table.child_count)
            self._entry_keys = (parents << _CODE_BITS) | table.codes
        return self._entry_keys

    def _entry(self, node: int, code: int) -> int:
        if not 0 <= code < 1 << _CODE_BITS:
            return -1
        keys = self._keys()
        target = (node << _CODE_BITS) | code
        entry = int(np.searchsorted(keys, target))
        return entry if entry < len(keys) and keys[entry] == target else -1


def _first_occurrences_in_ranges(ordinals: np.ndarray, starts: np.ndarray, ends: np.ndarray, limit: int) -> np.ndarray:
    """Return the first ``limit`` distinct values of ``ordinals[starts[i]:ends[i]]``, range after range."""
    # A posting list has no duplicates (the writer removes them, and the index checksum
    # covers the file), so its first ``limit`` ordinals include all that the cap can still
    # admit. Duplicates are removed only once the lists read so far could fill the pool,
    # which in a large corpus is often after the first list.
    ends = np.minimum(ends, starts + limit)
    pool = np.empty(0, np.int64)
    pending: list[np.ndarray] = []
    pending_count = 0
    for start, end in zip(starts.tolist(), ends.tolist()):
        pending.append(ordinals[start:end])
        pending_count += end - start
        if len(pool) + pending_count >= limit:
            pool = _first_occurrences(np.concatenate([pool, *pending]).astype(np.int64))
            pending, pending_count = [], 0
            if len(pool) >= limit:
                break
    if pending:
        pool = _first_occurrences(np.concatenate([pool, *pending]).astype(np.int64))
    return pool[:limit]


def _first_occurrences(ordinals: np.ndarray) -> np.ndarray:
    """Drop repeated ordinals, keeping each one's first position."""
    _, first = np.unique(ordinals, return_index=True)
    return ordinals[np.sort(first)]


def _entry_parents(child_count: np.ndarray) -> np.ndarray:
    """Return the node whose child list contains each entry of the flat child list."""
    return np.repeat(np.arange(len(child_count)), child_count)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _array(buffer: memoryview, dtype: np.dtype, path: Path) -> np.ndarray:
    """View an LMDB value as an array, copied only when the map does not align it for ``dtype``."""
    if len(buffer) % dtype.itemsize:
        raise IndexFormatError(f"Trie {path} has an array of {len(buffer)} bytes, not a multiple of {dtype.itemsize}")
    array = np.frombuffer(buffer, dtype=dtype)
    return array if array.flags.aligned else array.copy()


def _check_prefix_table(path: Path, levels: int, nodes_per_level: list[int], codes: np.ndarray, counts: np.ndarray) -> PrefixTable:
    if len(nodes_per_level) != levels or len(counts) != sum(nodes_per_level) or int(counts.sum()) != len(codes):
        raise IndexFormatError(f"Trie {path} is inconsistent: {len(counts)} nodes and {len(codes)} children for nodes per level {nodes_per_level}")
    # A trie has one root and at least one node per level, or no node at all.
    if len(counts) and (nodes_per_level[0] != 1 or min(nodes_per_level) < 1):
        raise IndexFormatError(f"Trie {path} is inconsistent: nodes per level {nodes_per_level}")
    if len(counts) and (counts < 1).any():
        raise IndexFormatError(f"Trie {path} has a prefix without children")
    first_child = np.cumsum(counts) - counts
    boundaries = np.cumsum([0] + nodes_per_level)
    # Key order lists parents before children. With one root, the children of level l's
    # nodes must then be exactly level l+1's nodes, in order.
    for level in range(levels - 1):
        if int(counts[boundaries[level] : boundaries[level + 1]].sum()) != nodes_per_level[level + 1]:
            raise IndexFormatError(f"Trie {path} is inconsistent: level {level} lists children that have no entry")
    parents = _entry_parents(counts)
    if np.any((codes[1:] <= codes[:-1]) & (parents[1:] == parents[:-1])):
        raise IndexFormatError(f"Trie {path} has a child list that is not sorted and distinct")
    return PrefixTable(codes=codes, first_child=first_child, child_count=counts, nodes_per_level=list(nodes_per_level))
