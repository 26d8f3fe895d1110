"""Measure decode, encode and full-build throughput of the local index build, and its peak memory.

Four measurements on one folder of videos:

1. Decode only: ``DecodePool`` with the build's worker count and ``DecodeConfig``.
2. Encode only: ``ClipEncoder.encode_videos`` on frames decoded once and kept in memory,
   grouped into calls the way the build groups them.
3. Full build: ``build_index`` in a fresh process, with the peak RSS of its process tree
   and the wall time spent in each build stage.
4. Memory flatness: full builds over corpora made of several symlinked copies of the folder.

The serial composition of steps 1 and 2 gives the throughput the build should reach when
decoding and encoding do not overlap: ``1 / (1/decode + 1/encode)`` videos per second.

By default the encoder is a CLIP with the ViT-B/32 architecture (``transformers.CLIPConfig()``
defaults) and random weights, so it costs what openai/clip-vit-base-patch32 costs but needs no
download. Example::

    .venv/bin/python benchmarks/build_throughput.py --data ../shared/data/msvd/clips --out-json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

# NOTE: torch, transformers and the grdr_core modules are imported inside functions.
# multiprocessing imports the main script (this file) into every DecodePool worker, so a
# top-level torch import would load torch into each decoder worker. That adds about 180 MiB
# of RSS per worker (torch 2.13, CPU build), which grdr-index build does not pay.

logger = logging.getLogger("build_throughput")

FULL_SIZE_MODEL_NAME = "clip-vit-b32-random"
TINY_MODEL_NAME = "tiny-clip"
MIB = 1024 * 1024


# --- process-tree monitor -------------------------------------------------------------


@dataclass
class TreeUsage:
    """Resource use of a process and its descendants over one measured interval."""

    wall_s: float
    peak_tree_rss_bytes: int  # maximum over samples of the summed RSS of the process and all descendants
    peak_parent_rss_bytes: int
    max_processes: int  # the process itself included
    tree_cpu_s: float  # user + system CPU seconds of the tree, as last sampled
    parent_cpu_s: float  # the part of tree_cpu_s used by the process itself
    system_busy_cpu_s: float  # CPU seconds all processes on the machine used (non-idle, non-iowait)

    @property
    def other_cpu_share(self) -> float:
        """Estimated fraction of the machine's CPU capacity that processes outside the tree used.

        Computed as system busy time minus the tree's CPU time, so it also absorbs any
        error of the sampled tree figure. Treat it as a sign of contention, not an exact share.
        """
        capacity = self.wall_s * (os.cpu_count() or 1)
        if capacity <= 0:
            return 0.0
        return max(0.0, self.system_busy_cpu_s - self.tree_cpu_s) / capacity

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "other_cpu_share": round(self.other_cpu_share, 4)}


def _busy_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class TreeMonitor:
    """Sample the RSS and CPU time of this process and its descendants in a background thread.

    RSS is summed over processes, so pages shared between them (copy-on-write pages of
    forked workers, shared libraries) are counted once per process, and the sum is an
    upper bound of the memory the tree needs. CPU time of a descendant that exits between two
    samples is missed for at most one interval.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self._peak_tree = 0
        self._peak_parent = 0
        self._max_processes = 0
        self._cpu_by_process: dict[tuple[int, float], float] = {}
        self._parent_key = (self._process.pid, self._process.create_time())

    def __enter__(self) -> TreeMonitor:
        self._started = time.perf_counter()
        self._busy_at_start = _busy_cpu_seconds()
        self._cpu_at_start = self._tree_cpu_now()
        self._parent_cpu_at_start = self._cpu_by_process.get(self._parent_key, 0.0)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.usage = TreeUsage(
            wall_s=time.perf_counter() - self._started,
            peak_tree_rss_bytes=self._peak_tree,
            peak_parent_rss_bytes=self._peak_parent,
            max_processes=self._max_processes,
            tree_cpu_s=sum(self._cpu_by_process.values()) - self._cpu_at_start,
            parent_cpu_s=self._cpu_by_process.get(self._parent_key, 0.0) - self._parent_cpu_at_start,
            system_busy_cpu_s=_busy_cpu_seconds() - self._busy_at_start,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _tree_cpu_now(self) -> float:
        self._cpu_by_process.clear()
        self._sample()
        return sum(self._cpu_by_process.values())

    def _sample(self) -> None:
        try:
            processes = [self._process, *self._process.children(recursive=True)]
        except psutil.Error:
            return
        total_rss = 0
        counted = 0
        for process in processes:
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    cpu = process.cpu_times()
                    key = (process.pid, process.create_time())
            except psutil.Error:  # exited between listing and reading
                continue
            total_rss += rss
            counted += 1
            self._cpu_by_process[key] = cpu.user + cpu.system
            if process is self._process:
                self._peak_parent = max(self._peak_parent, rss)
        self._peak_tree = max(self._peak_tree, total_rss)
        self._max_processes = max(self._max_processes, counted)


# --- machine facts and model ------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """Describe the CPU, memory and software versions the figures were measured with."""
    import av
    import decord
    import torch
    import transformers

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "decord": decord.__version__,
        "av": av.__version__,
    }


