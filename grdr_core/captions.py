"""Training captions: read CSV, JSONL or Parquet files and match them to indexed videos.

Caption files come from many tools, so text is read leniently. A UTF-8 byte-order
mark, CRLF line ends and quoted values with newlines are accepted. Text that is not
valid UTF-8 is repaired and counted instead of failing the whole file. Bytes
that do not decode as UTF-8 are read as cp1252, the usual Windows encoding. Lone
UTF-16 surrogates, which JSON escapes such as ``\\ud800`` and CESU-8 bytes produce,
become U+FFFD.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from grdr_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

CAPTION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Examples of unknown ids and of uncaptioned videos kept for the report.
MAX_EXAMPLES = 3
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class CaptionReport:
    """Counts of what happened to the rows of a caption file; ``rows = used + unknown_video + empty + duplicate``."""

    rows: int = 0
    used: int = 0
    unknown_video: int = 0  # video_id of no indexed video (unknown, ambiguous, or a failed file)
    empty: int = 0  # null, empty or whitespace-only caption (or null embedding)
    duplicate: int = 0  # same video_id and caption (or embedding) as an earlier row
    matched_without_extension: int = 0  # rows whose id matched an indexed id minus its extension
    videos_with_captions: int = 0
    videos_without_captions: int = 0  # indexed videos that no used caption names
    # Videos with more than one distinct caption. Each caption is kept as its own
    # training pair, because one video matches several descriptions.
    videos_with_several_captions: int = 0
    repaired_text: int = 0  # rows with text that was not valid UTF-8 (read as cp1252, lone surrogates replaced)
    # Used captions longer than the text encoder's context, which encoding truncates.
    # Training sets it after loading the encoder. It stays 0 for precomputed embeddings.
    truncated: int = 0
    unknown_examples: list[str] = field(default_factory=list)
    uncaptioned_examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"{self.rows} caption rows: {self.used} used for {self.videos_with_captions} videos, "
            f"{self.unknown_video} with a video_id not in the index, {self.empty} empty, {self.duplicate} duplicates"
        )
        if self.matched_without_extension:
            text += f"; {self.matched_without_extension} matched an indexed id without its file extension"
        if self.unknown_examples:
            text += f" (unknown ids include {', '.join(repr(x) for x in self.unknown_examples)})"
        if self.videos_with_several_captions:
            text += f"; {self.videos_with_several_captions} videos have several distinct captions, each kept"
        if self.videos_without_captions:
            examples = ", ".join(repr(x) for x in self.uncaptioned_examples)
            text += f"; {self.videos_without_captions} indexed videos have no caption (including {examples})"
        if self.repaired_text:
            text += f"; {self.repaired_text} rows had text that is not valid UTF-8, read as cp1252 or with U+FFFD for lone surrogates"
        if self.truncated:
            text += f"; {self.truncated} captions exceed the text encoder's context and were truncated"
        return text


@dataclass
class CaptionSet:
    """Captions matched to index ordinals; exactly one of ``texts`` and ``embeddings`` is set."""

    ordinals: np.ndarray  # (M,) int64 ordinals of the captioned videos
    texts: list[str] | None
    embeddings: np.ndarray | None  # (M, D) float32, L2-normalised
    report: CaptionReport


def read_table(path: Path, required: list[str]) -> pa.Table:
    """Read a CSV, JSONL or Parquet file and check that it has the ``required`` columns.

    Text columns of CSV and JSONL files come back as binary, undecoded, and
    ``column_texts`` decodes them.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Caption file not found: {path}")
    kind = CAPTION_FORMATS.get(path.suffix.lower())
    if kind is None:
        hint = " (a .json file must be converted to JSON Lines: one object per line, named .jsonl)" if path.suffix.lower() == ".json" else ""
        raise InvalidInputError(f"Unsupported caption file type {path.suffix!r} for {path}; use one of {sorted(CAPTION_FORMATS)}{hint}")
    try:
        if kind == "csv":
            # Binary keeps ids as text even when they look like numbers, and defers
            # decoding so that one row in another encoding does not fail the file.
            options = pa_csv.ConvertOptions(column_types={name: pa.binary() for name in required if name != "embedding"})
            table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(newlines_in_values=True), convert_options=options)
        elif kind == "jsonl":
            table = _read_json_lines(path, required)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"Cannot parse {path} as {kind}: {exc}") from exc

    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise InvalidInputError(f"{path} is missing column(s) {missing}; it has {table.column_names}, and needs {required}")
    return table


