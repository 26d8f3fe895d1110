"""Compare the local, Beam and Ray engines on the same build: videos/s and peak memory.

Each engine runs the full ``build_index`` on the same corpus with the same encoder and
build settings, once per repeat, in a fresh child process:

- local: the map stage in the build process, with ``--workers`` decoder processes;
- Beam: DirectRunner with ``--direct_running_mode=multi_processing`` and
  ``--direct_num_workers`` = ``--workers``;
- Ray: a local Ray instance on 127.0.0.1 with ``--workers`` encoder actors.

Every Beam worker and Ray actor loads its own encoder and keeps its own pool of
``--engine-decoders`` decoder processes (default 1). So all three engines decode with
``--workers`` processes in total. Beam and Ray encode in ``--workers`` processes, the
local engine in one.

The child reports wall seconds, the time of the map stage (the only part an engine
runs), and the peak RSS of its whole process tree, sampled from the child itself: Beam's
SDK workers and Ray's GCS server, raylet, agents and workers are all its descendants
when Ray starts a local instance. The child checks that with a census of the processes
that carry the Ray session's directory in their command line. After each repeat the
parent checks that the three indexes are equal. A run on ``--startup-copies`` copies
of the folder gives the start-up cost, as the intercept of wall seconds against videos.

By default the corpus is symlinked copies of the 11 MSVD development clips and the
encoder a random-weight CLIP with the ViT-B/32 architecture (see build_throughput.py).
Example::

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/engine_overhead.py --copies 3 --out-json bench-out/engines.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# The helpers of build_throughput.py are shared by import. Like that script, this one
# imports torch, Beam, Ray and grdr_core only inside functions, because multiprocessing
# imports the main script into every decoder worker.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_throughput as shared  # noqa: E402

logger = logging.getLogger("engine_overhead")

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "msvd" / "clips"
ENGINES = ("local", "beam", "ray")
MIB = 1024 * 1024


# --- child process: one build on one engine ----------------------------------------------


def make_map_runner(engine: str, workers: int, encoder: Any) -> Any:
    """Return the ``build_index`` map runner of ``engine`` with ``workers`` workers."""
    if engine == "local":
        from grdr_core.stages import run_local

        # The same call build_index makes without a map runner, so that every engine's
        # map stage is timed by the same wrapper.
        return lambda settings, units: run_local(settings, units, encoder=encoder)
    if engine == "beam":
        from grdr_pipelines.beam_build import beam_map_runner

        return beam_map_runner(
            ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        )
    if engine == "ray":
        from grdr_pipelines.ray_build import ray_map_runner

        return ray_map_runner(address=None, actors=workers)
    raise ValueError(f"Unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def process_label(process: psutil.Process) -> str:
    """Return a short name for a process: a Ray process title, a Python module or script, or the executable."""
    try:
        cmdline = process.cmdline()
        name = process.name()
    except psutil.Error:
        return "exited"
    if not cmdline:
        return name
    first = cmdline[0]
    if first.startswith("ray::"):
        return first.split()[0]  # a Ray worker's process title, e.g. ray::IDLE or ray::_UnitActor
    if "python" not in os.path.basename(first):
        return os.path.basename(first)
    arguments = cmdline[1:]
    for flag in ("-m", "-c"):
        if flag in arguments and arguments.index(flag) + 1 < len(arguments):
            code = arguments[arguments.index(flag) + 1]
            return f"python {flag} {code.split(';')[0].strip()[:60]}"
    scripts = [argument for argument in arguments if not argument.startswith("-")]
    return f"python {os.path.basename(scripts[0])}" if scripts else "python"


class ProcessCensus:
    """Record, every ``interval_s``, which processes make up this process's tree.

    Keeps the sample with the largest summed RSS, grouped by ``process_label``. While a
    Ray instance started by this process is up, it also lists Ray processes anywhere on
    the machine that are not in the tree, because their memory would be missing from the
    tree's figures. A Ray process is one whose command line names the Ray session's
    directory, or one with a Ray worker's "ray::" title that started after this process.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.root = psutil.Process()
        self.peak_rss = 0
        self.peak_groups: dict[str, dict[str, int]] = {}
        self.ray_session_dir: str | None = None
        self.ray_processes_in_tree: set[str] = set()
        self.ray_processes_outside_tree: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-census", daemon=True)

    def __enter__(self) -> ProcessCensus:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        groups: dict[str, dict[str, int]] = {}
        total = 0
        for process in tree:
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            group = groups.setdefault(process_label(process), {"processes": 0, "rss_bytes": 0})
            group["processes"] += 1
            group["rss_bytes"] += rss
            total += rss
        if total > self.peak_rss:
            self.peak_rss = total
            self.peak_groups = groups
        self._check_ray({process.pid for process in tree})

    def _check_ray(self, tree_pids: set[int]) -> None:
        session_dir = self.ray_session_dir or _ray_session_dir()
        if session_dir is None:
            return
        self.ray_session_dir = session_dir
        session_name = os.path.basename(session_dir)
        started = self.root.create_time()
        for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            # Ray workers replace their command line with a "ray::" title that names no
            # session, so any such process started after this one counts as a suspect.
            # It may also belong to another Ray instance on the machine.
            is_ours = session_name in cmdline
            is_ray_worker = cmdline.startswith("ray::") and (process.info["create_time"] or 0) >= started
            if not (is_ours or is_ray_worker):
                continue
            label = process_label(process)
            if process.info["pid"] in tree_pids:
                self.ray_processes_in_tree.add(label)
            else:
                self.ray_processes_outside_tree.add(f"{label} (pid {process.info['pid']})")

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_rss_bytes": self.peak_rss,
            "peak_groups": dict(sorted(self.peak_groups.items(), key=lambda item: -item[1]["rss_bytes"])),
            "ray_session_dir": self.ray_session_dir,
            "ray_processes_in_tree": sorted(self.ray_processes_in_tree),
            "ray_processes_outside_tree": sorted(self.ray_processes_outside_tree),
        }


