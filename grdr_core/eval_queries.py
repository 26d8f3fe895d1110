"""Evaluation queries: read a CSV, JSONL or Parquet file of queries and their ground-truth videos.

A queries file has a ``video_id`` column (the ground truth) and exactly one of ``text``
and ``embedding`` (a list of floats, Parquet or JSONL only). Rows that share an optional
``query_id`` form one query with several ground truths; without ``query_id`` every row
is its own query. In JSONL, ``video_id`` may also be a list of strings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from grdr_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

QUERY_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass
class QueryFileReport:
    """Counts of the rows and queries read from a queries file, and of unmatched ground-truth ids."""

    rows: int = 0
    queries: int = 0  # distinct queries in the file
    evaluated: int = 0  # queries with at least one ground truth in the index
    skipped_unknown: int = 0  # queries none of whose ground truths is in the index
    unknown_ids: int = 0  # ground-truth ids (one per query and id) not found in the index
    matched_without_extension: int = 0  # ids that matched an indexed id minus its file extension
    unknown_examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"{self.rows} rows, {self.queries} queries: {self.evaluated} evaluated, "
            f"{self.skipped_unknown} skipped because no ground-truth video is in the index; "
            f"{self.unknown_ids} ground-truth ids not in the index"
        )
        if self.matched_without_extension:
            text += f", {self.matched_without_extension} matched an indexed id without its file extension"
        if self.unknown_examples:
            text += f" (unknown ids include {', '.join(repr(x) for x in self.unknown_examples)})"
        return text


@dataclass
class QuerySet:
    """Queries with their ground truth as index ordinals; exactly one of ``texts`` and ``embeddings`` is set."""

    query_ids: list[str]
    truth: list[np.ndarray]  # per query, sorted distinct int64 ordinals, never empty
    texts: list[str] | None
    embeddings: np.ndarray | None  # (Q, D) float32, L2-normalised
    report: QueryFileReport

    @property
    def kind(self) -> str:
        return "text" if self.texts is not None else "embedding"

    def __len__(self) -> int:
        return len(self.query_ids)


def read_query_table(path: Path, require_truth: bool = True) -> pa.Table:
    """Read a queries file and check its columns; ``require_truth`` requires ``video_id``."""
    path = Path(path)
    check_query_file(path)
    kind = QUERY_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(f"Unsupported queries file type {path.suffix!r} for {path}; use one of {sorted(QUERY_FORMATS)}")
    try:
        if kind == "csv":
            # Keep ids and texts as strings even when they look like numbers.
            options = pa_csv.ConvertOptions(column_types={name: pa.string() for name in ("video_id", "query_id", "text")})
            table = pa_csv.read_csv(path, convert_options=options)
        elif kind == "jsonl":
            table = pa_json.read_json(path)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        hint = ""
        if kind == "jsonl" and "changed from" in str(exc):
            hint = "; give each column one type on every line (video_id: a string or a list of strings, written [\"id\"] for a single id)"
        raise InvalidInputError(f"Cannot parse {path} as {kind}: {exc}{hint}") from exc

    columns = table.column_names
    if require_truth and "video_id" not in columns:
        raise InvalidInputError(f"{path} is missing column 'video_id' (the ground truth); it has {columns}")
    if ("text" in columns) == ("embedding" in columns):
        raise InvalidInputError(f"{path} needs exactly one of the columns 'text' and 'embedding'; it has {columns}")
    if kind == "csv" and "embedding" in columns:
        raise InvalidInputError(f"{path}: a CSV file cannot hold an 'embedding' list column; write embedding queries as Parquet or JSONL")
    return table


def check_query_file(path: Path) -> None:
    """Raise ``InvalidInputError`` unless ``path`` is an existing regular file."""
    if not path.exists():
        raise InvalidInputError(f"Queries file not found: {path}")
    if not path.is_file():
        raise InvalidInputError(f"Queries file {path} is not a regular file")


def string_column(path: Path, table: pa.Table, name: str) -> list[str | None]:
    """Return column ``name`` as Python strings, raising ``InvalidInputError`` when it does not hold strings or numbers."""
    column = table[name]
    readable = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_dictionary, pa.types.is_null)
    if not any(is_readable(column.type) for is_readable in readable):
        raise InvalidInputError(f"{path}: column '{name}' must hold strings, got {column.type}")
    try:
        return column.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidInputError(f"{path}: column '{name}' cannot be read as strings: {exc}") from exc


def _ground_truth_lists(path: Path, column: pa.ChunkedArray) -> list[list[str | None]]:
    try:
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            return [value or [] for value in column.cast(pa.list_(pa.string())).to_pylist()]
        if pa.types.is_struct(column.type) or pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            raise InvalidInputError(f"{path}: column 'video_id' must hold strings or lists of strings, got {column.type}")
        return [[value] for value in column.cast(pa.string()).to_pylist()]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidInputError(f"{path}: column 'video_id' must hold strings or lists of strings, got {column.type}: {exc}") from exc


def query_values(path: Path, table: pa.Table, dim: int) -> tuple[list[str] | None, list[np.ndarray] | None]:
    """Return the non-empty text or unit embedding of every row."""
    if "text" in table.column_names:
        texts = string_column(path, table, "text")
        for row, text in enumerate(texts):
            if text is None or not text.strip():
                raise InvalidInputError(f"{path}: the text of row {row + 1} is empty")
        return [text.strip() for text in texts], None

    column = table["embedding"]
    list_types = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if not any(is_list(column.type) for is_list in list_types) or not (
        pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)
    ):
        raise InvalidInputError(f"{path}: column 'embedding' must hold lists of numbers, got {column.type}")
    vectors = []
    for row, value in enumerate(column.to_pylist()):
        if value is None:
            raise InvalidInputError(f"{path}: the embedding of row {row + 1} is null")
        if any(v is None for v in value):
            raise InvalidInputError(f"{path}: the embedding of row {row + 1} contains null values")
        if len(value) != dim:
            raise InvalidInputError(f"{path}: the embedding of row {row + 1} has {len(value)} values; the index stores {dim}-dimensional embeddings")
        vector = np.asarray(value, dtype=np.float64)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidInputError(f"{path}: the embedding of row {row + 1} is zero or not finite")
        vectors.append((vector / norm).astype(np.float32))
    return None, vectors


def query_id_column(path: Path, table: pa.Table) -> list[str]:
    """Return each row's ``query_id``, or its 1-based row number when the file has no such column."""
    if "query_id" not in table.column_names:
        return [str(row + 1) for row in range(table.num_rows)]
    query_ids = string_column(path, table, "query_id")
    for row, query_id in enumerate(query_ids):
        if query_id is None or not query_id.strip():
            raise InvalidInputError(f"{path}: query_id of row {row + 1} is empty; give every row a query_id or drop the column")
    return query_ids


