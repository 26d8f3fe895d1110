"""The ``grdr-index`` command-line interface."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from grdr_core.errors import GrdrError
from grdr_core.query_checks import DEFAULT_BEAM, DEFAULT_LEVEL_DECAY, DEFAULT_MAX_CANDIDATES, MAX_BEAM, MAX_CANDIDATES, MAX_K, resolve_prefix_beam
from grdr_core.versions import DEFAULT_KEEP
from grdr_schemas.build import DEFAULT_FILES_PER_UNIT
from grdr_schemas.index import INDEX_FORMAT_VERSION

logger = logging.getLogger("grdr_jobs.cli")


def _quiet_transformers() -> None:
    # Model loading draws its own progress bars on stderr, which garble ours and --json output.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _local_path(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """Return an option's value as a local path; a URL is rejected before pathlib could fold it into one."""
    if value is not None and "://" in value:
        hint = "download the file first" if param.name in ("features_path", "queries_path") else "on a cluster, use a shared folder mounted on every node"
        raise click.BadParameter(f"{value} is a URL; this option takes a local path ({hint})")
    return Path(value) if value is not None else None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Build and query grdr text-to-video retrieval indexes."""
    _configure_logging(verbose)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("input_dir", required=False)
@click.option("--out", "out_dir", required=True, help="Directory or fsspec URL (s3://, gs://) to publish the index at.")
@click.option("--features", "features_path", default=None, callback=_local_path, help="Precomputed video embeddings to index instead of INPUT_DIR: Parquet (video_id, embedding) or .npy.")
@click.option("--ids", "ids_path", default=None, type=click.Path(path_type=Path), help="Video ids of a .npy --features file, one per line, line i naming row i [default: NAME.ids.txt beside NAME.npy].")
@click.option("--encoder-name", default=None, help="Model that produced the --features embeddings, recorded in index.json; queries must come from the same model [default: unknown].")
@click.option("--model", default=None, help="CLIP model: Hugging Face hub name or local directory [default: openai/clip-vit-base-patch32].")
@click.option("--device", default="cpu", show_default=True, help='Torch device for the image encoder, e.g. "cpu" or "cuda".')
@click.option("--frames", "num_frames", default=12, show_default=True, type=click.IntRange(min=1), help="Frames sampled uniformly per video.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Frames per encoder forward pass.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Decoder worker processes [default: number of CPUs with --engine local, 1 per Beam or Ray worker].")
@click.option("--engine", type=click.Choice(["local", "beam", "ray"]), default="local", show_default=True, help="Where the decode and encode stage runs. With beam, options this command does not know go to Beam's PipelineOptions (--runner, --setup_file, --num_workers, ...).")
@click.option("--ray-address", default=None, help="Ray cluster to join with --engine ray (e.g. auto); by default a local Ray instance is started.")
@click.option("--files-per-unit", default=DEFAULT_FILES_PER_UNIT, show_default=True, type=click.IntRange(min=1), help="Files per unit of work: what an engine hands to one worker and what a resumed build redoes.")
@click.option("--work-dir", default=None, callback=_local_path, help="Folder for unfinished work, which a rerun of the same command resumes from [default: .NAME.grdr-build beside --out]. Must be readable by every Beam or Ray worker.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Wall-clock limit per video decode, in seconds.")
@click.option("--max-pixels", default=None, type=click.IntRange(min=0), help="Pixels per frame (coded width x height) above which a video gets status too_large; 0 for no limit [default: 7680x4320 = 33177600].")
@click.option("--max-duration", "max_duration_s", default=None, type=click.FloatRange(min=0), help="Duration in seconds above which a video gets status too_large; 0 for no limit [default: 14400, four hours].")
@click.option("--levels", default=3, show_default=True, type=click.IntRange(min=1), help="Semantic-ID levels (residual quantization depth).")
@click.option("--codes", "codes_per_level", default=128, show_default=True, type=click.IntRange(min=1, max=65535), help="Codes per level; fewer are used for small corpora.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the quantizer's k-means.")
@click.option("--overwrite", is_flag=True, help="Publish a new version of the existing index at --out; readers of the old version keep working.")
@click.option("--keep-versions", "keep_versions", default=DEFAULT_KEEP, show_default=True, type=click.IntRange(min=1), help="Versions of the index to keep after publishing; older ones are deleted, never the current one.")
def build(
    input_dir: str | None,
    out_dir: str,
    features_path: Path | None,
    ids_path: Path | None,
    encoder_name: str | None,
    model: str | None,
    device: str,
    num_frames: int,
    batch_size: int,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    files_per_unit: int,
    work_dir: Path | None,
    timeout_s: float,
    max_pixels: int | None,
    max_duration_s: float | None,
    levels: int,
    codes_per_level: int,
    seed: int,
    overwrite: bool,
    keep_versions: int,
) -> None:
    """Index every video under INPUT_DIR, or the embeddings in --features, and publish the index at --out.

    With --features FILE no video is decoded. A Parquet file needs the columns
    video_id (string) and embedding (a list of float16, float32 or float64 values,
    the same length in every row). A .npy file contains a 2-D float array, and its ids
    come from --ids. Rows whose embedding is null, not finite or all zeros are recorded
    in the manifest with status invalid_embedding and are not indexed.

    INPUT_DIR and --out may be fsspec URLs such as s3://bucket/videos. A build that
    is killed resumes when the same command is run again.
    """
    extra_args = _engine_args(engine, ray_address)
    if (input_dir is None) == (features_path is None):
        raise click.UsageError("Give exactly one of INPUT_DIR (a folder of videos) and --features FILE (precomputed embeddings).")
    if features_path is not None:
        _reject_video_options(click.get_current_context())
        _build_from_features(features_path, ids_path, encoder_name, out_dir, levels, codes_per_level, seed, overwrite, keep_versions)
        return
    for name, value in (("--ids", ids_path), ("--encoder-name", encoder_name)):
        if value is not None:
            raise click.UsageError(f"{name} applies only to --features builds.")

    from grdr_core.build import BuildConfig, build_index
    from grdr_core.decode import DecodeConfig
    from grdr_core.features import DEFAULT_MODEL, EncoderConfig
    from grdr_core.quantize import QuantizerConfig

    _quiet_transformers()
    config = BuildConfig(
        input_root=input_dir,
        out_dir=out_dir,
        decode=DecodeConfig(num_frames=num_frames, timeout_s=timeout_s, **_decode_limits(max_pixels, max_duration_s)),
        encoder=EncoderConfig(model=model or DEFAULT_MODEL, device=device, batch_size=batch_size),
        quantizer=QuantizerConfig(levels=levels, codes_per_level=codes_per_level, seed=seed),
        workers=_decode_workers(workers, engine),
        overwrite=overwrite,
        files_per_unit=files_per_unit,
        work_dir=work_dir,
        keep_versions=keep_versions,
    )
    if engine != "local":
        summary = build_index(config, map_runner=_map_runner(engine, extra_args, ray_address))
    else:
        summary = _with_progress_bar(
            "indexing", lambda progress, on_pending: build_index(config, progress=progress, on_discovered=on_pending)
        )
    click.echo(f"Indexed {summary.out_dir}: {summary.describe()}")
    click.echo(summary.status_table())


def _engine_args(engine: str, ray_address: str | None) -> list[str]:
    """Return the options that go to Beam; reject them, and --ray-address, for other engines."""
    extra_args = click.get_current_context().args
    if extra_args and engine != "beam":
        raise click.UsageError(f"Unknown options {' '.join(extra_args)} (only --engine beam passes options on to Beam).")
    if engine != "ray" and ray_address is not None:
        raise click.UsageError("--ray-address applies only to --engine ray.")
    return extra_args


def _decode_workers(workers: int | None, engine: str) -> int:
    """Return --workers, by default one decoder per CPU locally and one per Beam or Ray worker."""
    return workers or (max(1, os.cpu_count() or 1) if engine == "local" else 1)


def _with_progress_bar(description: str, run: Callable[..., Any], disable: bool = False) -> Any:
    """Call ``run(progress, on_pending)`` under a progress bar of decoded videos; return its result."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(
        unit="video",
        desc=description,
        dynamic_ncols=True,
        disable=disable,
        # rate_noinv keeps "videos/s" even below one video per second.
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
    ) as bar:

        def set_total(count: int) -> None:
            bar.total = count
            bar.refresh()

        return run(lambda file, status: bar.update(1), set_total)


