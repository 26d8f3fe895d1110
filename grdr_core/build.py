"""The index build: plan, map stage (decode and encode units), merge, semantic IDs, publish.

The map stage runs on an engine: the local engine in this process (``grdr_core.stages``),
or Beam or Ray through a ``map_runner`` from ``grdr_pipelines``. Everything before and
after it runs here, in the driver. All work goes to a work directory beside the output
(``grdr_schemas.build``), so a build that is killed resumes when started again with the
same settings, redoing only unfinished units and steps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from grdr_core import remote
from grdr_core.decode import DecodeConfig
from grdr_core.discovery import VIDEO_EXTENSIONS, VideoFile, discover_videos
from grdr_core.errors import BuildIncompleteError, InvalidInputError, NothingIndexedError
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.index import publish, write_header
from grdr_core.manifest import ManifestWriter
from grdr_core.output import IndexOutput
from grdr_core.quantize import QuantizerConfig
from grdr_core.semantic_ids import assign_baseline_ids
from grdr_core.shards import ShardReader, ShardWriter
from grdr_core.stages import (
    MapSettings,
    ProgressCallback,
    UnitResult,
    WorkUnit,
    checkpoint,
    read_unit_result,
    run_local,
    unit_done,
    write_json_atomic,
)
from grdr_core.versions import DEFAULT_KEEP
from grdr_schemas.build import BUILD_FILES_SCHEMA, BUILD_WORK_VERSION, DEFAULT_FILES_PER_UNIT, WorkLayout, work_dir_for
from grdr_schemas.index import IndexLayout
from grdr_schemas.manifest import MANIFEST_SCHEMA, VideoStatus
from grdr_schemas.shards import DEFAULT_RECORDS_PER_SHARD

logger = logging.getLogger(__name__)

# Manifest rows are buffered in memory until a part is written; smaller parts keep the
# merge's memory flat on large corpora (a buffered row is about 0.8 KB).
MANIFEST_ROWS_PER_PART = 10_000

# Runs the map stage of the given units on an engine; each unit must end with its marker.
MapRunner = Callable[[MapSettings, list[WorkUnit]], None]


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one build. ``input_root`` and ``out_dir`` are local paths or fsspec URLs."""

    input_root: Path | str
    out_dir: Path | str
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    workers: int = max(1, (os.cpu_count() or 1))
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
    overwrite: bool = False
    files_per_unit: int = DEFAULT_FILES_PER_UNIT
    # Where unfinished work is kept. By default ``.<out name>.grdr-build`` beside the
    # output, or beside its local copy when the output is a URL.
    work_dir: Path | None = None
    keep_versions: int = DEFAULT_KEEP

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")
        if self.files_per_unit < 1:
            raise InvalidInputError(f"files_per_unit must be >= 1, got {self.files_per_unit}")
        check_local_work_dir(self.work_dir)


def check_local_work_dir(work_dir: Path | str | None) -> None:
    """Reject a work folder given as a URL: units, markers and the staging index are local files."""
    if work_dir is not None and remote.is_remote(work_dir):
        raise InvalidInputError(
            f"The work folder must be a local path (on a cluster, a shared file system mounted on every node), not {work_dir}"
        )


@dataclass
class BuildSummary:
    out_dir: Path | str  # the URL when the index was uploaded
    discovered: int
    indexed: int
    status_counts: dict[str, int]
    seconds: float
    units: int = 0
    units_resumed: int = 0  # units found complete from an earlier, interrupted run

    @property
    def failed(self) -> int:
        return self.discovered - self.indexed

    def describe(self) -> str:
        failures = ", ".join(f"{status}: {n}" for status, n in sorted(self.status_counts.items()) if status != VideoStatus.OK.value)
        rate = self.discovered / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.discovered} files discovered, {self.indexed} indexed, {self.failed} failed"
        if failures:
            text += f" ({failures})"
        text += f" in {self.seconds:.1f} s ({rate:.2f} videos/s)"
        if self.units_resumed:
            text += f"; resumed with {self.units_resumed} of {self.units} units already done"
        return text

    def status_table(self) -> str:
        """Return a plain-text table of files per status, largest count first, with the total."""
        rows = sorted(self.status_counts.items(), key=lambda item: (-item[1], item[0]))
        width = max([len("status"), len("total"), *(len(status) for status, _ in rows)])
        lines = [f"{'status':<{width}}  {'files':>7}"]
        lines += [f"{status:<{width}}  {count:>7}" for status, count in rows]
        lines.append(f"{'total':<{width}}  {sum(self.status_counts.values()):>7}")
        return "\n".join(lines)