def _ray_session_dir() -> str | None:
    ray = sys.modules.get("ray")
    try:
        if ray is None or not ray.is_initialized():
            return None
        return ray._private.worker._global_node.get_session_dir_path()
    except AttributeError:  # ray is still being imported, or a version without this private attribute
        return None


class MapStageClock:
    """Time a map runner's call and the completion of the first unit within it."""

    def __init__(self, runner: Any, poll_s: float = 0.1) -> None:
        self.runner = runner
        self.poll_s = poll_s
        self.started: float | None = None
        self.ended: float | None = None
        self.first_unit: float | None = None

    def __call__(self, settings: Any, units: list[Any]) -> None:
        from grdr_schemas.build import WorkLayout

        work = WorkLayout(Path(settings.work_dir))
        done = threading.Event()

        def watch() -> None:
            while not done.wait(self.poll_s):
                if any(work.unit_marker(unit.number).is_file() for unit in units):
                    self.first_unit = time.perf_counter()
                    return

        watcher = threading.Thread(target=watch, name="first-unit-watch", daemon=True)
        self.started = time.perf_counter()
        watcher.start()
        try:
            self.runner(settings, units)
        finally:
            self.ended = time.perf_counter()
            done.set()
            watcher.join()


def run_child_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the encoder, run one ``build_index`` on one engine and return its figures."""
    from transformers.utils import logging as transformers_logging

    from grdr_core.build import BuildConfig, build_index
    from grdr_core.decode import DecodeConfig
    from grdr_core.features import ClipEncoder, EncoderConfig

    transformers_logging.disable_progress_bar()
    load_average_before = os.getloadavg()
    encoder_config = EncoderConfig(model=spec["model"], device=spec["device"], batch_size=spec["batch_size"])
    started = time.perf_counter()
    encoder = ClipEncoder(encoder_config)
    load_s = time.perf_counter() - started

    engine = spec["engine"]
    decoders = spec["workers"] if engine == "local" else spec["engine_decoders"]
    config = BuildConfig(
        input_root=Path(spec["input_root"]),
        out_dir=Path(spec["out_dir"]),
        decode=DecodeConfig(num_frames=spec["num_frames"]),
        encoder=encoder_config,
        workers=decoders,
        files_per_unit=spec["files_per_unit"],
    )
    clock = MapStageClock(make_map_runner(engine, spec["workers"], encoder))
    with shared.TreeMonitor(spec["sample_interval_s"]) as monitor, ProcessCensus() as census:
        build_started = time.perf_counter()
        summary = build_index(config, encoder=encoder, map_runner=clock)
        build_ended = time.perf_counter()

    usage = monitor.usage
    seconds = build_ended - build_started
    assert clock.started is not None and clock.ended is not None  # every unit was pending
    return {
        "engine": engine,
        "videos": summary.discovered,
        "indexed": summary.indexed,
        "units": summary.units,
        "status_counts": summary.status_counts,
        "decoders_per_map_worker": decoders,
        "seconds": seconds,
        "videos_per_s": summary.discovered / seconds,
        "encoder_load_s": load_s,
        "before_map_s": clock.started - build_started,
        "map_s": clock.ended - clock.started,
        "first_unit_s": (clock.first_unit - clock.started) if clock.first_unit is not None else None,
        "after_map_s": build_ended - clock.ended,
        "usage": usage.to_json(),
        "census": census.to_json(),
        "load_average_before": [round(x, 2) for x in load_average_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


# --- parent process: corpora, runs, checks ------------------------------------------------


def measure_engine(spec: dict[str, Any], temp_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``run_child_build`` in a fresh interpreter; a failure is returned as ``{"error": ...}``."""
    spec_path = temp_dir / "child-spec.json"
    result_path = temp_dir / "child-result.json"
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    result_path.unlink(missing_ok=True)
    # Ray would otherwise send usage statistics to an outside server.
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, os.path.abspath(__file__), "--child-spec", str(spec_path)]
    try:
        completed = subprocess.run(command, check=False, env=environment, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"engine": spec["engine"], "error": f"timed out after {timeout_s:.0f} s"}
    if completed.returncode != 0 or not result_path.exists():
        return {"engine": spec["engine"], "error": f"child exited with code {completed.returncode}; its output is above"}
    return json.loads(result_path.read_text())


