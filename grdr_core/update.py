"""Incremental update of an index: re-index only what changed in the input and publish a new version.

The update compares the files under the input root with the manifest of the index's
current version by ``video_id`` and fingerprint. New and changed files go through the
build's map stage (``grdr_core.build.run_map_stage``, on any engine). Unchanged files
keep their manifest row and their stored embedding, and files that are gone are left
out. The merged version lists the files in discovery order with fresh ordinals. Its
semantic IDs come from the tokenizer of the current version (``model/`` is hard-linked
into the new version), or from a refitted one with ``retrain``. The version is
published with ``expected_current`` set to the version the update started from, so it
never replaces a newer version, and readers see the old or the new version whole.

All work goes to ``.<index name>.grdr-update`` beside the index (``grdr_schemas.update``),
so an update that is killed resumes when run again with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from grdr_core import remote
from grdr_core.build import (
    MANIFEST_ROWS_PER_PART,
    MapRunner,
    check_local_work_dir,
    location,
    remove_partial_ids,
    remove_work,
    resume_plan,
    run_map_stage,
    write_plan,
)
from grdr_core.decode import DecodeConfig
from grdr_core.discovery import VIDEO_EXTENSIONS, VideoFile, discover_videos
from grdr_core.errors import BuildIncompleteError, IndexFormatError, InvalidInputError, NothingIndexedError
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.id_stats import id_statistics
from grdr_core.index import publish, write_header
from grdr_core.manifest import ManifestWriter, read_manifest
from grdr_core.output import IndexOutput
from grdr_core.quantize import TOKENIZER_NAME as BASELINE_TOKENIZER, ResidualKMeansTokenizer
from grdr_core.semantic_ids import assign_baseline_ids
from grdr_core.shards import ShardReader, ShardWriter
from grdr_core.stages import MapSettings, ProgressCallback, UnitResult, checkpoint, write_json_atomic
from grdr_core.train_index import link_tree, train_index
from grdr_core.trie import write_trie
from grdr_core.verify import check_on_open, read_header
from grdr_core.versions import DEFAULT_KEEP, is_index_root, next_version_name, read_current, resolve_version
from grdr_schemas.build import BUILD_WORK_VERSION, DEFAULT_FILES_PER_UNIT, WorkLayout
from grdr_schemas.index import PRECOMPUTED_PREFIX, IndexLayout, IndexRoot, version_name, version_number
from grdr_schemas.manifest import MANIFEST_SCHEMA, VideoStatus
from grdr_schemas.update import UPDATE_CHANGES_SCHEMA, UPDATE_WORK_VERSION, Change, changes_path, update_work_dir_for

logger = logging.getLogger(__name__)

# Files merged per step: their old embeddings are read from the old shards in one call.
MERGE_CHUNK = 4096


@dataclass(frozen=True)
class UpdateConfig:
    """Settings of one update of the index root ``index_dir``, a local path or a URL.

    At a URL the update runs in a local copy and uploads the new version (see
    ``grdr_core.output``). ``input_root`` defaults to the input root recorded in the
    index, and ``model`` to the encoder recorded there; another ``model`` must have the
    same weights.
    ``decode_overrides`` replaces fields of the decode settings recorded in the index
    (``DecodeConfig`` field names). ``retrain`` refits the tokenizer: the residual
    k-means of a baseline index, or the trained model of a trained index, which then
    needs exactly one of ``captions`` and ``caption_embeddings``.
    """

    index_dir: Path | str
    input_root: Path | str | None = None
    model: str | None = None
    device: str = "cpu"  # torch device of the image encoder
    batch_size: int = 64  # frames per encoder forward pass
    decode_overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = max(1, (os.cpu_count() or 1))
    files_per_unit: int = DEFAULT_FILES_PER_UNIT
    work_dir: Path | None = None  # default: .<index name>.grdr-update beside the index
    keep_versions: int = DEFAULT_KEEP
    retrain: bool = False
    captions: Path | None = None
    caption_embeddings: Path | None = None
    train_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")
        if self.files_per_unit < 1:
            raise InvalidInputError(f"files_per_unit must be >= 1, got {self.files_per_unit}")
        if self.keep_versions < 1:
            raise InvalidInputError(f"keep_versions must be >= 1, got {self.keep_versions}")
        unknown = set(self.decode_overrides) - {f.name for f in fields(DecodeConfig)} | ({"short_side"} & set(self.decode_overrides))
        if unknown:
            raise InvalidInputError(f"Unknown or fixed decode settings {sorted(unknown)}; short_side always comes from the encoder")
        if self.captions is not None and self.caption_embeddings is not None:
            raise InvalidInputError("Give at most one of --captions and --caption-embeddings")
        if (self.captions is not None or self.caption_embeddings is not None) and not self.retrain:
            raise InvalidInputError("--captions and --caption-embeddings apply only with --retrain")
        check_local_work_dir(self.work_dir)


@dataclass
class UpdateSummary:
    """Counts and outcome of one update. ``version`` is None when the index was up to date."""

    index_dir: Path | str  # a URL when the index is at a URL
    base_version: str
    version: str | None
    added: int
    changed: int
    removed: int
    unchanged: int
    failed: int  # added or changed files that failed to index in this update
    discovered: int = 0
    indexed: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)  # every file of the new version
    seconds: float = 0.0
    units: int = 0
    units_resumed: int = 0
    retrained: bool = False
    trained_version: str | None = None  # the version a retrain of a trained index published

    @property
    def up_to_date(self) -> bool:
        return self.version is None

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
        }

    def describe(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.counts().items())
        if self.up_to_date:
            return f"up to date at version {self.base_version}: {counts}"
        text = f"version {self.version} from {self.base_version}: {counts}; {self.indexed} of {self.discovered} files indexed"
        if self.retrained:
            text += ", tokenizer refitted"
        if self.trained_version:
            text += f", retrained model published as {self.trained_version}"
        if self.units_resumed:
            text += f"; resumed with {self.units_resumed} of {self.units} units already done"
        return text + f", in {self.seconds:.1f} s"


def update_index(
    config: UpdateConfig,
    encoder: ClipEncoder | None = None,
    progress: ProgressCallback | None = None,
    on_pending: Callable[[int], None] | None = None,
    map_runner: MapRunner | None = None,
    *,
    on_published: Callable[[str], None] | None = None,
    first_version: str | None = None,
) -> UpdateSummary:
    """Update the index at ``config.index_dir`` to the files under the input root, publishing a new version.

    Publishes nothing and returns a summary with ``up_to_date`` set when no file was
    added, changed or removed. ``progress`` is called once per decoded file, so only
    new and changed files reach it. Raises ``InvalidInputError`` when the encoder's
    weights differ from the index's, and ``NothingIndexedError`` when the new version
    would hold no video. ``on_published`` is called with the name of each version this
    update publishes, before its work folder is deleted, so a rerun after a kill calls it
    again. ``first_version`` is the lowest version name the update may publish.
    """
    if remote.is_remote(config.index_dir):
        return _update_at_url(config, encoder, progress, on_pending, map_runner)
    started = time.monotonic()
    root = Path(config.index_dir).absolute()
    if not is_index_root(root):
        resolve_version(root)  # raises the reader's error, which names the rollback that repairs a lost CURRENT
        raise InvalidInputError(f"{root} is not a grdr index root (no CURRENT file and versions/ folder, nor an index.json)")
    work = WorkLayout(Path(config.work_dir).absolute() if config.work_dir else update_work_dir_for(root))

    # The index's current version, unless a killed run of this update already published its version.
    current = read_current(root) or version_name(1)
    plan = _read_plan_or_none(work)
    base_name = current
    if plan is not None and plan.get("version") == current:
        if _published_by(root, current, plan):
            base_name = plan["settings"].get("base_version", current)
        else:
            logger.info("Version %s of %s was published by another update; this update starts from it", current, root)
    header = read_header(IndexLayout(resolve_version(root)))
    tokenizer_kind = _tokenizer_kind(root, header)

    encoder_config = EncoderConfig(model=config.model or header["encoder"]["name"], device=config.device, batch_size=config.batch_size)
    encoder = encoder or ClipEncoder(encoder_config)
    _check_encoder(root, header, encoder)
    decode_config = _decode_config(header, config.decode_overrides, encoder.short_side)
    input_root = config.input_root if config.input_root is not None else header.get("input_root")
    if input_root is None:
        raise InvalidInputError(f"Index {root} records no input root; pass the input folder or URL")
    if config.retrain and tokenizer_kind == "trained" and config.captions is None and config.caption_embeddings is None:
        raise InvalidInputError(
            f"Index {root} has a trained model; --retrain retrains it on the updated index and needs "
            "--captions FILE or --caption-embeddings FILE (or update without --retrain to keep the model)"
        )
    records_per_shard = int(header["shards"]["records_per_shard"])
    settings = {
        "work_version": BUILD_WORK_VERSION,
        "update_work_version": UPDATE_WORK_VERSION,
        "index": str(root),
        "base_version": base_name,
        "input_root": location(input_root),
        "encoder": {"name": header["encoder"]["name"], "checksum": encoder.checksum, "batch_size": encoder_config.batch_size},
        "decode": asdict(decode_config),
        "records_per_shard": records_per_shard,
        "files_per_unit": config.files_per_unit,
        "retrain": config.retrain,
    }

    units = resume_plan(work, settings)
    if units is None:
        base_dir = _version_dir(root, base_name)
        files = discover_videos(input_root)
        if not files:
            raise NothingIndexedError(
                f"No video files found under {input_root} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))}); "
                "an update never publishes an empty version"
            )
        if location(input_root) != header.get("input_root"):
            logger.warning("Updating %s from %s, but its files were indexed from %s", root, location(input_root), header.get("input_root"))
        changes, todo = _compare(files, read_manifest(IndexLayout(base_dir).manifest_dir))
        counts = Counter(changes["change"].to_pylist())
        unchanged = not (counts[Change.ADDED.value] or counts[Change.CHANGED.value] or counts[Change.REMOVED.value])
        # With --retrain and no change, a baseline index still gets a new version with a
        # refitted k-means. A trained model is retrained on the current version directly.
        if unchanged and not (config.retrain and tokenizer_kind == "baseline"):
            summary = _summary(root, base_name, None, counts, [])
            summary.discovered, summary.indexed = len(files), int(header["counts"]["indexed"])
            summary.status_counts = dict(header["counts"]["by_status"])
            if config.retrain:
                summary.trained_version = summary.version = _retrain_model(root, base_name, config)
                if on_published is not None:
                    on_published(summary.version)
            summary.seconds = time.monotonic() - started
            logger.info("Index %s: %s", root, summary.describe())
            return summary
        work.root.mkdir(parents=True, exist_ok=True)
        pq.write_table(changes, changes_path(work.root), compression="zstd")
        # A single-version index becomes version 1 when the first new version is published.
        version = next_version_name(root) if read_current(root) is not None else version_name(2)
        if first_version is not None:
            version = max(version, first_version, key=version_number)
        units = write_plan(work, settings, todo, config.files_per_unit, version, plan_id=uuid.uuid4().hex)

    map_settings = MapSettings(str(work.root), encoder_config, decode_config, decode_workers=config.workers)
    results, units_run = run_map_stage(work, units, map_settings, encoder, progress, on_pending, map_runner)
    changes = pq.read_table(changes_path(work.root), schema=UPDATE_CHANGES_SCHEMA)
    version = json.loads(work.plan.read_text())["version"]
    summary = _summary(root, base_name, version, Counter(changes["change"].to_pylist()), results)
    summary.units, summary.units_resumed = len(units), len(units) - units_run

    layout = IndexLayout(work.staging)
    merged = _merge(work, root, base_name, changes, results, encoder.dim, records_per_shard)
    summary.indexed, summary.discovered = merged["embeddings"], merged["rows"]
    summary.status_counts = merged["status_counts"]
    if summary.indexed == 0:
        shutil.rmtree(work.root)
        raise NothingIndexedError(f"No video of {input_root} would be indexed, so nothing was published: {summary.describe()}")
    tokenizer_header = _assign_ids(work, root, base_name, layout, tokenizer_kind, summary.indexed, encoder.dim, records_per_shard, config.retrain)
    summary.retrained = config.retrain and tokenizer_kind == "baseline"
    if work.staging.exists():
        plan_id = json.loads(work.plan.read_text()).get("plan_id")
        write_header(layout, _header(header, input_root, decode_config, tokenizer_header, summary, records_per_shard, encoder.dim, plan_id))
        checkpoint("before-publish")
    publish(work.staging, root, overwrite=True, keep=config.keep_versions, version=version, expected_current=base_name)
    checkpoint("after-publish")
    if on_published is not None:
        on_published(version)
    if config.retrain and tokenizer_kind == "trained":
        summary.trained_version = _retrain_model(root, version, config)
        if on_published is not None:
            on_published(summary.trained_version)
    remove_work(work)

    summary.seconds = time.monotonic() - started
    logger.info("Update of %s finished: %s", root, summary.describe())
    return summary


def _update_at_url(
    config: UpdateConfig,
    encoder: ClipEncoder | None,
    progress: ProgressCallback | None,
    on_pending: Callable[[int], None] | None,
    map_runner: MapRunner | None,
) -> UpdateSummary:
    """Update the index at a URL in a local copy of its current version, then upload what it published."""
    started = time.monotonic()
    output = IndexOutput.of(config.index_dir)
    output.pull(config.keep_versions)
    # Each version is uploaded before the work folder goes, so a rerun after a kill
    # finds the work and uploads again what did not reach the URL.
    summary = update_index(
        replace(config, index_dir=output.root),
        encoder,
        progress,
        on_pending,
        map_runner,
        on_published=lambda version: output.finish(version, config.keep_versions),
        first_version=output.next_version(),
    )
    if summary.up_to_date:
        output.prune(config.keep_versions)  # a killed run may have left old versions
    summary.index_dir = output.url
    summary.seconds = time.monotonic() - started
    return summary


def _published_by(root: Path, version: str, plan: dict[str, Any]) -> bool:
    """Return whether ``version`` of ``root`` was published from ``plan``, not by another update of the same name."""
    try:
        header = read_header(IndexLayout(IndexRoot(root).version_dir(version)))
    except IndexFormatError:
        return False
    update = header.get("update") if isinstance(header.get("update"), dict) else {}
    return plan.get("plan_id") is None or update.get("plan_id") == plan.get("plan_id")


def _read_plan_or_none(work: WorkLayout) -> dict[str, Any] | None:
    try:
        plan = json.loads(work.plan.read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and isinstance(plan.get("settings"), dict) else None


def _version_dir(root: Path, name: str) -> Path:
    """Return the directory of version ``name`` of ``root``; a single-version index is its own version 1."""
    directory = IndexRoot(root).version_dir(name)
    if directory.is_dir():
        return directory
    if read_current(root) is None and name == version_name(1):
        return root
    raise InvalidInputError(f"Version {name} of index {root} no longer exists; remove the work directory and run the update again")


def _tokenizer_kind(root: Path, header: dict[str, Any]) -> str:
    """Return "baseline" or "trained" for the tokenizer recorded in ``header``; reject any other."""
    tokenizer = header.get("tokenizer") or {}
    if str(header.get("encoder", {}).get("checksum", "")).startswith(PRECOMPUTED_PREFIX):
        raise InvalidInputError(
            f"Index {root} was built from precomputed embeddings, which update cannot recompute from videos; "
            "rebuild it with `grdr-index build --features FILE --overwrite`"
        )
    if tokenizer.get("retriever"):
        return "trained"
    if tokenizer.get("name") == BASELINE_TOKENIZER:
        return "baseline"
    raise IndexFormatError(f"Index {root} has tokenizer {tokenizer.get('name')!r}, which update does not know how to apply")


def _check_encoder(root: Path, header: dict[str, Any], encoder: ClipEncoder) -> None:
    """Reject an encoder whose weights differ from the ones that produced the stored embeddings."""
    recorded = header["encoder"]
    if encoder.checksum != recorded.get("checksum"):
        raise InvalidInputError(
            f"Encoder {encoder.name!r} has weights {encoder.checksum}, but index {root} was built with "
            f"{recorded.get('name')!r} ({recorded.get('checksum')}); pass --model with that encoder, "
            "or rebuild the index with `grdr-index build --overwrite` to change encoders"
        )
    if encoder.name != recorded.get("name"):
        logger.info("Encoder %s has the weights of the recorded encoder %s; the header keeps the recorded name", encoder.name, recorded.get("name"))


def _decode_config(header: dict[str, Any], overrides: dict[str, Any], short_side: int) -> DecodeConfig:
    known = {f.name for f in fields(DecodeConfig)}
    recorded = {key: value for key, value in header.get("decode", {}).items() if key in known}
    decode = replace(DecodeConfig(**recorded), **overrides, short_side=short_side)
    if overrides:
        # NOTE: unchanged files keep embeddings made with the recorded settings, and the
        # new header records only the new ones.
        logger.warning("Decoding new and changed files with %s instead of the recorded settings", overrides)
    return decode


def _compare(files: list[VideoFile], old_manifest: pa.Table) -> tuple[pa.Table, list[VideoFile]]:
    """Return the changes table (discovered files in order, then removed ones) and the files to decode."""
    old = dict(zip(old_manifest["video_id"].to_pylist(), old_manifest["fingerprint"].to_pylist()))
    rows: list[dict[str, Any]] = []
    todo: list[VideoFile] = []
    for file in files:
        if file.video_id not in old:
            change = Change.ADDED
        elif old[file.video_id] != file.fingerprint:
            change = Change.CHANGED
        else:
            change = Change.UNCHANGED
        if change is not Change.UNCHANGED:
            todo.append(file)
        rows.append(
            {
                "video_id": file.video_id,
                "change": change.value,
                "uri": file.uri,
                "uri_bytes": file.uri_bytes,
                "size_bytes": file.size_bytes,
                "fingerprint": file.fingerprint,
            }
        )
    discovered = {file.video_id for file in files}
    for row in old_manifest.select(["video_id", "uri", "uri_bytes", "size_bytes", "fingerprint"]).to_pylist():
        if row["video_id"] not in discovered:
            rows.append({**row, "change": Change.REMOVED.value})
    return pa.Table.from_pylist(rows, schema=UPDATE_CHANGES_SCHEMA), todo


def _summary(root: Path, base: str, version: str | None, counts: Counter[str], results: list[UnitResult]) -> UpdateSummary:
    processed = sum((Counter(result.status_counts) for result in results), Counter())
    failed = sum(n for status, n in processed.items() if status != VideoStatus.OK.value)
    return UpdateSummary(
        index_dir=root,
        base_version=base,
        version=version,
        added=counts[Change.ADDED.value],
        changed=counts[Change.CHANGED.value],
        removed=counts[Change.REMOVED.value],
        unchanged=counts[Change.UNCHANGED.value],
        failed=failed,
    )


def _unit_rows(work: WorkLayout, results: list[UnitResult], dim: int) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Yield the map stage's manifest rows in unit order, each with its embedding (None when not ok)."""
    for result in results:
        embeddings = np.load(work.unit_embeddings(result.number), mmap_mode="r")
        rows = pq.read_table(work.unit_manifest(result.number), schema=MANIFEST_SCHEMA).to_pylist()
        ok = sum(row["status"] == VideoStatus.OK.value for row in rows)
        if embeddings.shape != (ok, dim) or len(rows) != result.files:
            raise BuildIncompleteError(
                f"Unit {result.number} in {work.root} contains {len(rows)} rows and embeddings of shape "
                f"{embeddings.shape} for {result.files} files, {ok} of them ok; remove the unit's "
                "folder and run the same command again"
            )
        for row in rows:
            yield row, (np.asarray(embeddings[row["ordinal"]]) if row["ordinal"] is not None else None)