def _local_only(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """Return an index argument as a local path; commands that write an index reject URLs."""
    if "://" in value:
        raise click.BadParameter(f"{value} is a URL; `{ctx.info_name}` works on a local index only", param_hint="INDEX_DIR")
    return Path(value)


def _local_index(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """Return the local path of an index argument, downloading a remote index (s3://...) into the cache."""
    from grdr_core.versions import local_index_path

    resolved = local_index_path(value)
    if resolved is not value:  # a local path comes back as the same object
        ctx.meta["grdr_index_url"] = value  # what reports name instead of the cache path
    return Path(resolved)


def _map_runner(engine: str, beam_args: list[str], ray_address: str | None):
    """Return the map-stage runner of a distributed engine; its package loads only here."""
    if engine == "beam":
        from grdr_pipelines.beam_build import beam_map_runner

        return beam_map_runner(beam_args)
    from grdr_pipelines.ray_build import ray_map_runner

    return ray_map_runner(address=ray_address)


def _decode_limits(max_pixels: int | None, max_duration_s: float | None) -> dict[str, int | float | None]:
    """Return the DecodeConfig limits that were given on the command line; 0 turns a limit off."""
    limits: dict[str, int | float | None] = {}
    if max_pixels is not None:
        limits["max_pixels"] = max_pixels or None
    if max_duration_s is not None:
        limits["max_duration_s"] = max_duration_s or None
    return limits


# Options of a build from videos that a build from --features has no use for.
VIDEO_ONLY_OPTIONS = ("model", "device", "num_frames", "batch_size", "workers", "timeout_s", "max_pixels", "max_duration_s")


def _reject_video_options(ctx: click.Context) -> None:
    for param in ctx.command.params:
        if param.name in VIDEO_ONLY_OPTIONS and ctx.get_parameter_source(param.name) != click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"{param.opts[0]} applies only to builds from videos; --features embeddings are indexed as given.")


def _build_from_features(
    features_path: Path,
    ids_path: Path | None,
    encoder_name: str | None,
    out_dir: str,
    levels: int,
    codes_per_level: int,
    seed: int,
    overwrite: bool,
    keep_versions: int,
) -> None:
    from grdr_core.embedding_index import build_index_from_features
    from grdr_core.quantize import QuantizerConfig

    summary = build_index_from_features(
        features_path,
        out_dir,
        encoder_name=encoder_name or "unknown",
        ids_path=ids_path,
        quantizer=QuantizerConfig(levels=levels, codes_per_level=codes_per_level, seed=seed),
        overwrite=overwrite,
        keep_versions=keep_versions,
    )
    click.echo(f"Indexed {summary.out_dir}: {summary.describe()}")


@cli.command()
@click.argument("index_dir", callback=_local_index)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(index_dir: Path, as_json: bool) -> None:
    """Print counts, semantic-ID statistics and sizes of an index."""
    from grdr_core.index import open_index
    from grdr_core.report import format_report, index_report

    index = open_index(index_dir)
    try:
        report = index_report(index)
    finally:
        index.close()
    url = click.get_current_context().meta.get("grdr_index_url")
    if url is not None:
        report = {"index": url, "cached_at": report["index"], **{k: v for k, v in report.items() if k != "index"}}
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@cli.command()
@click.argument("index_dir", callback=_local_index)
def verify(index_dir: Path) -> None:
    """Check every file of an index against the sizes and SHA-256 sums in its index.json.

    Prints one line per missing, truncated or corrupted file and exits with status 1
    when there is any. Opening an index checks only sizes and the small files.
    """
    from grdr_core.errors import IndexFormatError
    from grdr_core.verify import verify_index

    report = verify_index(index_dir)
    for problem in report.problems:
        click.echo(problem.describe())
    for name in report.unlisted:
        click.echo(f"{name}: not listed in index.json (not checked)")
    if not report.ok:
        raise IndexFormatError(report.describe())
    click.echo(report.describe())


@cli.command()
@click.argument("index_dir")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def versions(index_dir: str, as_json: bool) -> None:
    """List the versions of an index, oldest first; "*" marks the current one.

    INDEX_DIR may be a URL (s3://...); a version folder there whose index.json is
    missing is an upload in progress or one that was killed.
    """
    from grdr_core import remote

    at_url = remote.is_remote(index_dir)
    if at_url:
        from grdr_core.output import IndexOutput

        infos = IndexOutput.of(index_dir).describe_versions()
    else:
        from grdr_core.versions import describe_versions

        infos = describe_versions(remote.local_path(index_dir))
    if as_json:
        rows = [{"name": info.name, "current": info.current, "path": str(info.path), **_version_summary(info.header)} for info in infos]
        click.echo(json.dumps(rows, indent=2))
        return
    for info in infos:
        summary = _version_summary(info.header)
        if info.header is None:
            details = "index.json missing or unreadable"
        else:
            details = f"created {summary['created_at']}, {summary['indexed']} videos, {summary['tokenizer']} IDs"
            details += f", retriever trained {summary['trained_at']}" if summary["retriever"] else ""
            if summary["format_version"] != INDEX_FORMAT_VERSION:
                details += f", index format {summary['format_version']}: this grdr reads format {INDEX_FORMAT_VERSION} only, rebuild it"
        click.echo(f"{'*' if info.current else ' '} {info.name}  {details}")
    if infos and not any(info.current for info in infos) and not at_url:
        click.echo(f"No version is current (CURRENT is missing); run `grdr-index rollback {index_dir} --to NAME` to choose one.")


def _version_summary(header: dict | None) -> dict:
    header = header or {}
    tokenizer = header.get("tokenizer") if isinstance(header.get("tokenizer"), dict) else {}
    counts = header.get("counts") if isinstance(header.get("counts"), dict) else {}
    # Versions written by train before it set its own created_at kept the build's, so the
    # later of created_at and trained_at is the publish time. An update keeps trained_at.
    times = [t for t in (header.get("created_at"), tokenizer.get("trained_at")) if isinstance(t, str)]
    return {
        "created_at": max(times) if times else None,
        "trained_at": tokenizer.get("trained_at"),
        "indexed": counts.get("indexed"),
        "tokenizer": tokenizer.get("name"),
        "retriever": bool(tokenizer.get("retriever")),
        "format_version": header.get("format_version"),
    }


@cli.command()
@click.argument("index_dir", callback=_local_only)
@click.option("--to", "to", default=None, help="Version to make current, e.g. v000002 [default: the newest version older than the current one].")
def rollback(index_dir: Path, to: str | None) -> None:
    """Make an older version of an index current, for readers that open the index afterwards.

    Rolling back deletes nothing. The next publish numbers its version above every
    existing one and keeps the newest --keep-versions versions by number.
    """
    from grdr_core.versions import rollback as rollback_index

    name = rollback_index(index_dir, to=to)
    click.echo(f"Index {index_dir} now serves version {name}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("index_dir")
@click.argument("input_dir", required=False)
@click.option("--model", default=None, help="CLIP model to encode new files with; must have the weights recorded in the index [default: the recorded encoder].")
@click.option("--device", default="cpu", show_default=True, help='Torch device for the image encoder, e.g. "cpu" or "cuda".')
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Frames per encoder forward pass.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Decoder worker processes [default: number of CPUs with --engine local, 1 per Beam or Ray worker].")
@click.option("--engine", type=click.Choice(["local", "beam", "ray"]), default="local", show_default=True, help="Where new and changed files are decoded and encoded. With beam, options this command does not know go to Beam's PipelineOptions.")
@click.option("--ray-address", default=None, help="Ray cluster to join with --engine ray (e.g. auto); by default a local Ray instance is started.")
@click.option("--files-per-unit", default=DEFAULT_FILES_PER_UNIT, show_default=True, type=click.IntRange(min=1), help="Files per unit of work: what an engine hands to one worker and what a resumed update redoes.")
@click.option("--work-dir", default=None, callback=_local_path, help="Folder for unfinished work, which a rerun of the same command resumes from [default: .NAME.grdr-update beside INDEX_DIR].")
@click.option("--frames", "num_frames", default=None, type=click.IntRange(min=1), help="Frames sampled per new or changed video [default: as recorded in the index].")
@click.option("--timeout", "timeout_s", default=None, type=click.FloatRange(min=0, min_open=True), help="Wall-clock limit per video decode, in seconds [default: as recorded in the index].")
@click.option("--max-pixels", default=None, type=click.IntRange(min=0), help="Pixels per frame above which a video gets status too_large; 0 for no limit [default: as recorded in the index].")
@click.option("--max-duration", "max_duration_s", default=None, type=click.FloatRange(min=0), help="Duration in seconds above which a video gets status too_large; 0 for no limit [default: as recorded in the index].")
@click.option("--retrain", is_flag=True, help="Also refit the tokenizer: the residual k-means of a baseline index, or the trained model (needs --captions or --caption-embeddings).")
@click.option("--captions", type=click.Path(path_type=Path), default=None, help="With --retrain of a trained index: captions file (CSV, JSONL or Parquet) with columns video_id and caption.")
@click.option("--caption-embeddings", type=click.Path(path_type=Path), default=None, help="With --retrain of a trained index: precomputed caption embeddings (Parquet: video_id, embedding).")
@click.option("--keep-versions", "keep_versions", default=DEFAULT_KEEP, show_default=True, type=click.IntRange(min=1), help="Versions of the index to keep after publishing; older ones are deleted, never the current one.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts and the new version as JSON.")
def update(
    index_dir: str,
    input_dir: str | None,
    model: str | None,
    device: str,
    batch_size: int,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    files_per_unit: int,
    work_dir: Path | None,
    num_frames: int | None,
    timeout_s: float | None,
    max_pixels: int | None,
    max_duration_s: float | None,
    retrain: bool,
    captions: Path | None,
    caption_embeddings: Path | None,
    keep_versions: int,
    as_json: bool,
) -> None:
    """Re-index only the new and changed files under INPUT_DIR and publish a new version of INDEX_DIR.

    Files are compared with the current version by path and content fingerprint.
    Unchanged files keep their manifest row and stored embedding, files that are gone
    are dropped, and semantic IDs come from the index's tokenizer. INPUT_DIR defaults
    to the input root recorded in the index. When nothing was added, changed or
    removed, no version is published. A killed update resumes when the same command
    is run again. INDEX_DIR may be a URL (s3://...): the update runs in a local copy
    in the cache and uploads the new version.
    """
    extra_args = _engine_args(engine, ray_address)

    from grdr_core.update import UpdateConfig, update_index

    _quiet_transformers()
    overrides: dict = dict(_decode_limits(max_pixels, max_duration_s))
    if num_frames is not None:
        overrides["num_frames"] = num_frames
    if timeout_s is not None:
        overrides["timeout_s"] = timeout_s
    config = UpdateConfig(
        index_dir=index_dir,
        input_root=input_dir,
        model=model,
        device=device,
        batch_size=batch_size,
        decode_overrides=overrides,
        workers=_decode_workers(workers, engine),
        files_per_unit=files_per_unit,
        work_dir=work_dir,
        keep_versions=keep_versions,
        retrain=retrain,
        captions=captions,
        caption_embeddings=caption_embeddings,
        train_device=device,
    )
    if engine != "local":
        summary = update_index(config, map_runner=_map_runner(engine, extra_args, ray_address))
    else:
        summary = _with_progress_bar(
            "updating", lambda progress, on_pending: update_index(config, progress=progress, on_pending=on_pending), disable=as_json
        )
    if as_json:
        payload = {"index": str(summary.index_dir), "base_version": summary.base_version, "version": summary.version,
                   "up_to_date": summary.up_to_date, **summary.counts(), "trained_version": summary.trained_version}
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"Updated {summary.index_dir}: {summary.describe()}")


QUERY_FILE_HELP = (
    "File of queries to answer instead of TEXT: CSV, JSONL or Parquet with a text or an embedding column "
    "and an optional query_id, or a .npy matrix of embeddings (one query per row). "
    "With --json, one JSON object per query and line."
)
QUERY_FILE_BATCH = 256  # queries per encoder and recall call
PREFIX_BEAM_HELP = (
    "Prefixes kept at each level of beam search before the last, which keeps --beam full IDs [default: the beam]. "
    "Each kept prefix costs one step of the retriever, so a smaller value makes recall faster and may miss videos."
)
LEVEL_DECAY_HELP = "Factor on the logits of each deeper level of beam search: level l's logits are scaled by this to the power l before the log-softmax, so below 1 the deeper codes weigh less."


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Reject NaN, which click's FloatRange lets through because NaN fails every comparison."""
    if value != value:
        raise click.BadParameter("must be a number, got nan")
    return value


def _check_query_source(text: str | None, queries_path: Path | None) -> None:
    if (text is None) == (queries_path is None):
        raise click.UsageError("Give either TEXT or --queries FILE, not both and not neither.")


def _echo_hits(hits: list[Any]) -> None:
    for hit in hits:
        click.echo(f"{hit.rank:>3}  {hit.score:+.4f}  {hit.video_id}")


def _echo_query_heading(position: int, query_id: str, text: str | None) -> None:
    if position:
        click.echo("")
    # Line breaks inside an id or text are shown escaped, so each heading stays one line.
    query_id = query_id.replace("\r", "\\r").replace("\n", "\\n")
    click.echo(f"query {query_id}: " + text.replace("\r", "\\r").replace("\n", "\\n") if text is not None else f"query {query_id}")


@cli.command()
@click.argument("index_dir", callback=_local_index)
@click.argument("text", required=False)
@click.option("--queries", "queries_path", default=None, metavar="FILE", callback=_local_path, help=QUERY_FILE_HELP)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, MAX_K), help="Number of results.")
@click.option("--model", default=None, help="Encoder to load instead of the one recorded in the index (a local directory of the same weights).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the text encoder.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def search(index_dir: Path, text: str | None, queries_path: Path | None, k: int, model: str | None, device: str, as_json: bool) -> None:
    """Exact dense search: score TEXT (or every query of --queries FILE) against every indexed video."""
    from grdr_core.index import open_index
    from grdr_core.search import load_query_encoder, search_text

    _check_query_source(text, queries_path)
    _quiet_transformers()
    index = open_index(index_dir)
    try:
        if queries_path is not None:
            _search_query_file(index, queries_path, k, model, device, as_json)
            return
        encoder = load_query_encoder(index, model=model, device=device)
        hits = search_text(index, encoder, text, k)
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps({"query": text, "results": [asdict(h) for h in hits]}, indent=2))
        return
    _echo_hits(hits)