def write_full_size_clip(directory: Path, seed: int = 0) -> Path:
    """Write a CLIP with ``CLIPConfig()`` default sizes (ViT-B/32 vision tower) and random weights.

    The tokenizer files and ``preprocessor_config.json`` are the tiny CLIP's, which carry
    openai/clip-vit-base-patch32's image settings (224 px shortest edge and crop). The
    tokenizer's vocabulary is smaller than the text tower's 49,408 embeddings, which is
    harmless here because this benchmark encodes images only. The text tower takes the
    tokenizer's special-token ids, which ``ClipEncoder`` checks when it loads a model.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    from grdr_core.testing.tiny_clip import END_TOKEN, START_TOKEN, build_vocab, write_tiny_clip

    write_tiny_clip(directory, seed=seed)
    for name in ("config.json", "model.safetensors"):
        (directory / name).unlink(missing_ok=True)
    vocab = build_vocab()
    special_tokens = {"bos_token_id": vocab[START_TOKEN], "eos_token_id": vocab[END_TOKEN], "pad_token_id": vocab[END_TOKEN]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=special_tokens))
    model.save_pretrained(str(directory))
    return directory


def prepare_model(args: argparse.Namespace, temp_dir: Path) -> tuple[str, str]:
    """Return the model directory or hub name to benchmark, and a description of it."""
    if args.model:
        return args.model, f"given: {args.model}"
    if args.tiny:
        from grdr_core.testing.tiny_clip import write_tiny_clip

        return str(write_tiny_clip(temp_dir / TINY_MODEL_NAME)), "tiny random CLIP (grdr_core.testing.tiny_clip)"
    started = time.perf_counter()
    directory = write_full_size_clip(temp_dir / FULL_SIZE_MODEL_NAME)
    logger.info("Wrote a random ViT-B/32-size CLIP to %s in %.1f s", directory, time.perf_counter() - started)
    return str(directory), "random-weight CLIP, transformers.CLIPConfig() defaults (ViT-B/32 vision tower)"


# --- decode only and encode only ---------------------------------------------------------


@dataclass
class RateFigures:
    """Throughput of one measured pass."""

    videos: int
    frames: int
    seconds: float
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def videos_per_s(self) -> float:
        return self.videos / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "videos_per_s": self.videos_per_s, "frames_per_s": self.frames_per_s}


def measure_decode(paths: list[str], decode_config: Any, workers: int, repeats: int) -> tuple[RateFigures, RateFigures, list[Any]]:
    """Decode ``paths`` once with a fresh pool, then ``repeats`` times more with the same pool.

    Returns the first pass (worker start included), the steady-state passes and the
    frames of the first pass, one (n, H, W, 3) uint8 array per decoded video.
    """
    from grdr_core.decode import DecodePool

    with DecodePool(decode_config, workers=workers) as pool:
        with TreeMonitor() as monitor:
            first = list(pool.imap(paths))
        videos = [result.video.frames for result in first if result.video is not None]
        failed = [result.path for result in first if result.video is None]
        if failed:
            logger.warning("%d of %d files failed to decode and are left out: %s", len(failed), len(paths), failed)
        first_pass = RateFigures(len(videos), sum(len(v) for v in videos), monitor.usage.wall_s, monitor.usage.to_json())

        with TreeMonitor() as monitor:
            decoded = sum(len(r.video.frames) for r in pool.imap(paths * repeats) if r.video is not None)
        steady = RateFigures(len(videos) * repeats, decoded, monitor.usage.wall_s, monitor.usage.to_json())
    return first_pass, steady, videos


def group_like_build(frame_counts: list[int], flush_frames: int, files_per_unit: int) -> list[list[int]]:
    """Split video indices into the groups that the build passes to one ``encode_videos`` call.

    The build's map stage collects decoded videos until they hold at least
    ``flush_frames`` frames, or its unit of ``files_per_unit`` files ends, then encodes
    them together, so a group usually ends with a partial forward pass.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    frames = 0
    for index, count in enumerate(frame_counts):
        current.append(index)
        frames += count
        if frames >= flush_frames or (index + 1) % files_per_unit == 0:
            groups.append(current)
            current, frames = [], 0
    if current:
        groups.append(current)
    return groups