def _merge(
    work: WorkLayout,
    root: Path,
    base_name: str,
    changes: pa.Table,
    results: list[UnitResult],
    dim: int,
    records_per_shard: int,
) -> dict[str, Any]:
    """Write the staging version's shards and manifest: every discovered file in order, ordinals anew.

    Added and changed files take their row and embedding from the units, and unchanged
    ones from the old version. A ``merged.json`` marker makes a resumed update skip this.
    """
    if work.merged_marker.is_file():
        return json.loads(work.merged_marker.read_text())
    if work.staging.exists():
        shutil.rmtree(work.staging)  # left by a merge that was killed part way
    # Only the shards and the manifest are read: opening the old trie would fail while a
    # reader in this process has it open (LMDB allows one open per file and process).
    base = IndexLayout(_version_dir(root, base_name))
    base_header = read_header(base)
    check_on_open(base, base_header)
    store = base_header["shards"]
    old_shards = ShardReader(base.shards_dir, store["count"], store["dim"], store["records_per_shard"])
    if old_shards.dim != dim:
        raise InvalidInputError(f"Index {root} stores {old_shards.dim}-dimensional embeddings, the encoder makes {dim}")
    old_manifest = read_manifest(base.manifest_dir)
    old_rows = {video_id: position for position, video_id in enumerate(old_manifest["video_id"].to_pylist())}
    layout = IndexLayout(work.staging)
    shards = ShardWriter(layout.shards_dir, dim, records_per_shard)
    manifest = ManifestWriter(layout.manifest_dir, rows_per_part=MANIFEST_ROWS_PER_PART)
    fresh = _unit_rows(work, results, dim)
    kept = changes.filter(pc.not_equal(changes["change"], Change.REMOVED.value))
    status_counts: Counter[str] = Counter()
    chunks = range(0, len(kept), MERGE_CHUNK)
    for step, start in enumerate(chunks):
        chunk = kept.slice(start, MERGE_CHUNK).to_pylist()
        reused = _reused_rows(old_shards, old_manifest, old_rows, [entry for entry in chunk if entry["change"] == Change.UNCHANGED.value])
        rows, block = [], []
        for entry in chunk:
            if entry["change"] == Change.UNCHANGED.value:
                row, embedding = reused.pop(entry["video_id"])
            else:
                row, embedding = next(fresh)
                if row["video_id"] != entry["video_id"]:
                    raise BuildIncompleteError(f"Units in {work.root} list {row['video_id']} where the plan has {entry['video_id']}; remove the work directory and run again")
            row["ordinal"] = None
            if embedding is not None:
                row["ordinal"] = shards.count + len(block)
                block.append(embedding)
            rows.append(row)
            status_counts[row["status"]] += 1
        if block:
            shards.append(np.stack(block))
        for row in rows:
            manifest.add(row)
        if step == len(chunks) // 2:
            checkpoint("mid-merge")
    if next(fresh, None) is not None:
        raise BuildIncompleteError(f"Units in {work.root} hold more files than the plan; remove the work directory and run again")
    merged = {"embeddings": shards.close(), "rows": manifest.close(), "status_counts": dict(status_counts)}
    write_json_atomic(work.merged_marker, merged)
    return merged