def _search_query_file(index: Any, queries_path: Path, k: int, model: str | None, device: str, as_json: bool) -> None:
    from grdr_core.query_files import read_search_queries
    from grdr_core.search import exact_dense_search, hits_for, load_query_encoder

    batch = read_search_queries(queries_path, index.shards.dim)
    encoder = load_query_encoder(index, model=model, device=device) if batch.texts is not None else None
    for start in range(0, len(batch), QUERY_FILE_BATCH):
        stop = min(start + QUERY_FILE_BATCH, len(batch))
        texts = batch.texts[start:stop] if batch.texts is not None else None
        embeddings = encoder.encode_text(texts) if encoder is not None else batch.embeddings[start:stop]
        ordinals, scores = exact_dense_search(index.shards, embeddings, k)
        for row in range(stop - start):
            query_id = batch.query_ids[start + row]
            text = texts[row] if texts is not None else None
            hits = hits_for(index, ordinals[row], scores[row])
            if as_json:
                payload = {"query_id": query_id, **({"query": text} if text is not None else {}), "results": [asdict(h) for h in hits]}
                click.echo(json.dumps(payload))
                continue
            _echo_query_heading(start + row, query_id, text)
            _echo_hits(hits)


@cli.command()
@click.argument("index_dir", callback=_local_only)
@click.option("--captions", type=click.Path(path_type=Path), default=None, help="Captions file (CSV, JSONL or Parquet) with columns video_id and caption.")
@click.option("--caption-embeddings", type=click.Path(path_type=Path), default=None, help="Precomputed caption embeddings (Parquet: video_id, embedding) instead of --captions.")
@click.option("--views", default=4, show_default=True, type=click.IntRange(min=1), help="Semantic IDs (views) per video.")
@click.option("--levels", default=3, show_default=True, type=click.IntRange(min=1), help="Codes per semantic ID.")
@click.option("--codes", "codes_per_level", default=128, show_default=True, type=click.IntRange(min=1, max=65535), help="Codebook size per level; fewer are used for small corpora.")
@click.option("--epochs", "epochs_per_level", default=5, show_default=True, type=click.IntRange(min=1), help="Training epochs per level.")
@click.option("--polish-epochs", default=0, show_default=True, type=click.IntRange(min=0), help="Retriever-only epochs on the final semantic IDs.")
@click.option(
    "--video-queries",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0, max=1000),  # TrainConfig's MAX_VIDEO_QUERIES; training imports torch, so not imported here
    help="Video embeddings that also train the retriever as queries, per epoch, as a multiple of the caption count (1: as many as there are captions; 0: captions only). See docs/benchmarks.md before turning it on.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for every random choice in training.")