def build_index(
    config: BuildConfig,
    encoder: ClipEncoder | None = None,
    progress: ProgressCallback | None = None,
    on_discovered: Callable[[int], None] | None = None,
    map_runner: MapRunner | None = None,
) -> BuildSummary:
    """Build an index of every video under ``config.input_root`` and publish it at ``config.out_dir``.

    Every discovered file gets exactly one manifest row, failed files included. The map
    stage runs on ``map_runner`` (default: the local engine with ``config.workers``
    decoder processes). When the work directory contains an unfinished build with the same
    settings, it is resumed: its file list is kept and only unfinished units and steps
    run. ``on_discovered`` gets the number of files that still need decoding. Raises
    ``NothingIndexedError`` (and publishes nothing) when no video could be indexed.
    """
    started = time.monotonic()
    output = IndexOutput.of(config.out_dir)
    out_dir = output.root
    work = WorkLayout(Path(config.work_dir).resolve() if config.work_dir else work_dir_for(out_dir))
    # The driver loads the encoder too: it checks the model before any work is
    # scheduled, and the header records its checksum.
    encoder = encoder or ClipEncoder(config.encoder)
    decode_config = replace(config.decode, short_side=encoder.short_side)
    settings = _plan_settings(config, decode_config, encoder)

    units = resume_plan(work, settings)
    if units is None:
        output.check(config.overwrite, input_root=config.input_root)
        files = discover_videos(config.input_root)
        if not files:
            raise NothingIndexedError(
                f"No video files found under {config.input_root} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))})"
            )
        version = output.next_version()
        units = write_plan(work, settings, files, config.files_per_unit, version)

    map_settings = MapSettings(str(work.root), config.encoder, decode_config, decode_workers=config.workers)
    results, units_run = run_map_stage(work, units, map_settings, encoder, progress, on_discovered, map_runner)
    status_counts = sum((Counter(result.status_counts) for result in results), Counter())
    discovered = sum(len(unit.files) for unit in units)
    indexed = status_counts.get(VideoStatus.OK.value, 0)
    summary = BuildSummary(
        output.name, discovered, indexed, dict(status_counts), 0.0, units=len(units), units_resumed=len(units) - units_run
    )
    if indexed == 0:
        shutil.rmtree(work.root)
        raise NothingIndexedError(f"No video was indexed: {summary.describe()}")

    layout = IndexLayout(work.staging)
    _merge_units(work, results, encoder.dim, config.records_per_shard)
    tokenizer_header = _assign_ids(work, layout, indexed, encoder.dim, config)
    summary.seconds = time.monotonic() - started
    if work.staging.exists():
        write_header(layout, _header(config, decode_config, encoder, tokenizer_header, summary))
        checkpoint("before-publish")
    # Overwriting was checked when the build was planned. Publishing again with the
    # planned version name only completes a publish that a killed run started.
    version = json.loads(work.plan.read_text())["version"]
    publish(work.staging, out_dir, overwrite=True, keep=config.keep_versions, version=version)
    checkpoint("after-publish")
    output.finish(version, config.keep_versions)
    remove_work(work)

    summary.seconds = time.monotonic() - started
    logger.info("Build finished: %s", summary.describe())
    return summary


def location(path: Path | str) -> str:
    """Return a URL as given, or a local path made absolute, as plans and headers record inputs."""
    return str(path) if remote.is_remote(path) else str(Path(path).resolve())


def _plan_settings(config: BuildConfig, decode_config: DecodeConfig, encoder: ClipEncoder) -> dict[str, Any]:
    """Return the settings that must match for a build to resume another one's work."""
    return {
        "work_version": BUILD_WORK_VERSION,
        "input_root": location(config.input_root),
        "out_dir": location(config.out_dir),
        "encoder": {"name": encoder.name, "checksum": encoder.checksum, "batch_size": config.encoder.batch_size},
        "decode": asdict(decode_config),
        "quantizer": asdict(config.quantizer),
        "records_per_shard": config.records_per_shard,
        "files_per_unit": config.files_per_unit,
    }


