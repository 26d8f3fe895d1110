"""Query files for batch search: one query per row, as text or as a precomputed embedding.

A table file (CSV, JSONL or Parquet) has exactly one of the columns ``text`` and
``embedding`` (a list of floats, Parquet or JSONL only). An optional ``query_id`` column
names each query in the results, which otherwise name it by its 1-based row. Other columns,
such as the ``video_id`` of an evaluation queries file, are ignored. A ``.npy`` file is a
``(queries, dim)`` floating-point matrix of embeddings, whose ids are the row numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grdr_core.errors import InvalidInputError
from grdr_core.eval_queries import QUERY_FORMATS, check_query_file, query_id_column, query_values, read_query_table
from grdr_core.query_checks import check_query_text

SEARCH_QUERY_FORMATS = sorted([*QUERY_FORMATS, ".npy"])


@dataclass
class QueryBatch:
    """Queries read from a file; exactly one of ``texts`` and ``embeddings`` is set."""

    query_ids: list[str]
    texts: list[str] | None
    embeddings: np.ndarray | None  # (Q, dim) float32, L2-normalised

    def __len__(self) -> int:
        return len(self.query_ids)


def read_search_queries(path: Path, dim: int) -> QueryBatch:
    """Read a query file for ``grdr-index query`` or ``search``; embeddings must have ``dim`` values.

    Raises ``InvalidInputError`` naming the file and row for a missing file, an unknown
    format, a missing or empty query, an empty ``query_id``, an embedding of the wrong
    width, or one that is zero or not finite.
    """
    path = Path(path)
    if path.suffix.lower() not in SEARCH_QUERY_FORMATS:
        check_query_file(path)
        raise InvalidInputError(f"Unsupported queries file type {path.suffix!r} for {path}; use one of {SEARCH_QUERY_FORMATS}")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, dim)
    table = read_query_table(path, require_truth=False)
    if table.num_rows == 0:
        raise InvalidInputError(f"{path} has no query rows")
    texts, vectors = query_values(path, table, dim)
    if texts is not None:
        for row, text in enumerate(texts):
            try:
                check_query_text(text, row + 1)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}: {exc} (query numbers are 1-based rows)") from exc
    embeddings = np.stack(vectors).astype(np.float32) if vectors is not None else None
    return QueryBatch(query_id_column(path, table), texts, embeddings)


def _read_npy(path: Path, dim: int) -> QueryBatch:
    check_query_file(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise InvalidInputError(f"Cannot read {path} as a NumPy array: {exc}") from exc
    if not isinstance(matrix, np.ndarray):  # an .npz archive
        matrix.close()
        raise InvalidInputError(f"{path} is an .npz archive; save the query embeddings as one array with numpy.save")
    if matrix.ndim >= 1 and matrix.shape[0] == 0:
        raise InvalidInputError(f"{path} has no query rows")
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise InvalidInputError(f"{path} must contain a 2-D floating-point matrix of query embeddings, got shape {matrix.shape} and dtype {matrix.dtype}")
    if matrix.shape[1] != dim:
        raise InvalidInputError(f"{path} contains {matrix.shape[1]}-dimensional embeddings; the index stores {dim}-dimensional embeddings")
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        rows = ", ".join(str(row + 1) for row in bad[:5].tolist())
        count = "1 row is" if len(bad) == 1 else f"{len(bad)} rows are"
        raise InvalidInputError(f"{path}: the embeddings of {count} zero or not finite (rows {rows}{', ...' if len(bad) > 5 else ''})")
    embeddings = (matrix / norms[:, None]).astype(np.float32)
    return QueryBatch([str(row + 1) for row in range(len(embeddings))], None, embeddings)