@click.option("--no-cotrain", is_flag=True, help="Ablation: train the tokenizer alone, freeze it, then train the retriever.")
@click.option("--no-diversity", is_flag=True, help="Ablation: turn off distinct IDs per video, balanced assignment, dead-code resets and the diversity loss.")
@click.option("--model", default=None, help="Text encoder to load instead of the one recorded in the index (same weights).")
@click.option("--device", default="cpu", show_default=True, help='Torch device for training and caption encoding, e.g. "cpu" or "cuda".')
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads for torch [default: torch's choice]; lower it on a shared machine.")
@click.option("--keep-versions", "keep_versions", default=DEFAULT_KEEP, show_default=True, type=click.IntRange(min=1), help="Versions of the index to keep after publishing; older ones are deleted, never the current one.")
def train(
    index_dir: Path,
    captions: Path | None,
    caption_embeddings: Path | None,
    views: int,
    levels: int,
    codes_per_level: int,
    epochs_per_level: int,
    polish_epochs: int,
    video_queries: float,
    seed: int,
    no_cotrain: bool,
    no_diversity: bool,
    model: str | None,
    device: str,
    threads: int | None,
    keep_versions: int,
) -> None:
    """Train multi-view semantic IDs and the generative retriever, and publish them as a new version of the index."""
    import torch

    from grdr_core.train_index import train_index
    from grdr_core.training import TrainConfig

    _quiet_transformers()
    if threads is not None:
        torch.set_num_threads(threads)
    config = TrainConfig(
        views=views,
        levels=levels,
        codes_per_level=codes_per_level,
        epochs_per_level=epochs_per_level,
        polish_epochs=polish_epochs,
        video_queries=video_queries,
        seed=seed,
        cotrain=not no_cotrain,
        device=device,
    )
    if no_diversity:
        config = config.without_view_diversity()
    summary = train_index(index_dir, config, captions=captions, caption_embeddings=caption_embeddings, model=model, keep=keep_versions)
    click.echo(f"Trained {summary.index_dir}, published as version {summary.version}: {summary.describe()}")


@cli.command()
@click.argument("index_dir", callback=_local_index)
@click.argument("text", required=False)
@click.option("--queries", "queries_path", default=None, metavar="FILE", callback=_local_path, help=QUERY_FILE_HELP)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, MAX_K), help="Number of results; fewer when fewer videos are candidates.")
@click.option("--beam", default=DEFAULT_BEAM, show_default=True, type=click.IntRange(1, MAX_BEAM), help="Beam width of the constrained decoding.")
@click.option("--prefix-beam", default=None, type=click.IntRange(1, MAX_BEAM), help=PREFIX_BEAM_HELP)
@click.option("--max-candidates", default=DEFAULT_MAX_CANDIDATES, show_default=True, type=click.IntRange(1, MAX_CANDIDATES), help="Cap on the candidate pool that is reranked.")
@click.option("--level-decay", default=DEFAULT_LEVEL_DECAY, show_default=True, type=click.FloatRange(0, 1, min_open=True), callback=_finite, help=LEVEL_DECAY_HELP)
@click.option("--model", default=None, help="Text encoder to load instead of the one recorded in the index (same weights).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the text encoder.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def query(
    index_dir: Path,
    text: str | None,
    queries_path: Path | None,
    k: int,
    beam: int,
    prefix_beam: int | None,
    max_candidates: int,
    level_decay: float,
    model: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Search for TEXT (or each query of --queries FILE) with generative recall and dense reranking."""
    from grdr_core.searcher import Searcher

    _check_query_source(text, queries_path)
    with Searcher(index_dir, model=model, device=device) as searcher:
        _quiet_transformers()
        limits = QueryLimits(k, beam, max_candidates, level_decay, prefix_beam)
        if queries_path is not None:
            _query_file(searcher, queries_path, limits, as_json)
            return
        result = searcher.search(text, **asdict(limits))
    if as_json:
        click.echo(json.dumps(_query_payload(text, result, limits), indent=2))
        return
    _echo_query_result(result)


@dataclass(frozen=True)
class QueryLimits:
    """The search settings of one ``query`` command, as keyword arguments of ``Searcher.search``."""

    k: int
    beam: int
    max_candidates: int
    level_decay: float
    prefix_beam: int | None


def _query_file(searcher: Any, queries_path: Path, limits: QueryLimits, as_json: bool) -> None:
    from grdr_core.query_files import read_search_queries

    batch = read_search_queries(queries_path, searcher.index.shards.dim)
    for start in range(0, len(batch), QUERY_FILE_BATCH):
        stop = min(start + QUERY_FILE_BATCH, len(batch))
        if batch.texts is not None:
            texts: list[str | None] = list(batch.texts[start:stop])
            results = searcher.search_batch(batch.texts[start:stop], **asdict(limits))
        else:
            texts = [None] * (stop - start)
            results = searcher.search_embeddings(batch.embeddings[start:stop], **asdict(limits))
        for row, (text, result) in enumerate(zip(texts, results)):
            query_id = batch.query_ids[start + row]
            if as_json:
                click.echo(json.dumps({"query_id": query_id, **_query_payload(text, result, limits)}))
                continue
            _echo_query_heading(start + row, query_id, text)
            _echo_query_result(result)


def _query_payload(text: str | None, result: Any, limits: QueryLimits) -> dict[str, Any]:
    """Return the JSON fields of one query's result; ``query`` only for a text query."""
    payload: dict[str, Any] = {"query": text} if text is not None else {}
    payload.update(
        {
            "beam": limits.beam,
            "prefix_beam": resolve_prefix_beam(limits.beam, limits.prefix_beam),
            "max_candidates": limits.max_candidates,
            "level_decay": limits.level_decay,
            "results": [asdict(h) for h in result.hits],
            "candidates": result.candidates,
            "timings_ms": result.timings_ms,
        }
    )
    return payload


def _echo_query_result(result: Any) -> None:
    _echo_hits(result.hits)
    timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in result.timings_ms.items())
    click.echo(f"{result.candidates} candidates reranked; {timings}")


