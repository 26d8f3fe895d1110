"""Precomputed video embeddings: open, validate and read Parquet or ``.npy`` feature files.

A feature file has one row per video, a ``video_id`` and its embedding:

- Parquet: columns ``video_id`` (string) and ``embedding`` (list or fixed-size list of
  float16, float32 or float64). Other columns are ignored.
- ``.npy``: a 2-D float16, float32 or float64 array of shape ``(rows, dim)``. Its ids
  come from a UTF-8 text file with one id per line, where line i names row i. The
  default ids file is ``<name>.ids.txt`` beside ``<name>.npy``.

Rows are numbered from 0 in messages. Problems of the whole file raise
``InvalidInputError``: an unsupported type, no rows, a null, empty or duplicate
``video_id``, or embeddings of different lengths. A problem of one embedding (null,
empty, null elements, NaN or infinite values, all zeros) does not stop the read. The
row's entry in ``FeatureBatch.errors`` states what is wrong, and the build records the row
as failed in the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from grdr_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

FEATURE_FORMATS = {".parquet": "parquet", ".npy": "npy"}
IDS_SUFFIX = ".ids.txt"
# Rows per batch: 8192 rows of 1024 float32 values are 32 MiB.
DEFAULT_BATCH_ROWS = 8192
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# Duplicate ids listed in an error message.
MAX_LISTED_ROWS = 3


@dataclass(frozen=True)
class FeatureBatch:
    """Consecutive rows of a feature file."""

    first_row: int  # file row of the batch's first row
    video_ids: list[str]
    embeddings: np.ndarray  # (n, dim) float32 as stored, not normalised; rows with an error are zeros
    errors: list[str | None]  # per row: None, or why the embedding is invalid


@dataclass(frozen=True)
class FeatureFile:
    """An opened feature file whose ids and shape have been validated."""

    path: Path
    format: str  # "parquet" or "npy"
    ids_path: Path | None  # the ids file of a .npy file
    dim: int
    video_ids: pa.Array  # string, one per row, unique and non-empty

    @property
    def rows(self) -> int:
        return len(self.video_ids)

    def describe(self) -> dict[str, object]:
        """Return the file's description for ``index.json``."""
        return {
            "path": str(self.path),
            "format": self.format,
            "ids_path": str(self.ids_path) if self.ids_path else None,
            "rows": self.rows,
            "dim": self.dim,
        }

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[FeatureBatch]:
        """Yield every row in file order, ``batch_rows`` rows at a time."""
        if batch_rows < 1:
            raise InvalidInputError(f"batch_rows must be >= 1, got {batch_rows}")
        if self.format == "npy":
            yield from self._npy_batches(batch_rows)
        else:
            yield from self._parquet_batches(batch_rows)

    def _npy_batches(self, batch_rows: int) -> Iterator[FeatureBatch]:
        array = _load_npy(self.path)
        for start in range(0, len(array), batch_rows):
            # float64 values beyond the float32 range become inf and are reported as invalid rows.
            with np.errstate(over="ignore"):
                # A copy, never a view: the memory map is read-only and invalid rows are zeroed.
                block = np.array(array[start : start + batch_rows], dtype=np.float32)
            errors = embedding_errors(block)
            yield self._batch(start, block, errors)

    def _parquet_batches(self, batch_rows: int) -> Iterator[FeatureBatch]:
        start = 0
        for record_batch in _open_parquet(self.path).iter_batches(batch_size=batch_rows, columns=["embedding"]):
            column = record_batch.column(0)
            block, errors = self._list_block(column, start)
            yield self._batch(start, block, errors)
            start += len(column)

    def _batch(self, start: int, block: np.ndarray, errors: list[str | None]) -> FeatureBatch:
        ids = self.video_ids.slice(start, len(block)).to_pylist()
        block[[i for i, error in enumerate(errors) if error is not None]] = 0.0
        return FeatureBatch(first_row=start, video_ids=ids, embeddings=block, errors=errors)

    def _list_block(self, column: pa.Array, start: int) -> tuple[np.ndarray, list[str | None]]:
        """Convert a list column to an ``(n, dim)`` float32 block and per-row errors."""
        n = len(column)
        present = column.is_valid().to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(present & (lengths != 0) & (lengths != self.dim))
        if len(wrong):
            row = start + int(wrong[0])
            raise InvalidInputError(
                f"{self.path}: row {row} (video_id {self.video_ids[row].as_py()!r}) has an embedding of "
                f"{lengths[wrong[0]]} values, but earlier rows have {self.dim}; every embedding must have the same dimension"
            )

        usable = present & (lengths == self.dim)
        values = pc.filter(column, pa.array(usable)).flatten()
        has_null = np.zeros(n, dtype=bool)
        if values.null_count:
            has_null[usable] = values.is_null().to_numpy(zero_copy_only=False).reshape(-1, self.dim).any(axis=1)
        block = np.zeros((n, self.dim), dtype=np.float32)
        with np.errstate(over="ignore"):
            block[usable] = values.to_numpy(zero_copy_only=False).reshape(-1, self.dim).astype(np.float32)

        errors = embedding_errors(block)
        for i in np.flatnonzero(~usable | has_null):
            if not present[i]:
                errors[i] = "embedding is null"
            elif lengths[i] == 0:
                errors[i] = "embedding is empty"
            else:
                errors[i] = "embedding has null values"
        return block, errors