def run_map_stage(
    work: WorkLayout,
    units: list[WorkUnit],
    settings: MapSettings,
    encoder: ClipEncoder,
    progress: ProgressCallback | None = None,
    on_pending: Callable[[int], None] | None = None,
    map_runner: MapRunner | None = None,
) -> tuple[list[UnitResult], int]:
    """Run the map stage over the units without a marker; return every unit's result and the count that ran.

    ``on_pending`` gets the number of files that still need decoding. Raises
    ``BuildIncompleteError`` when the engine returns with a unit still unfinished.
    """
    pending = [unit for unit in units if not unit_done(work, unit.number)]
    if on_pending is not None:
        on_pending(sum(len(unit.files) for unit in pending))
    if pending:
        if map_runner is None:
            run_local(settings, pending, encoder=encoder, progress=progress)
        else:
            map_runner(settings, pending)
    unfinished = [unit.number for unit in units if not unit_done(work, unit.number)]
    if unfinished:
        raise BuildIncompleteError(
            f"The map stage left {len(unfinished)} of {len(units)} units unfinished (first: {unfinished[0]}); "
            f"run the same command again to resume from {work.root}"
        )
    return [read_unit_result(work, unit.number) for unit in units], len(pending)


def resume_plan(work: WorkLayout, settings: dict[str, Any]) -> list[WorkUnit] | None:
    """Return the units of an unfinished build with these settings, or None to start afresh.

    Work left by a build with other settings is removed with a log line: it is this
    build's own work directory, and nothing in it can be reused.
    """
    if not work.root.exists():
        return None
    if not work.plan.is_file() and _holds_other_files(work.root):
        # A --work-dir that some other program uses: never delete what grdr did not write.
        raise InvalidInputError(
            f"Work folder {work.root} contains files but no grdr plan.json; choose an empty or new --work-dir"
        )
    try:
        plan = json.loads(work.plan.read_text())
        units = read_units(work) if plan.get("settings") == settings else None
    except (OSError, ValueError, pa.ArrowException) as exc:
        logger.warning("Unreadable work directory %s (%s); starting the build afresh", work.root, exc)
        units = None
    else:
        if units is None:
            logger.warning("Work directory %s belongs to a build with other settings; starting afresh", work.root)
    if units is None:
        shutil.rmtree(work.root)
        return None
    done = sum(unit_done(work, unit.number) for unit in units)
    logger.info("Resuming the build in %s: %d of %d units already done", work.root, done, len(units))
    return units


def _holds_other_files(root: Path) -> bool:
    """Return whether ``root`` contains anything besides what a build writes before its plan."""
    # changes.parquet is what an update writes before its plan.
    return any(entry.name not in ("units", "files.parquet", "changes.parquet") for entry in root.iterdir())


def remove_work(work: WorkLayout) -> None:
    """Delete a finished build's work folder, renaming it first so no rerun resumes a half-deleted one."""
    trash = work.root.with_name(work.root.name + ".done")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(work.root, trash)
    shutil.rmtree(trash)


def write_plan(
    work: WorkLayout,
    settings: dict[str, Any],
    files: list[VideoFile],
    files_per_unit: int,
    version: str,
    plan_id: str | None = None,
) -> list[WorkUnit]:
    """Split ``files`` into units and record them and the settings; ``plan.json`` goes last.

    ``plan_id`` is recorded to tell this plan's published version from another of the same name.
    """
    work.units_dir.mkdir(parents=True, exist_ok=True)
    units = [
        WorkUnit(number, tuple(files[start : start + files_per_unit]))
        for number, start in enumerate(range(0, len(files), files_per_unit))
    ]
    table = pa.table(
        {
            "unit": [unit.number for unit in units for _ in unit.files],
            "video_id": [file.video_id for file in files],
            "uri": [file.uri for file in files],
            "uri_bytes": [file.uri_bytes for file in files],
            "size_bytes": [file.size_bytes for file in files],
            "fingerprint": [file.fingerprint for file in files],
        },
        schema=BUILD_FILES_SCHEMA,
    )
    pq.write_table(table, work.files, compression="zstd")
    plan = {"settings": settings, "units": len(units), "files": len(files), "version": version}
    if plan_id is not None:
        plan["plan_id"] = plan_id
    write_json_atomic(work.plan, plan)
    return units


