"""Embedding shard store: float16 records addressed by ordinal, read through memory maps."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_schemas.shards import DEFAULT_RECORDS_PER_SHARD, SHARD_DTYPE, shard_file_name

logger = logging.getLogger(__name__)


class ShardWriter:
    """Append embeddings in ordinal order; each full shard is written once as an ``.npy`` file.

    Memory use is one shard buffer (``records_per_shard * dim * 2`` bytes).
    """

    def __init__(self, directory: Path, dim: int, records_per_shard: int = DEFAULT_RECORDS_PER_SHARD) -> None:
        if dim < 1:
            raise InvalidInputError(f"Embedding dimension must be >= 1, got {dim}")
        if records_per_shard < 1:
            raise InvalidInputError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.records_per_shard = records_per_shard
        self._buffer = np.empty((records_per_shard, dim), dtype=SHARD_DTYPE)
        self._filled = 0
        self._shards_written = 0
        self._flushed_records = 0
        self._closed = False

    @property
    def count(self) -> int:
        return self._flushed_records + self._filled

    def append(self, embeddings: np.ndarray) -> range:
        """Append ``(n, dim)`` embeddings and return the ordinals they were given."""
        if self._closed:
            raise InvalidInputError("Cannot append to a closed shard writer")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInputError(f"Expected embeddings of shape (n, {self.dim}), got {embeddings.shape}")
        first = self.count
        start = 0
        while start < len(embeddings):
            take = min(len(embeddings) - start, self.records_per_shard - self._filled)
            self._buffer[self._filled : self._filled + take] = embeddings[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.records_per_shard:
                self._flush()
        return range(first, first + len(embeddings))

    def close(self) -> int:
        """Write the last partial shard and return the number of records stored."""
        if self._filled:
            self._flush()
        self._closed = True
        return self.count

    def _flush(self) -> None:
        path = self.directory / shard_file_name(self._shards_written)
        np.save(path, self._buffer[: self._filled])
        self._shards_written += 1
        self._flushed_records += self._filled
        self._filled = 0


class ShardReader:
    """Random access to stored embeddings; only the pages of requested rows are read."""

    def __init__(self, directory: Path, count: int, dim: int, records_per_shard: int) -> None:
        self.directory = Path(directory)
        self.count = count
        self.dim = dim
        self.records_per_shard = records_per_shard
        num_shards = -(-count // records_per_shard) if count else 0
        self._shards: list[np.ndarray] = []
        for shard in range(num_shards):
            path = self.directory / shard_file_name(shard)
            expected = min(records_per_shard, count - shard * records_per_shard)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"Cannot open embedding shard {path}: {exc}") from exc
            if array.shape != (expected, dim) or array.dtype != SHARD_DTYPE:
                raise IndexFormatError(
                    f"Embedding shard {path} has shape {array.shape} and dtype {array.dtype}, "
                    f"expected {(expected, dim)} and {SHARD_DTYPE}"
                )
            self._shards.append(array)
        # The same rows as float16 bit patterns, for compiled kernels (numba has no float16).
        self._bits = [np.asarray(shard).view(np.uint16) for shard in self._shards]

    def __len__(self) -> int:
        return self.count

    def get(self, ordinals: np.ndarray | list[int]) -> np.ndarray:
        """Return ``(len(ordinals), dim)`` float32 embeddings in the order given."""
        ordinals = self._checked(ordinals)
        out = np.empty((len(ordinals), self.dim), dtype=np.float32)
        for shard, positions, rows in self._rows_by_shard(ordinals):
            out[positions] = self._shards[shard][rows]
        return out

    def dot(self, ordinals: np.ndarray, query: np.ndarray, kernel: Callable[..., None] | None = None) -> np.ndarray:
        """Return the float32 dot product of each of ``ordinals``' embeddings with ``query``.

        ``kernel`` is ``recall_kernels.float16_row_dots``, which reads the float16 rows
        without converting them first; without it, ``get`` converts the rows with NumPy.
        """
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.shape != (self.dim,):
            raise InvalidInputError(f"Expected a query of shape ({self.dim},), got {query.shape}")
        if kernel is None:
            return self.get(ordinals) @ query
        ordinals = self._checked(ordinals)
        out = np.empty(len(ordinals), dtype=np.float32)
        for shard, positions, rows in self._rows_by_shard(ordinals):
            scores = np.empty(len(rows), dtype=np.float32)
            kernel(self._bits[shard], rows, query, scores)
            out[positions] = scores
        return out

    def _checked(self, ordinals: np.ndarray | list[int]) -> np.ndarray:
        """Return ``ordinals`` as int64, raising ``InvalidInputError`` for any outside the store."""
        ordinals = np.asarray(ordinals, dtype=np.int64)
        if ordinals.size and (ordinals.min() < 0 or ordinals.max() >= self.count):
            raise InvalidInputError(f"Ordinals must lie in [0, {self.count}), got range [{ordinals.min()}, {ordinals.max()}]")
        return ordinals

    def _rows_by_shard(self, ordinals: np.ndarray) -> Iterator[tuple[int, np.ndarray | slice, np.ndarray]]:
        """Yield, per shard that ``ordinals`` touch, the shard, the positions in ``ordinals`` and the rows in the shard."""
        if len(self._shards) == 1:
            yield 0, slice(None), ordinals
            return
        shard_of = ordinals // self.records_per_shard
        row_of = ordinals % self.records_per_shard
        for shard in np.unique(shard_of).tolist():
            positions = np.flatnonzero(shard_of == shard)
            yield shard, positions, row_of[positions]

    def iter_blocks(self, block_size: int = 65536):
        """Yield ``(first_ordinal, float32 block)`` covering every record in order."""
        for shard_index, shard in enumerate(self._shards):
            base = shard_index * self.records_per_shard
            for start in range(0, len(shard), block_size):
                yield base + start, np.asarray(shard[start : start + block_size], dtype=np.float32)