def embedding_errors(block: np.ndarray) -> list[str | None]:
    """Return, for each row of an ``(n, dim)`` float32 block, None or why it cannot be indexed.

    A row is invalid when it has a NaN or infinite value or is all zeros, because an
    all-zero vector has no direction to compare with a query.
    """
    finite = np.isfinite(block).all(axis=1)
    nonzero = np.any(block != 0, axis=1)
    errors: list[str | None] = [None] * len(block)
    for i in np.flatnonzero(~finite):
        errors[i] = "embedding has NaN or infinite values"
    for i in np.flatnonzero(finite & ~nonzero):
        errors[i] = "embedding is all zeros"
    return errors


def open_feature_file(path: str | Path, ids_path: str | Path | None = None) -> FeatureFile:
    """Open a Parquet or ``.npy`` feature file and validate its ids, type and dimension.

    ``ids_path`` names the ids file of a ``.npy`` file, default ``<name>.ids.txt``
    beside it. It must be None for Parquet, whose ids are in its ``video_id`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Feature file not found: {path}")
    kind = FEATURE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(f"Unsupported feature file type {path.suffix!r} for {path}; use one of {sorted(FEATURE_FORMATS)}")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"Feature file {path} is empty (0 bytes)")

    if kind == "npy":
        features = _open_npy(path, Path(ids_path) if ids_path is not None else default_ids_path(path))
    else:
        if ids_path is not None:
            raise InvalidInputError(f"An ids file applies only to .npy features; {path} is Parquet and has its own video_id column")
        features = _open_parquet_features(path)
    logger.info("Feature file %s: %d rows of %d dimensions", path, features.rows, features.dim)
    return features


def default_ids_path(npy_path: Path) -> Path:
    """Return ``<name>.ids.txt`` beside ``<name>.npy``."""
    return npy_path.with_name(npy_path.stem + IDS_SUFFIX)


def check_video_ids(ids: pa.Array, source: str) -> None:
    """Raise ``InvalidInputError`` unless every id is a non-empty string that occurs once."""
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True).to_numpy(zero_copy_only=False)
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        raise InvalidInputError(
            f"{source}: row {row} has a {'null' if ids[row].as_py() is None else 'blank'} video_id "
            f"({int(blank.sum())} rows do); every row needs a non-empty, unique video_id"
        )

    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = int(np.flatnonzero(pc.is_in(ids, value_set=repeated).to_numpy(zero_copy_only=False))[0])
        value = ids[first].as_py()
        rows = np.flatnonzero(pc.equal(ids, value).to_numpy(zero_copy_only=False))[:MAX_LISTED_ROWS]
        raise InvalidInputError(
            f"{source}: video_id {value!r} appears in rows {', '.join(str(r) for r in rows)} "
            f"({len(repeated)} ids appear more than once); video ids must be unique, so remove or rename the duplicates"
        )


def _open_npy(path: Path, ids_path: Path) -> FeatureFile:
    array = _load_npy(path)
    if array.ndim != 2:
        raise InvalidInputError(f"{path} contains an array of shape {array.shape}; it must be 2-D: one row of values per video")
    if array.dtype not in FLOAT_DTYPES:
        raise InvalidInputError(f"{path} contains {array.dtype} values; embeddings must be float16, float32 or float64")
    rows, dim = array.shape
    if rows == 0 or dim == 0:
        raise InvalidInputError(f"{path} contains an array of shape {array.shape}; it needs at least one row and one column")

    ids = pa.array(_read_ids_file(ids_path, path), pa.string())
    if len(ids) != rows:
        raise InvalidInputError(
            f"{ids_path} has {len(ids)} ids but {path} has {rows} rows; the ids file needs one id per line, line i naming row i"
        )
    check_video_ids(ids, str(ids_path))
    return FeatureFile(path=path.resolve(), format="npy", ids_path=ids_path.resolve(), dim=dim, video_ids=ids)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InvalidInputError(f"Cannot read {path} as .npy: {exc} (save a 2-D float array with numpy.save)") from exc
    except OSError as exc:
        raise InvalidInputError(f"Cannot read {path} as .npy: {exc}") from exc


def _read_ids_file(ids_path: Path, npy_path: Path) -> list[str]:
    if not ids_path.is_file():
        raise InvalidInputError(
            f"Ids file not found: {ids_path}; a .npy feature file needs its video ids in a text file, one per line, "
            f"given with --ids or named {default_ids_path(npy_path).name} beside {npy_path.name}"
        )
    try:
        text = ids_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"Ids file {ids_path} is not valid UTF-8: {exc}") from exc
    # Split on newlines only: str.splitlines also splits on characters that may occur in ids.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"Cannot read {path} as Parquet: {exc}") from exc


def _open_parquet_features(path: Path) -> FeatureFile:
    parquet = _open_parquet(path)
    schema = parquet.schema_arrow
    missing = [name for name in ("video_id", "embedding") if name not in schema.names]
    if missing:
        raise InvalidInputError(f"{path} is missing column(s) {missing}; it has {schema.names}, and needs ['video_id', 'embedding']")
    id_type = schema.field("video_id").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or pa.types.is_string_view(id_type)):
        raise InvalidInputError(f"{path}: column video_id has type {id_type}; it must be string, so cast the ids to strings when writing the file")
    embedding_type = schema.field("embedding").type
    if not (pa.types.is_list(embedding_type) or pa.types.is_large_list(embedding_type) or pa.types.is_fixed_size_list(embedding_type)):
        raise InvalidInputError(f"{path}: column embedding has type {embedding_type}; it must be a list of float16, float32 or float64")
    if not pa.types.is_floating(embedding_type.value_type):
        raise InvalidInputError(
            f"{path}: column embedding contains {embedding_type.value_type} values; embeddings must be float16, float32 or float64"
        )
    if parquet.metadata.num_rows == 0:
        raise InvalidInputError(f"{path} has no rows")

    ids = parquet.read(columns=["video_id"]).column(0).combine_chunks().cast(pa.string())
    check_video_ids(ids, str(path))
    dim = embedding_type.list_size if pa.types.is_fixed_size_list(embedding_type) else _first_list_length(parquet, path)
    if dim < 1:
        raise InvalidInputError(f"{path}: column embedding has fixed-size lists of {dim} values; embeddings need at least one value")
    return FeatureFile(path=path.resolve(), format="parquet", ids_path=None, dim=dim, video_ids=ids)


def _first_list_length(parquet: pq.ParquetFile, path: Path) -> int:
    """Return the length of the first non-null, non-empty embedding, reading only as far as it."""
    for batch in parquet.iter_batches(batch_size=1024, columns=["embedding"]):
        lengths = pc.list_value_length(batch.column(0)).fill_null(0).to_numpy(zero_copy_only=False)
        nonempty = np.flatnonzero(lengths)
        if len(nonempty):
            return int(lengths[nonempty[0]])
    raise InvalidInputError(f"{path}: every embedding is null or empty, so there is nothing to index")