def _reused_rows(
    old_shards: ShardReader, old_manifest: pa.Table, old_rows: dict[str, int], entries: list[dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], np.ndarray | None]]:
    """Return the old manifest row and stored embedding of each unchanged file, with its location as discovered now."""
    if not entries:
        return {}
    rows = old_manifest.take([old_rows[entry["video_id"]] for entry in entries]).to_pylist()
    ordinals = [row["ordinal"] for row in rows if row["ordinal"] is not None]
    embeddings = iter(old_shards.get(np.asarray(ordinals, dtype=np.int64)) if ordinals else [])
    reused = {}
    for entry, row in zip(entries, rows, strict=True):
        # The fingerprint matched, so only the path can differ (a moved input root).
        row.update(uri=entry["uri"], uri_bytes=entry["uri_bytes"], size_bytes=entry["size_bytes"])
        reused[entry["video_id"]] = (row, next(embeddings) if row["ordinal"] is not None else None)
    return reused


def _assign_ids(
    work: WorkLayout,
    root: Path,
    base_name: str,
    layout: IndexLayout,
    kind: str,
    indexed: int,
    dim: int,
    records_per_shard: int,
    retrain: bool,
) -> dict[str, Any]:
    """Write the trie of the merged version with the old tokenizer (or a refitted baseline) and its ``model/``."""
    if work.ids_marker.is_file():
        return json.loads(work.ids_marker.read_text())
    remove_partial_ids(layout)
    base = IndexLayout(_version_dir(root, base_name))
    old_header = read_header(base)["tokenizer"]
    shards = ShardReader(layout.shards_dir, indexed, dim, records_per_shard)
    if kind == "baseline":
        tokenizer = ResidualKMeansTokenizer.load(base.model_dir)
        if retrain:
            tokenizer_header = assign_baseline_ids(shards, tokenizer.config, layout)
        else:
            codes = np.concatenate([tokenizer.encode(block) for _, block in shards.iter_blocks()])
            write_trie(layout.trie, codes, tokenizer.codebook_sizes)
            link_tree(base.model_dir, layout.model_dir)
            tokenizer_header = {**old_header, "id_statistics": id_statistics(codes, tokenizer.codebook_sizes)}
    else:
        from grdr_core.training import TrainedModel

        model = TrainedModel.load(base.model_dir)
        # NOTE: all embeddings are held in memory as float32 (4 * N * D bytes), as in training.
        codes = model.assign(shards.get(np.arange(indexed)))
        write_trie(layout.trie, codes, model.codebook_sizes)
        link_tree(base.model_dir, layout.model_dir)
        tokenizer_header = {**old_header, "id_statistics": id_statistics(codes, model.codebook_sizes)}
    checkpoint("ids-written")
    write_json_atomic(work.ids_marker, tokenizer_header)
    return tokenizer_header


