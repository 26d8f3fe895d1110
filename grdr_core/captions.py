"""Training captions: read CSV, JSONL or Parquet files and match them to indexed videos."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from grdr_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

CAPTION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass
class CaptionReport:
    """What happened to every row of a caption file; ``rows = used + the skipped counts``."""

    rows: int = 0
    used: int = 0
    unknown_video: int = 0  # video_id of no indexed video (unknown, ambiguous, or a failed file)
    empty: int = 0  # null, empty or whitespace-only caption (or null embedding)
    duplicate: int = 0  # same video_id and caption (or embedding) as an earlier row
    matched_without_extension: int = 0  # rows whose id matched an indexed id minus its extension
    videos_with_captions: int = 0
    unknown_examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"{self.rows} caption rows: {self.used} used for {self.videos_with_captions} videos, "
            f"{self.unknown_video} with a video_id not in the index, {self.empty} empty, {self.duplicate} duplicates"
        )
        if self.matched_without_extension:
            text += f"; {self.matched_without_extension} matched an indexed id without its file extension"
        if self.unknown_examples:
            text += f" (unknown ids include {', '.join(repr(x) for x in self.unknown_examples)})"
        return text


@dataclass
class CaptionSet:
    """Captions matched to index ordinals; exactly one of ``texts`` and ``embeddings`` is set."""

    ordinals: np.ndarray  # (M,) int64 ordinals of the captioned videos
    texts: list[str] | None
    embeddings: np.ndarray | None  # (M, D) float32, L2-normalised
    report: CaptionReport


def read_table(path: Path, required: list[str]) -> pa.Table:
    """Read a CSV, JSONL or Parquet file and check that it has the ``required`` columns."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Caption file not found: {path}")
    kind = CAPTION_FORMATS.get(path.suffix.lower())
    if kind is None:
        hint = " (a .json file must be converted to JSON Lines: one object per line, named .jsonl)" if path.suffix.lower() == ".json" else ""
        raise InvalidInputError(f"Unsupported caption file type {path.suffix!r} for {path}; use one of {sorted(CAPTION_FORMATS)}{hint}")
    try:
        if kind == "csv":
            # Keep ids as strings even when they look like numbers.
            options = pa_csv.ConvertOptions(column_types={name: pa.string() for name in required if name != "embedding"})
            table = pa_csv.read_csv(path, convert_options=options)
        elif kind == "jsonl":
            table = pa_json.read_json(path)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"Cannot parse {path} as {kind}: {exc}") from exc

    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise InvalidInputError(f"{path} is missing column(s) {missing}; it has {table.column_names}, and needs {required}")
    return table


def _id_resolver(index_ids: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
    exact = {str(video_id): ordinal for ordinal, video_id in enumerate(index_ids)}
    stems: dict[str, int] = {}
    ambiguous: set[str] = set()
    for video_id, ordinal in exact.items():
        stem = str(PurePosixPath(video_id).with_suffix(""))
        if stem in stems:
            ambiguous.add(stem)
        stems[stem] = ordinal
    for stem in ambiguous:
        del stems[stem]
    return exact, stems


def match_captions(path: Path, index_ids: np.ndarray) -> CaptionSet:
    """Read captions (``video_id``, ``caption``) and match them to ``index_ids`` (by ordinal).

    A caption's id matches an indexed id exactly or, failing that, an indexed id without
    its file extension when only one indexed file has that stem (``clip`` matches
    ``clip.mp4``). Unknown ids, empty captions and duplicates are counted, not fatal.
    """
    table = read_table(path, ["video_id", "caption"])
    video_ids = table["video_id"].cast(pa.string()).to_pylist()
    captions = table["caption"].cast(pa.string()).to_pylist()
    exact, stems = _id_resolver(index_ids)

    report = CaptionReport(rows=len(video_ids))
    ordinals: list[int] = []
    texts: list[str] = []
    seen: set[tuple[int, str]] = set()
    for video_id, caption in zip(video_ids, captions):
        ordinal = _resolve(video_id, exact, stems, report)
        if ordinal is None:
            continue
        if caption is None or not caption.strip():
            report.empty += 1
            continue
        caption = caption.strip()
        if (ordinal, caption) in seen:
            report.duplicate += 1
            continue
        seen.add((ordinal, caption))
        ordinals.append(ordinal)
        texts.append(caption)
    return _finish(report, ordinals, texts=texts, embeddings=None)


def match_caption_embeddings(path: Path, index_ids: np.ndarray) -> CaptionSet:
    """Read precomputed caption embeddings (Parquet ``video_id``, ``embedding``) and match them."""
    table = read_table(path, ["video_id", "embedding"])
    video_ids = table["video_id"].cast(pa.string()).to_pylist()
    column = table["embedding"]
    exact, stems = _id_resolver(index_ids)

    report = CaptionReport(rows=len(video_ids))
    ordinals: list[int] = []
    rows: list[np.ndarray] = []
    seen: set[tuple[int, bytes]] = set()
    dim: int | None = None
    for video_id, value in zip(video_ids, column.to_pylist()):
        ordinal = _resolve(video_id, exact, stems, report)
        if ordinal is None:
            continue
        if value is None or len(value) == 0 or any(v is None for v in value):
            report.empty += 1
            continue
        vector = np.asarray(value, dtype=np.float32)
        if dim is None:
            dim = len(vector)
        elif len(vector) != dim:
            raise InvalidInputError(f"{path}: embedding of {video_id!r} has {len(vector)} values, earlier rows have {dim}")
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            report.empty += 1
            continue
        key = (ordinal, vector.tobytes())
        if key in seen:
            report.duplicate += 1
            continue
        seen.add(key)
        ordinals.append(ordinal)
        rows.append(vector)
    embeddings = np.stack(rows) if rows else np.zeros((0, dim or 0), np.float32)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return _finish(report, ordinals, texts=None, embeddings=embeddings)


def _resolve(video_id: str | None, exact: dict[str, int], stems: dict[str, int], report: CaptionReport) -> int | None:
    if video_id is not None:
        if video_id in exact:
            return exact[video_id]
        if video_id in stems:
            report.matched_without_extension += 1
            return stems[video_id]
    report.unknown_video += 1
    if len(report.unknown_examples) < 3 and str(video_id) not in report.unknown_examples:
        report.unknown_examples.append(str(video_id))
    return None


def _finish(report: CaptionReport, ordinals: list[int], texts: list[str] | None, embeddings: np.ndarray | None) -> CaptionSet:
    report.used = len(ordinals)
    report.videos_with_captions = len(set(ordinals))
    logger.info("Captions: %s", report.describe())
    if report.used == 0:
        raise InvalidInputError(f"No usable captions: {report.describe()}")
    return CaptionSet(ordinals=np.asarray(ordinals, dtype=np.int64), texts=texts, embeddings=embeddings, report=report)