@cli.command(name="eval")
@click.argument("index_dir", callback=_local_index)
@click.option("--queries", "queries_path", required=True, type=click.Path(path_type=Path), help="Queries file (CSV, JSONL or Parquet): video_id, and text or embedding, optional query_id.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option("--report", "report_dir", default=None, type=click.Path(path_type=Path), help="Directory to write a Markdown report with PNG plots into (adds a beam sweep and a corpus-size sweep).")
@click.option("--beam", default=DEFAULT_BEAM, show_default=True, type=click.IntRange(1, MAX_BEAM), help="grdr beam width.")
@click.option("--prefix-beam", default=None, type=click.IntRange(1, MAX_BEAM), help=PREFIX_BEAM_HELP)
@click.option("--max-candidates", default=DEFAULT_MAX_CANDIDATES, show_default=True, type=click.IntRange(min=1, max=10_000), help="Cap on grdr's candidate pool; every method returns max(50, this) results for ranking.")
@click.option("--level-decay", default=DEFAULT_LEVEL_DECAY, show_default=True, type=click.FloatRange(0, 1, min_open=True), callback=_finite, help=LEVEL_DECAY_HELP)
@click.option("--hnsw-m", default=32, show_default=True, type=click.IntRange(min=2), help="Links per node of the FAISS HNSW graph.")
@click.option("--hnsw-ef-search", default=64, show_default=True, type=click.IntRange(min=1), help="HNSW efSearch; raised to max(50, --max-candidates) where smaller, the number of results ranked per query.")
@click.option("--ivf-nprobe", default=8, show_default=True, type=click.IntRange(min=1), help="Inverted lists probed per query by FAISS IVF-PQ.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of FAISS training and of the sub-corpus samples.")
@click.option("--model", default=None, help="Text encoder to load instead of the one recorded in the index (same weights).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the text encoder.")
def evaluate_command(
    index_dir: Path,
    queries_path: Path,
    as_json: bool,
    report_dir: Path | None,
    beam: int,
    prefix_beam: int | None,
    max_candidates: int,
    level_decay: float,
    hnsw_m: int,
    hnsw_ef_search: int,
    ivf_nprobe: int,
    seed: int,
    model: str | None,
    device: str,
) -> None:
    """Measure grdr against exact dense search and FAISS on queries with known videos."""
    # FAISS logs at INFO which CPU build it loads, four lines of no use here.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from grdr_core.evaluation import EvalConfig, evaluate, format_table, summary

    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise click.BadParameter(f"{report_dir} exists and is not a directory", param_hint="--report")
    config = EvalConfig(
        beam=beam,
        prefix_beam=prefix_beam,
        max_candidates=max_candidates,
        level_decay=level_decay,
        hnsw_m=hnsw_m,
        hnsw_ef_search=hnsw_ef_search,
        ivf_nprobe=ivf_nprobe,
        seed=seed,
    )
    evaluation = evaluate(index_dir, queries_path, config, model=model, device=device, sweeps=report_dir is not None)
    result = summary(evaluation)
    if report_dir is not None:
        from grdr_core.eval_report import write_report

        path = write_report(result, report_dir)
        click.echo(f"Wrote report {path}", err=as_json)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on ``argv`` (default: the command line); a grdr error prints one line and exits with status 1."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except GrdrError as exc:
        click.echo(f"grdr-index: error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("grdr-index: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