def read_units(work: WorkLayout) -> list[WorkUnit]:
    plan = json.loads(work.plan.read_text())
    table = pq.read_table(work.files, schema=BUILD_FILES_SCHEMA).to_pylist()
    if len(table) != plan["files"]:
        raise ValueError(f"{work.files} lists {len(table)} files, the plan {plan['files']}")
    grouped: dict[int, list[VideoFile]] = {number: [] for number in range(plan["units"])}
    for row in table:
        raw = row["uri_bytes"]
        grouped[row["unit"]].append(
            VideoFile(
                video_id=row["video_id"],
                uri=row["uri"],
                size_bytes=row["size_bytes"],
                fingerprint=row["fingerprint"],
                path=os.fsdecode(raw) if raw is not None else row["uri"],
                uri_bytes=raw,
            )
        )
    return [WorkUnit(number, tuple(files)) for number, files in grouped.items()]


def _merge_units(work: WorkLayout, results: list[UnitResult], dim: int, records_per_shard: int) -> None:
    """Concatenate the units, in unit order, into the staging index's shards and manifest."""
    if work.merged_marker.is_file():
        return
    if work.staging.exists():
        shutil.rmtree(work.staging)  # left by a merge that was killed part way
    layout = IndexLayout(work.staging)
    shards = ShardWriter(layout.shards_dir, dim, records_per_shard)
    manifest = ManifestWriter(layout.manifest_dir, rows_per_part=MANIFEST_ROWS_PER_PART)
    for position, result in enumerate(results):
        embeddings = np.load(work.unit_embeddings(result.number))
        rows = pq.read_table(work.unit_manifest(result.number), schema=MANIFEST_SCHEMA).to_pylist()
        ok = [row for row in rows if row["status"] == VideoStatus.OK.value]
        if embeddings.shape != (len(ok), dim) or len(rows) != result.files:
            raise BuildIncompleteError(
                f"Unit {result.number} in {work.root} contains {len(rows)} rows and embeddings of shape "
                f"{embeddings.shape} for {result.files} files, {len(ok)} of them ok; remove the unit's "
                "folder and run the same command again"
            )
        base = shards.append(embeddings).start
        for row in rows:
            if row["ordinal"] is not None:
                row["ordinal"] += base
            manifest.add(row)
        if position == len(results) // 2:
            checkpoint("mid-merge")
    stored = shards.close()
    rows_written = manifest.close()
    write_json_atomic(work.merged_marker, {"embeddings": stored, "rows": rows_written})


def remove_partial_ids(layout: IndexLayout) -> None:
    """Delete the trie and ``model/`` that an ID step killed part way may have left in staging."""
    for partial in (layout.trie, layout.trie.with_name(layout.trie.name + "-lock")):
        if partial.exists():
            partial.unlink()
    if layout.model_dir.exists():
        shutil.rmtree(layout.model_dir)


def _assign_ids(work: WorkLayout, layout: IndexLayout, indexed: int, dim: int, config: BuildConfig) -> dict[str, Any]:
    """Fit the baseline tokenizer and write the trie, unless a resumed run already did."""
    if work.ids_marker.is_file():
        return json.loads(work.ids_marker.read_text())
    remove_partial_ids(layout)
    shards = ShardReader(layout.shards_dir, indexed, dim, config.records_per_shard)
    tokenizer_header = assign_baseline_ids(shards, config.quantizer, layout)
    checkpoint("ids-written")
    write_json_atomic(work.ids_marker, tokenizer_header)
    return tokenizer_header


def _header(
    config: BuildConfig,
    decode_config: DecodeConfig,
    encoder: ClipEncoder,
    tokenizer_header: dict[str, Any],
    summary: BuildSummary,
) -> dict[str, Any]:
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_root": location(config.input_root),
        "encoder": {"name": encoder.name, "checksum": encoder.checksum, "dim": encoder.dim},
        "decode": asdict(decode_config),
        "tokenizer": tokenizer_header,
        "counts": {
            "discovered": summary.discovered,
            "indexed": summary.indexed,
            "failed": summary.failed,
            "by_status": summary.status_counts,
        },
        "shards": {
            "count": summary.indexed,
            "dim": encoder.dim,
            "records_per_shard": config.records_per_shard,
            "dtype": "float16",
        },
    }