def _header(
    old: dict[str, Any],
    input_root: Path | str,
    decode_config: DecodeConfig,
    tokenizer_header: dict[str, Any],
    summary: UpdateSummary,
    records_per_shard: int,
    dim: int,
    plan_id: str | None,
) -> dict[str, Any]:
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_root": location(input_root),
        "encoder": old["encoder"],
        "decode": asdict(decode_config),
        "tokenizer": tokenizer_header,
        "counts": {
            "discovered": summary.discovered,
            "indexed": summary.indexed,
            "failed": summary.discovered - summary.indexed,
            "by_status": summary.status_counts,
        },
        "shards": {"count": summary.indexed, "dim": dim, "records_per_shard": records_per_shard, "dtype": "float16"},
        "update": {"base_version": summary.base_version, "plan_id": plan_id, "retrained": summary.retrained, **summary.counts()},
    }


def _retrain_model(root: Path, version: str, config: UpdateConfig) -> str | None:
    """Retrain the trained model of ``root`` on the version just published, with its recorded training settings."""
    from grdr_core.training import TrainedModel

    train_config = TrainedModel.load(IndexLayout(_version_dir(root, version)).model_dir).config
    train_config = replace(train_config, device=config.train_device)
    trained = train_index(
        root, train_config, captions=config.captions, caption_embeddings=config.caption_embeddings, keep=config.keep_versions
    )
    return trained.version