def load_index_comparison() -> Any:
    """Return ``assert_same_index`` from tests/index_contents.py, the comparison the engine tests use."""
    path = REPOSITORY / "tests" / "index_contents.py"
    module_spec = importlib.util.spec_from_file_location("index_contents", path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"Cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.assert_same_index


def compare_indexes(outputs: dict[str, Path]) -> dict[str, str]:
    """Compare each engine's index with the local engine's; return "equal" or the first difference."""
    assert_same_index = load_index_comparison()
    verdicts: dict[str, str] = {}
    for engine, out in outputs.items():
        if engine == "local":
            continue
        if "local" not in outputs:
            verdicts[engine] = "not compared: no local index"
            continue
        try:
            assert_same_index(out, outputs["local"])
        except AssertionError as exc:
            verdicts[engine] = f"different: {exc or 'assertion failed'}"
        else:
            verdicts[engine] = "equal"
    return verdicts


def run_round(
    args: argparse.Namespace, base_spec: dict[str, Any], corpus: Path, copies: int, repeat: int, temp_dir: Path
) -> list[dict[str, Any]]:
    """Build ``corpus`` once per engine, compare the indexes, and return one result per engine."""
    # Rotating the order spreads slow drifts of the machine's load over all engines.
    order = [args.engines[(i + repeat) % len(args.engines)] for i in range(len(args.engines))]
    outputs: dict[str, Path] = {}
    results = []
    for engine in order:
        out_dir = temp_dir / f"index-{engine}"
        shutil.rmtree(out_dir, ignore_errors=True)
        logger.info("Building %d copies with the %s engine (repeat %d)", copies, engine, repeat + 1)
        result = measure_engine(
            {**base_spec, "engine": engine, "input_root": str(corpus), "out_dir": str(out_dir)}, temp_dir, args.child_timeout
        )
        result.update(copies=copies, repeat=repeat)
        if "error" in result:
            logger.error("The %s build failed: %s", engine, result["error"])
        else:
            outputs[engine] = out_dir
            logger.info("%s: %.1f s, %.3f videos/s", engine, result["seconds"], result["videos_per_s"])
        results.append(result)
    verdicts = compare_indexes(outputs)
    for result in results:
        result["index_vs_local"] = verdicts.get(result["engine"], "reference" if result["engine"] == "local" else "not built")
    for out_dir in outputs.values():
        shutil.rmtree(out_dir, ignore_errors=True)
    return results


def summarize(builds: list[dict[str, Any]], copies: int, engines: list[str]) -> dict[str, Any]:
    """Median seconds per engine at ``copies``, and the overhead over local from same-repeat pairs."""
    done = [build for build in builds if build["copies"] == copies and "error" not in build]
    summary: dict[str, Any] = {}
    for engine in engines:
        runs = [build for build in done if build["engine"] == engine]
        if not runs:
            continue
        ratios = []
        for run in runs:
            local = [b for b in done if b["engine"] == "local" and b["repeat"] == run["repeat"]]
            if local:
                ratios.append(run["seconds"] / local[0]["seconds"])
        summary[engine] = {
            "runs": len(runs),
            "median_seconds": statistics.median(run["seconds"] for run in runs),
            "median_videos_per_s": statistics.median(run["videos_per_s"] for run in runs),
            "overhead_vs_local": (statistics.median(ratios) - 1.0) if ratios else None,
            "max_peak_tree_rss_bytes": max(run["usage"]["peak_tree_rss_bytes"] for run in runs),
        }
    return summary


def startup_estimates(builds: list[dict[str, Any]], small: int, large: int, engines: list[str]) -> dict[str, float]:
    """Intercept of wall seconds against videos through the median runs at two corpus sizes."""
    estimates = {}
    for engine in engines:
        points = {}
        for copies in (small, large):
            runs = [b for b in builds if b["engine"] == engine and b["copies"] == copies and "error" not in b]
            if runs:
                points[copies] = (runs[0]["videos"], statistics.median(run["seconds"] for run in runs))
        if len(points) == 2 and points[small][0] != points[large][0]:
            (n1, t1), (n2, t2) = points[small], points[large]
            slope = (t2 - t1) / (n2 - n1)
            estimates[engine] = t1 - slope * n1
    return estimates


def format_report(results: dict[str, Any]) -> str:
    """Render the results as plain-text tables."""
    settings = results["settings"]
    machine = results["machine"]
    lines = [
        f"machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"torch {machine['torch']}, Python {machine['python']}, load average at start {machine['load_average_at_start']}",
        f"model: {settings['model_description']}",
        f"settings: {settings['workers']} workers per engine, {settings['engine_decoders']} decoder(s) per Beam worker "
        f"or Ray actor, {settings['files_per_unit']} files per unit, {settings['num_frames']} frames per video, "
        f"batch {settings['batch_size']} frames",
        "",
        f"{'engine':<6} {'copies':>6} {'rep':>3} {'videos':>6} {'seconds':>8} {'videos/s':>8} {'vs local':>8} "
        f"{'before map':>10} {'map':>7} {'1st unit':>8} {'after map':>9} {'peak tree RSS':>13} {'procs':>5} "
        f"{'CPU s/video':>11} {'other CPU':>9}  index",
    ]
    for build in results["builds"]:
        if "error" in build:
            lines.append(f"{build['engine']:<6} {build['copies']:>6} {build['repeat'] + 1:>3}  failed: {build['error']}")
            continue
        local = [
            b for b in results["builds"]
            if b["engine"] == "local" and b["copies"] == build["copies"] and b["repeat"] == build["repeat"] and "error" not in b
        ]
        versus = f"{build['seconds'] / local[0]['seconds'] - 1:>+8.0%}" if local else f"{'':>8}"
        usage = build["usage"]
        first_unit = f"{build['first_unit_s']:>8.1f}" if build["first_unit_s"] is not None else f"{'':>8}"
        lines.append(
            f"{build['engine']:<6} {build['copies']:>6} {build['repeat'] + 1:>3} {build['videos']:>6} {build['seconds']:>8.1f} "
            f"{build['videos_per_s']:>8.3f} {versus} {build['before_map_s']:>10.1f} {build['map_s']:>7.1f} {first_unit} "
            f"{build['after_map_s']:>9.1f} {usage['peak_tree_rss_bytes'] / MIB:>9.0f} MiB {usage['max_processes']:>5} "
            f"{usage['tree_cpu_s'] / build['videos']:>11.2f} {usage['other_cpu_share']:>9.0%}  {build['index_vs_local']}"
        )
    lines.append("")
    for copies, summary in results["summary"].items():
        lines.append(f"median over repeats, {copies} copies:")
        for engine, figures in summary.items():
            overhead = figures["overhead_vs_local"]
            lines.append(
                f"  {engine:<6} {figures['median_seconds']:>7.1f} s {figures['median_videos_per_s']:>7.3f} videos/s "
                f"overhead {'' if overhead is None else f'{overhead:+.0%}':>5}  "
                f"peak tree RSS {figures['max_peak_tree_rss_bytes'] / MIB:.0f} MiB ({figures['runs']} runs)"
            )
    if results["startup_s"]:
        lines.append(
            "start-up estimate (intercept of seconds against videos): "
            + ", ".join(f"{engine} {seconds:.1f} s" for engine, seconds in results["startup_s"].items())
        )
    lines.append("")
    lines.append("process tree at its peak RSS (largest build per engine):")
    largest = max(build["copies"] for build in results["builds"])
    for build in results["builds"]:
        if "error" in build or build["copies"] != largest or build["repeat"] != 0:
            continue
        census = build["census"]
        groups = ", ".join(
            f"{label} x{group['processes']} {group['rss_bytes'] / MIB:.0f} MiB" for label, group in census["peak_groups"].items()
        )
        lines.append(f"  {build['engine']}: {groups}")
        if census["ray_session_dir"]:
            outside = ", ".join(census["ray_processes_outside_tree"]) or "none"
            lines.append(
                f"  ray processes of {census['ray_session_dir']} in the tree: {', '.join(census['ray_processes_in_tree'])}; "
                f"outside it: {outside}"
            )
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the same corpus with the local, Beam and Ray engines; compare videos/s and peak memory."
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"folder of videos that the corpus copies (default: {DEFAULT_DATA})"
    )
    parser.add_argument("--copies", type=int, default=3, help="symlinked copies of --data in the measured corpus (default: 3)")
    parser.add_argument(
        "--startup-copies",
        type=int,
        default=1,
        help="copies in a second, smaller corpus that gives the start-up cost; 0 skips it (default: 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, os.cpu_count() or 1),
        help="local decoder processes, Beam DirectRunner workers and Ray actors (default: number of CPUs)",
    )
    parser.add_argument(
        "--engine-decoders", type=int, default=1, help="decoder processes of each Beam worker and Ray actor (default: 1)"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated engines to run (default: {','.join(ENGINES)})")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="CLIP directory or hub name to use instead of a random ViT-B/32-size CLIP")
    model.add_argument("--tiny", action="store_true", help="use the tiny random CLIP: measures orchestration, not a real encoder")
    parser.add_argument("--repeats", type=int, default=1, help="builds per engine on the measured corpus (default: 1)")
    parser.add_argument("--files-per-unit", type=int, default=8, help="files per map-stage unit (default: 8)")
    parser.add_argument("--frames", type=int, default=12, help="frames sampled per video (default: 12)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per encoder forward pass (default: 64)")
    parser.add_argument("--device", default="cpu", help='torch device of the encoder, e.g. "cpu" or "cuda" (default: cpu)')
    parser.add_argument("--sample-interval", type=float, default=0.1, help="seconds between memory samples (default: 0.1)")
    parser.add_argument("--child-timeout", type=float, default=3600.0, help="seconds before a build is stopped (default: 3600)")
    parser.add_argument("--out-json", type=Path, help="write all figures and machine facts to this JSON file")
    parser.add_argument("--child-spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_spec is not None:
        return args
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a directory")
    for name in ("copies", "workers", "engine_decoders", "repeats", "files_per_unit", "frames", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.startup_copies < 0 or args.startup_copies >= args.copies:
        parser.error(f"--startup-copies must be 0 or between 1 and --copies - 1, got {args.startup_copies}")
    if args.sample_interval <= 0 or args.child_timeout <= 0:
        parser.error("--sample-interval and --child-timeout must be > 0")
    args.engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    unknown = [engine for engine in args.engines if engine not in ENGINES]
    if unknown or not args.engines:
        parser.error(f"--engines must list some of {', '.join(ENGINES)}, got {args.engines}")
    return args


def run_benchmark(args: argparse.Namespace, temp_dir: Path) -> dict[str, Any]:
    """Build the corpora with every engine and return every figure as one JSON-ready dictionary."""
    from grdr_core.discovery import discover_videos

    machine = shared.machine_facts()
    model, model_description = shared.prepare_model(args, temp_dir)
    files = discover_videos(args.data)
    if not files:
        raise SystemExit(f"No video files found under {args.data}")
    base_spec = {
        "model": model,
        "device": args.device,
        "batch_size": args.batch_size,
        "num_frames": args.frames,
        "workers": args.workers,
        "engine_decoders": args.engine_decoders,
        "files_per_unit": args.files_per_unit,
        "sample_interval_s": args.sample_interval,
    }

    builds: list[dict[str, Any]] = []
    rounds = [(args.startup_copies, 0)] if args.startup_copies else []
    rounds += [(args.copies, repeat) for repeat in range(args.repeats)]
    for copies, repeat in rounds:
        # Each copy's files get their own names, so every video_id in the corpus is distinct.
        corpus = temp_dir / f"corpus-{copies}x"
        if not corpus.exists():
            shared.make_copies_corpus(files, copies, corpus)
        builds += run_round(args, base_spec, corpus, copies, repeat, temp_dir)

    sizes = sorted({args.copies, *([args.startup_copies] if args.startup_copies else [])})
    return {
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "settings": {
            "data": str(args.data.resolve()),
            "files_per_copy": len(files),
            "model": model if args.model else None,
            "model_description": model_description,
            "engines": args.engines,
            "copies": args.copies,
            "startup_copies": args.startup_copies,
            "repeats": args.repeats,
            "workers": args.workers,
            "engine_decoders": args.engine_decoders,
            "files_per_unit": args.files_per_unit,
            "num_frames": args.frames,
            "batch_size": args.batch_size,
            "device": args.device,
            "sample_interval_s": args.sample_interval,
        },
        "builds": builds,
        "summary": {str(copies): summarize(builds, copies, args.engines) for copies in sizes},
        "startup_s": startup_estimates(builds, args.startup_copies, args.copies, args.engines) if args.startup_copies else {},
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

    temp_dir = Path(tempfile.mkdtemp(prefix="grdr-engine-overhead-"))
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