def measure_encode(encoder: Any, videos: list[Any], repeats: int) -> RateFigures:
    """Encode the in-memory ``videos`` in build-sized groups ``repeats`` times, after one warm-up call."""
    from grdr_core.stages import ENCODE_BATCHES_PER_FLUSH
    from grdr_schemas.build import DEFAULT_FILES_PER_UNIT

    encoder.encode_frames(videos[0][: min(len(videos[0]), 4)])  # first call allocates buffers and kernels
    flush_frames = ENCODE_BATCHES_PER_FLUSH * encoder.config.batch_size
    groups = group_like_build([len(v) for v in videos], flush_frames, DEFAULT_FILES_PER_UNIT)
    with TreeMonitor() as monitor:
        for _ in range(repeats):
            for group in groups:
                encoder.encode_videos([videos[i] for i in group])
    frames = sum(len(v) for v in videos) * repeats
    return RateFigures(len(videos) * repeats, frames, monitor.usage.wall_s, monitor.usage.to_json())


# --- full build in a child process --------------------------------------------------------


class StageClock:
    """Wall seconds per build stage, accumulated by wrapped functions of the build modules."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.encoded_frames = 0  # frames passed to encode_videos, retries of a failed batch included

    def wrap(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started

        return timed

    def timed_iterator(self, stage: str, iterator: Iterator[Any]) -> Iterator[Any]:
        """Yield from ``iterator``, charging the time spent waiting for each item to ``stage``."""
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.seconds[stage] += time.perf_counter() - started
            yield item


# Stages of the build's main thread, in pipeline order. They do not nest, so their sum is
# at most the build's wall time, and "other" is the rest (planning, orchestration, cleanup).
STAGES = (
    "discover",  # walk the input folder and fingerprint every file
    "decode_wait",  # main thread blocked on DecodePool: worker start, decoding not yet done, pool shutdown
    "encode",  # ClipEncoder.encode_videos
    "write",  # each unit's embeddings and manifest part, then the merge of all units into shards and manifest
    "semantic_ids",  # residual k-means fit, code assignment, LMDB trie, tokenizer files
    "checksum_header",  # SHA-256 of the encoder weights (taken when the build plans its settings) and the header
    "publish",  # index.json with SHA-256 of every file, then the rename into place
)


# Functions that the build calls through a module's namespace, as (module, name, stage).
# A stage listing several names accepts whichever its module has. The map stage
# (decoding, encoding, unit files) lives in grdr_core.stages; planning, the merge and
# everything after it in grdr_core.build.
FUNCTION_STAGES = (
    ("grdr_core.build", "discover_videos", "discover"),
    ("grdr_core.stages", "write_unit", "write"),
    ("grdr_core.build", "_merge_units", "write"),
    ("grdr_core.build", "assign_baseline_ids", "semantic_ids"),
    ("grdr_core.build", "_plan_settings", "checksum_header"),
    ("grdr_core.build", "_header", "checksum_header"),
    ("grdr_core.build", "write_header", "publish"),
    ("grdr_core.build", "publish", "publish"),
)


@contextlib.contextmanager
def instrument_build(clock: StageClock, encoder: Any) -> Iterator[list[str]]:
    """Patch the build's collaborators so that each stage's time lands in ``clock``.

    Times the local engine, where the map stage runs in the build's own process. Yields
    the stages that could not be instrumented because the build modules no longer have
    the names they patch. Their time then shows up under "other".
    """
    import importlib
    from unittest import mock

    import grdr_core.stages as stages

    class TimedDecodePool(stages.DecodePool):
        def imap(self, paths: Any) -> Iterator[Any]:
            return clock.timed_iterator("decode_wait", super().imap(paths))

        def close(self) -> None:
            clock.wrap("decode_wait", super().close)()

    patches: list[tuple[Any, str, Any]] = [(stages, "DecodePool", TimedDecodePool)]
    instrumented = {"decode_wait", "encode"}
    for module_name, name, stage in FUNCTION_STAGES:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            patches.append((module, name, clock.wrap(stage, getattr(module, name))))
            instrumented.add(stage)
    missing = [stage for stage in STAGES if stage not in instrumented]
    if missing:
        logger.warning("The build modules have none of the functions timed for stages %s; their time counts as other", missing)

    with contextlib.ExitStack() as stack:
        for module, name, replacement in patches:
            stack.enter_context(mock.patch.object(module, name, replacement))
        timed_encode = clock.wrap("encode", encoder.encode_videos)

        def encode_and_count(videos: Any) -> Any:
            clock.encoded_frames += sum(len(video) for video in videos)
            return timed_encode(videos)

        stack.enter_context(mock.patch.object(encoder, "encode_videos", encode_and_count))
        yield missing


def run_child_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the encoder, run one ``build_index`` and return its figures (runs in the child process)."""
    from transformers.utils import logging as transformers_logging

    from grdr_core.build import BuildConfig, build_index
    from grdr_core.decode import DecodeConfig
    from grdr_core.features import ClipEncoder, EncoderConfig

    transformers_logging.disable_progress_bar()
    encoder_config = EncoderConfig(model=spec["model"], device=spec["device"], batch_size=spec["batch_size"])
    started = time.perf_counter()
    encoder = ClipEncoder(encoder_config)
    load_s = time.perf_counter() - started

    config = BuildConfig(
        input_root=Path(spec["input_root"]),
        out_dir=Path(spec["out_dir"]),
        decode=DecodeConfig(num_frames=spec["num_frames"]),
        encoder=encoder_config,
        workers=spec["workers"],
        overwrite=True,
    )
    clock = StageClock()
    with TreeMonitor(spec["sample_interval_s"]) as monitor, instrument_build(clock, encoder) as uninstrumented:
        summary = build_index(config, encoder=encoder)

    usage = monitor.usage
    stages = {stage: clock.seconds.get(stage, 0.0) for stage in STAGES}
    stages["other"] = max(0.0, usage.wall_s - sum(stages.values()))
    # ru_maxrss is in KiB on Linux and covers the whole child process, encoder load included.
    ru_maxrss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "videos": summary.discovered,
        "indexed": summary.indexed,
        "status_counts": summary.status_counts,
        "seconds": usage.wall_s,
        "videos_per_s": summary.discovered / usage.wall_s,
        "encoder_load_s": load_s,
        "parent_ru_maxrss_bytes": ru_maxrss_bytes,
        "encoded_frames": clock.encoded_frames,
        "stages_s": stages,
        "stages_not_instrumented": uninstrumented,
        "usage": usage.to_json(),
    }