def _read_json_lines(path: Path, required: list[str]) -> pa.Table:
    """Read the ``required`` keys of a JSON Lines file; string values come back as undecoded bytes.

    Python's json module parses each line, because Arrow's JSON reader rejects a whole
    file for one lone surrogate escape or one line that is not UTF-8.
    """
    columns: dict[str, list[object]] = {name: [] for name in required}
    seen: set[str] = set()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            if not line.strip():
                continue
            # surrogateescape keeps bytes that are not UTF-8, so column_texts can read them as cp1252.
            try:
                row = json.loads(line.decode("utf-8", errors="surrogateescape"))
            except ValueError as exc:
                raise InvalidInputError(f"Cannot parse line {number} of {path} as JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise InvalidInputError(f"Line {number} of {path} is a JSON {type(row).__name__}, expected an object")
            seen.update(name for name in required if name in row)
            for name in required:
                value = row.get(name)
                columns[name].append(_text_bytes(value) if isinstance(value, str) else value)
    return pa.table({name: pa.array(values) for name, values in columns.items() if name in seen})


def _text_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape; column_texts replaces it
        return text.encode("utf-8", errors="surrogatepass")


def decode_text(raw: bytes) -> tuple[str, bool]:
    """Decode one text value. Returns the text and whether it had to be repaired.

    Valid UTF-8 is returned as is. UTF-8 with lone surrogates (CESU-8) gets U+FFFD in
    their place. Anything else is read as cp1252, with U+FFFD for its five undefined bytes.
    """
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    try:
        return _SURROGATE.sub("\ufffd", raw.decode("utf-8", errors="surrogatepass")), True
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), True


def column_texts(table: pa.Table, name: str) -> tuple[list[str | None], list[bool]]:
    """Return column ``name`` as text (None for nulls) and, per row, whether the text was repaired."""
    column = table[name]
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        raw = column.to_pylist()
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        # Parquet and Arrow files do not validate UTF-8 either, so read the bytes.
        raw = column.cast(pa.binary() if pa.types.is_string(column.type) else pa.large_binary()).to_pylist()
    else:
        return [None if v is None else str(v) for v in column.cast(pa.string()).to_pylist()], [False] * len(column)
    texts: list[str | None] = []
    repaired: list[bool] = []
    for value in raw:
        if value is None:
            texts.append(None)
            repaired.append(False)
            continue
        text, was_repaired = decode_text(value)
        texts.append(text)
        repaired.append(was_repaired)
    return texts, repaired


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
    video_ids, ids_repaired = column_texts(table, "video_id")
    captions, captions_repaired = column_texts(table, "caption")
    exact, stems = _id_resolver(index_ids)

    report = CaptionReport(rows=len(video_ids))
    report.repaired_text = sum(a or b for a, b in zip(ids_repaired, captions_repaired))
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
    return _finish(report, ordinals, index_ids, texts=texts, embeddings=None)


def match_caption_embeddings(path: Path, index_ids: np.ndarray) -> CaptionSet:
    """Read precomputed caption embeddings (Parquet ``video_id``, ``embedding``) and match them."""
    table = read_table(path, ["video_id", "embedding"])
    video_ids, ids_repaired = column_texts(table, "video_id")
    column = table["embedding"]
    exact, stems = _id_resolver(index_ids)

    report = CaptionReport(rows=len(video_ids))
    report.repaired_text = sum(ids_repaired)
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
    return _finish(report, ordinals, index_ids, texts=None, embeddings=embeddings)


def _resolve(video_id: str | None, exact: dict[str, int], stems: dict[str, int], report: CaptionReport) -> int | None:
    if video_id is not None:
        if video_id in exact:
            return exact[video_id]
        if video_id in stems:
            report.matched_without_extension += 1
            return stems[video_id]
    report.unknown_video += 1
    if len(report.unknown_examples) < MAX_EXAMPLES and str(video_id) not in report.unknown_examples:
        report.unknown_examples.append(str(video_id))
    return None


def _finish(
    report: CaptionReport,
    ordinals: list[int],
    index_ids: np.ndarray,
    texts: list[str] | None,
    embeddings: np.ndarray | None,
) -> CaptionSet:
    report.used = len(ordinals)
    counts = np.bincount(np.asarray(ordinals, dtype=np.int64), minlength=len(index_ids))
    report.videos_with_captions = int(np.count_nonzero(counts))
    report.videos_with_several_captions = int(np.count_nonzero(counts > 1))
    uncaptioned = np.flatnonzero(counts == 0)
    report.videos_without_captions = len(uncaptioned)
    report.uncaptioned_examples = [str(index_ids[i]) for i in uncaptioned[:MAX_EXAMPLES]]
    logger.info("Captions: %s", report.describe())
    if report.used == 0:
        raise InvalidInputError(f"No usable captions: {report.describe()}")
    return CaptionSet(ordinals=np.asarray(ordinals, dtype=np.int64), texts=texts, embeddings=embeddings, report=report)
