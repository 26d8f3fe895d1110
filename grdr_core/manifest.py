"""Parquet manifest parts: one row per discovered file, written in discovery order."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grdr_core.errors import IndexFormatError
from grdr_schemas.manifest import MANIFEST_SCHEMA

logger = logging.getLogger(__name__)

DEFAULT_ROWS_PER_PART = 100_000


class ManifestWriter:
    """Buffer rows and write them as ``part-NNNNN.parquet`` files of at most ``rows_per_part`` rows."""

    def __init__(self, directory: Path, rows_per_part: int = DEFAULT_ROWS_PER_PART) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows_per_part = rows_per_part
        self._rows: list[dict[str, Any]] = []
        self._parts = 0
        self.rows_written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_part:
            self._flush()

    def close(self) -> int:
        """Write buffered rows and return the total number of rows written."""
        if self._rows or self._parts == 0:
            self._flush()
        return self.rows_written

    def _flush(self) -> None:
        # from_pylist validates every row against the schema (types and non-null columns).
        table = pa.Table.from_pylist(self._rows, schema=MANIFEST_SCHEMA)
        pq.write_table(table, self.directory / f"part-{self._parts:05d}.parquet", compression="zstd")
        self._parts += 1
        self.rows_written += len(self._rows)
        self._rows = []


def read_manifest(directory: Path, columns: list[str] | None = None) -> pa.Table:
    """Read all manifest parts of an index, in part order."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        raise IndexFormatError(f"No manifest parts found in {directory}")
    tables = [pq.read_table(p, columns=columns, schema=MANIFEST_SCHEMA) for p in parts]
    return pa.concat_tables(tables)