def measure_build(spec: dict[str, Any], temp_dir: Path) -> dict[str, Any]:
    """Run ``run_child_build`` in a fresh interpreter, so each build's memory figures start clean."""
    spec_path = temp_dir / "child-spec.json"
    result_path = temp_dir / "child-result.json"
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    result_path.unlink(missing_ok=True)

    completed = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-spec", str(spec_path)], check=False)
    if completed.returncode != 0 or not result_path.exists():
        raise RuntimeError(
            f"The build child process failed with exit code {completed.returncode} for {spec['input_root']}; its error output is above"
        )
    return json.loads(result_path.read_text())


def make_copies_corpus(videos: list[Any], copies: int, directory: Path) -> Path:
    """Fill ``directory`` with ``copies`` symlinks to each video, under distinct names."""
    directory.mkdir(parents=True)
    for copy in range(copies):
        for video in videos:
            flat_name = video.video_id.replace("/", "__")
            os.symlink(video.uri, directory / f"copy{copy:04d}_{flat_name}")
    return directory


# --- report ------------------------------------------------------------------------------


def implied_videos_per_s(decode_rate: float, encode_rate: float) -> float:
    """Serial composition of decode and encode rates: each video waits for both, one after the other."""
    if decode_rate <= 0 or encode_rate <= 0:
        return 0.0
    return 1.0 / (1.0 / decode_rate + 1.0 / encode_rate)