def _group_rows(query_ids: list[str]) -> list[list[int]]:
    """Return the row numbers of each query, queries in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for row, query_id in enumerate(query_ids):
        groups.setdefault(query_id, []).append(row)
    return list(groups.values())


class _IdResolver:
    """Match ids to ordinals exactly or, failing that, by a unique stem (``clip`` matches ``clip.mp4``)."""

    def __init__(self, index_ids: Sequence[str]) -> None:
        self.exact = {str(video_id): ordinal for ordinal, video_id in enumerate(index_ids)}
        self.stems: dict[str, int] = {}
        ambiguous: set[str] = set()
        for video_id, ordinal in self.exact.items():
            stem = str(PurePosixPath(video_id).with_suffix(""))
            if stem in self.stems:
                ambiguous.add(stem)
            self.stems[stem] = ordinal
        for stem in ambiguous:
            del self.stems[stem]

    def resolve(self, video_id: str | None, report: QueryFileReport) -> int | None:
        if video_id is not None and video_id in self.exact:
            return self.exact[video_id]
        if video_id is not None and video_id in self.stems:
            report.matched_without_extension += 1
            return self.stems[video_id]
        report.unknown_ids += 1
        if len(report.unknown_examples) < 3 and str(video_id) not in report.unknown_examples:
            report.unknown_examples.append(str(video_id))
        return None


def read_queries(path: Path, index_ids: Sequence[str], dim: int) -> QuerySet:
    """Read a queries file and match its ground truth to ``index_ids`` (by ordinal).

    Embedding queries must have ``dim`` values and are L2-normalised. Rows of one
    ``query_id`` must carry the same text or embedding. Ground-truth ids that are not in
    the index are counted; a query with none in the index is counted and skipped.
    """
    path = Path(path)
    table = read_query_table(path)
    texts, vectors = query_values(path, table, dim)
    truth_ids = _ground_truth_lists(path, table["video_id"])
    query_ids = query_id_column(path, table)
    resolver = _IdResolver(index_ids)
    report = QueryFileReport(rows=table.num_rows)

    kept_ids: list[str] = []
    kept_truth: list[np.ndarray] = []
    kept_rows: list[int] = []
    for rows in _group_rows(query_ids):
        first = rows[0]
        query_id = query_ids[first]
        _check_same_query(path, query_id, rows, texts, vectors)
        ids = dict.fromkeys(video_id for row in rows for video_id in truth_ids[row])  # distinct, in order
        ordinals = {resolver.resolve(video_id, report) for video_id in ids} - {None}
        report.queries += 1
        if not ordinals:
            report.skipped_unknown += 1
            continue
        kept_ids.append(query_id)
        kept_truth.append(np.array(sorted(ordinals), dtype=np.int64))
        kept_rows.append(first)
    report.evaluated = len(kept_ids)

    logger.info("Queries: %s", report.describe())
    if not kept_ids:
        raise InvalidInputError(f"No query of {path} has a ground-truth video in the index: {report.describe()}")
    kept_texts = [texts[row] for row in kept_rows] if texts is not None else None
    embeddings = np.stack([vectors[row] for row in kept_rows]) if vectors is not None else None
    return QuerySet(query_ids=kept_ids, truth=kept_truth, texts=kept_texts, embeddings=embeddings, report=report)


def _check_same_query(path: Path, query_id: str, rows: list[int], texts: list[str] | None, vectors: list[np.ndarray] | None) -> None:
    first = rows[0]
    for row in rows[1:]:
        if texts is not None and texts[row] != texts[first]:
            raise InvalidInputError(
                f"{path}: rows {first + 1} and {row + 1} share query_id {query_id!r} but have different texts "
                f"({texts[first]!r} and {texts[row]!r}); give each query its own query_id"
            )
        if vectors is not None and not np.array_equal(vectors[row], vectors[first]):
            raise InvalidInputError(
                f"{path}: rows {first + 1} and {row + 1} share query_id {query_id!r} but have different embeddings; "
                "give each query its own query_id"
            )