def format_report(results: dict[str, Any]) -> str:
    """Render the results as plain-text tables."""
    decode = results["decode"]
    encode = results["encode"]
    settings = results["settings"]
    machine = results["machine"]
    lines = [
        f"machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), Python {machine['python']}",
        f"model: {settings['model_description']}",
        f"settings: {settings['workers']} decoder workers, {settings['num_frames']} frames per video, "
        f"short side {settings['short_side']} px, batch {settings['batch_size']} frames, device {settings['device']}",
        "",
        f"{'measurement':<34} {'videos':>6} {'frames':>7} {'seconds':>8} {'videos/s':>9} {'frames/s':>9} "
        f"{'CPU s/video':>11} {'other CPU':>9}",
    ]
    for label, figures in (
        ("decode, first pass (worker start)", decode["first_pass"]),
        (f"decode, steady ({settings['decode_repeats']} passes)", decode["steady"]),
        ("encode (frames in memory)", encode),
    ):
        lines.append(
            f"{label:<34} {figures['videos']:>6} {figures['frames']:>7} {figures['seconds']:>8.2f} "
            f"{figures['videos_per_s']:>9.3f} {figures['frames_per_s']:>9.2f} "
            f"{figures['usage']['tree_cpu_s'] / figures['videos']:>11.2f} {figures['usage']['other_cpu_share']:>9.0%}"
        )
    lines.append(f"implied serial build rate: {results['implied_videos_per_s']:.3f} videos/s")
    lines.append("")

    lines.append(
        f"{'build':<7} {'videos':>6} {'seconds':>8} {'videos/s':>9} {'/implied':>8} {'peak tree RSS':>14} "
        f"{'peak parent RSS':>16} {'ru_maxrss':>10} {'procs':>5} {'CPU s/video':>11} {'parent CPU s/frame':>18} {'other CPU':>9}"
    )
    for build in results["builds"]:
        usage = build["usage"]
        parent_cpu_per_frame = usage["parent_cpu_s"] / build["encoded_frames"] if build["encoded_frames"] else 0.0
        lines.append(
            f"{str(build['copies']) + 'x':<7} {build['videos']:>6} {build['seconds']:>8.1f} {build['videos_per_s']:>9.3f} "
            f"{build['ratio_to_implied']:>8.2f} {usage['peak_tree_rss_bytes'] / MIB:>10.0f} MiB "
            f"{usage['peak_parent_rss_bytes'] / MIB:>12.0f} MiB {build['parent_ru_maxrss_bytes'] / MIB:>6.0f} MiB "
            f"{usage['max_processes']:>5} {usage['tree_cpu_s'] / build['videos']:>11.2f} {parent_cpu_per_frame:>18.3f} "
            f"{usage['other_cpu_share']:>9.0%}"
        )
    lines.append("")

    lines.append("main-thread seconds per build stage:")
    names = [*STAGES, "other"]
    lines.append(f"{'build':<7} " + " ".join(f"{name:>15}" for name in names))
    for build in results["builds"]:
        stages = build["stages_s"]
        cells = [f"{stages[name]:>7.1f} ({stages[name] / build['seconds']:>4.0%})" for name in names]
        lines.append(f"{str(build['copies']) + 'x':<7} " + " ".join(f"{cell:>15}" for cell in cells))
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure decode-only, encode-only and full-build throughput and the build's peak memory."
    )
    parser.add_argument("--data", type=Path, help="folder of videos to index (searched recursively)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="CLIP directory or hub name to use instead of a random ViT-B/32-size CLIP")
    model.add_argument("--tiny", action="store_true", help="use the tiny random CLIP: a fast smoke run, not a measurement")
    parser.add_argument(
        "--workers", type=int, default=max(1, os.cpu_count() or 1), help="decoder worker processes (default: number of CPUs)"
    )
    parser.add_argument("--frames", type=int, default=12, help="frames sampled per video (default: 12)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per encoder forward pass (default: 64)")
    parser.add_argument("--device", default="cpu", help='torch device of the encoder, e.g. "cpu" or "cuda" (default: cpu)')
    parser.add_argument(
        "--scales",
        default="1,4,16",
        help="comma-separated copies of the folder to build for the memory-flatness runs (default: 1,4,16); "
        "1 copy is the full build on --data itself",
    )
    parser.add_argument("--decode-repeats", type=int, default=3, help="steady-state decode passes over the folder (default: 3)")
    parser.add_argument("--encode-repeats", type=int, default=1, help="encode-only passes over the decoded frames (default: 1)")
    parser.add_argument("--sample-interval", type=float, default=0.05, help="seconds between memory samples (default: 0.05)")
    parser.add_argument("--out-json", type=Path, help="write all figures and machine facts to this JSON file")
    parser.add_argument("--child-spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_spec is not None:
        return args
    if args.data is None:
        parser.error("--data is required")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a directory")
    for name in ("workers", "frames", "batch_size", "decode_repeats", "encode_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sample_interval <= 0:
        parser.error(f"--sample-interval must be > 0, got {args.sample_interval}")
    try:
        args.scales = sorted({int(value) for value in args.scales.split(",") if value.strip()})
    except ValueError:
        parser.error(f"--scales must be comma-separated integers, got {args.scales!r}")
    if not args.scales or args.scales[0] < 1:
        parser.error(f"--scales must list copy counts >= 1, got {args.scales}")
    return args


def run_benchmark(args: argparse.Namespace, temp_dir: Path) -> dict[str, Any]:
    """Run the four measurements and return every figure as one JSON-ready dictionary."""
    from transformers.utils import logging as transformers_logging

    from grdr_core.decode import DecodeConfig
    from grdr_core.discovery import discover_videos
    from grdr_core.features import ClipEncoder, EncoderConfig

    transformers_logging.disable_progress_bar()
    machine = machine_facts()
    model, model_description = prepare_model(args, temp_dir)
    encoder = ClipEncoder(EncoderConfig(model=model, device=args.device, batch_size=args.batch_size))
    decode_config = DecodeConfig(num_frames=args.frames, short_side=encoder.short_side)
    files = discover_videos(args.data)
    if not files:
        raise SystemExit(f"No video files found under {args.data}")

    logger.info("Decoding %d files with %d workers", len(files), args.workers)
    first_pass, steady, videos = measure_decode([f.uri for f in files], decode_config, args.workers, args.decode_repeats)
    if not videos:
        raise SystemExit(f"No video under {args.data} could be decoded")
    logger.info("Encoding %d frames of %d videos", sum(len(v) for v in videos), len(videos))
    encode = measure_encode(encoder, videos, args.encode_repeats)
    del videos, encoder
    implied = implied_videos_per_s(steady.videos_per_s, encode.videos_per_s)

    builds = []
    for copies in args.scales:
        input_root = args.data if copies == 1 else make_copies_corpus(files, copies, temp_dir / f"corpus-{copies}x")
        logger.info("Building an index of %d copies (%d files)", copies, copies * len(files))
        spec = {
            "input_root": str(input_root),
            "out_dir": str(temp_dir / "index"),
            "model": model,
            "device": args.device,
            "batch_size": args.batch_size,
            "num_frames": args.frames,
            "workers": args.workers,
            "sample_interval_s": args.sample_interval,
        }
        build = measure_build(spec, temp_dir)
        build["copies"] = copies
        build["implied_videos_per_s"] = implied
        build["ratio_to_implied"] = build["videos_per_s"] / implied if implied > 0 else 0.0
        builds.append(build)
        shutil.rmtree(temp_dir / "index", ignore_errors=True)
        if copies != 1:
            shutil.rmtree(input_root)

    return {
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "settings": {
            "data": str(args.data.resolve()),
            "files": len(files),
            "model": model if args.model else None,
            "model_description": model_description,
            "workers": args.workers,
            "num_frames": args.frames,
            "short_side": decode_config.short_side,
            "batch_size": args.batch_size,
            "device": args.device,
            "decode_repeats": args.decode_repeats,
            "encode_repeats": args.encode_repeats,
            "scales": args.scales,
            "sample_interval_s": args.sample_interval,
        },
        "decode": {"first_pass": first_pass.to_json(), "steady": steady.to_json()},
        "encode": encode.to_json(),
        "implied_videos_per_s": implied,
        "builds": builds,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    if args.child_spec is not None:
        spec = json.loads(args.child_spec.read_text())
        Path(spec["result_path"]).write_text(json.dumps(run_child_build(spec)))
        return

    temp_dir = Path(tempfile.mkdtemp(prefix="grdr-build-throughput-"))
    try:
        results = run_benchmark(args, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)

    print(format_report(results))
    if args.out_json is not None:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out_json}")


if __name__ == "__main__":
    main()
