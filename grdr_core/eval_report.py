"""Markdown report of an evaluation, with PNG plots drawn by matplotlib's Agg backend.

The plots are drawn on ``matplotlib.figure.Figure`` objects without pyplot, so no
global backend or figure state is touched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from grdr_core.errors import InvalidInputError
from grdr_core.evaluation import METHODS

logger = logging.getLogger(__name__)

REPORT_NAME = "report.md"
SWEEP_PLOT = "recall_vs_candidates.png"
SCALING_PLOT = "latency_vs_corpus_size.png"
COLORS = {"grdr": "tab:red", "dense": "tab:blue", "faiss_hnsw": "tab:green", "faiss_ivfpq": "tab:purple"}


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def beam_labels(sweep: list[dict[str, Any]], min_gap: float = 0.04) -> list[tuple[float, str]]:
    """Return the x position and text of each beam label of ``plot_beam_sweep``.

    Beams past the candidate cap give the same point, and on small corpora neighbouring
    beams give nearly the same candidate count, so points closer than ``min_gap`` of the
    x range share one label, placed at the first of them.
    """
    points = sorted(sweep, key=lambda point: point["mean_candidates"])
    span = points[-1]["mean_candidates"] - points[0]["mean_candidates"]
    groups: list[list[dict[str, Any]]] = []
    for point in points:
        if groups and point["mean_candidates"] - groups[-1][0]["mean_candidates"] <= min_gap * span:
            groups[-1].append(point)
        else:
            groups.append([point])
    return [(group[0]["mean_candidates"], "beam " + ", ".join(str(point["beam"]) for point in group)) for group in groups]


def plot_beam_sweep(sweep: list[dict[str, Any]], dense_r10: float, path: Path) -> None:
    """Plot grdr's R@10 and candidate hit rate against the mean candidate count, one point per beam."""
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.add_subplot()
    x = [point["mean_candidates"] for point in sweep]
    axes.plot(x, [point["r10"] for point in sweep], "o-", color=COLORS["grdr"], label="grdr R@10")
    axes.plot(x, [point["candidate_hit"] for point in sweep], "s--", color="tab:orange", label="grdr candidate hit")
    axes.axhline(dense_r10, color=COLORS["dense"], linestyle=":", label="dense R@10")
    # Labels hang diagonally from one height below the R@10 curve, where the plot is
    # empty, so that neighbouring labels run parallel.
    label_height = min(point["r10"] for point in sweep)
    for position, text in beam_labels(sweep):
        axes.annotate(
            text,
            (position, label_height),
            textcoords="offset points",
            xytext=(0, -8),
            rotation=45,
            horizontalalignment="right",
            verticalalignment="top",
            rotation_mode="anchor",
            fontsize=8,
        )
    axes.set_xlabel("mean candidates reranked per query")
    axes.set_ylabel("share of queries")
    axes.set_ylim(0, 1.05)
    axes.set_title("Recall vs candidate count (beam sweep)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    _save(figure, path)


def plot_corpus_scaling(points: list[dict[str, Any]], path: Path) -> None:
    """Plot p50 latency per query against corpus size, one line per method."""
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.add_subplot()
    for method in METHODS:
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["videos"])
        if not mine:
            continue
        style = "o-" if len(mine) > 1 else "*"
        size = 6 if len(mine) > 1 else 14
        axes.plot([p["videos"] for p in mine], [p["latency_ms_p50"] for p in mine], style, markersize=size, color=COLORS[method], label=method)
    axes.set_xscale("log")
    axes.set_yscale("log")
    sizes = sorted({p["videos"] for p in points})
    axes.set_xticks(sizes, labels=[f"{n:,}" for n in sizes])
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel("videos in the corpus")
    axes.set_ylabel("p50 latency per query (ms, one thread)")
    axes.set_title("Latency vs corpus size")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    _save(figure, path)


def _methods_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| method | R@1 | R@5 | R@10 | R@50 | median rank | mean rank | p50 ms | p95 ms | bytes/video (all components) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in METHODS:
        block = result[name]
        lines.append(
            f"| {name} | {block['r1']:.3f} | {block['r5']:.3f} | {block['r10']:.3f} | {block['r50']:.3f} "
            f"| {block['median_rank']:.1f} | {block['mean_rank']:.1f} | {block['latency_ms_p50']:.3f} "
            f"| {block['latency_ms_p95']:.3f} | {sum(block['bytes_per_video'].values()):,.1f} |"
        )
    return lines


def _grdr_section(result: dict[str, Any]) -> list[str]:
    grdr = result["grdr"]
    lines = [
        "## grdr details",
        "",
        f"Candidate hit rate {grdr['candidate_hit']:.3f}, {grdr['mean_candidates']:.1f} candidates per query "
        f"(beam {grdr['settings']['beam']}, at most {grdr['settings']['max_candidates']}).",
        "",
        "| stage | p50 ms | p95 ms |",
        "|---|---:|---:|",
    ]
    lines += [f"| {stage} | {stats['p50']:.3f} | {stats['p95']:.3f} |" for stage, stats in grdr["latency_split_ms"].items()]
    lines += ["", "Bytes per video of each component:", "", "| component | bytes/video |", "|---|---:|"]
    for name in METHODS:
        for component, size in result[name]["bytes_per_video"].items():
            lines.append(f"| {name}: {component} | {size:,.1f} |")
    return lines


def _sweep_section(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Recall vs candidate count",
        "",
        f"grdr at each beam of the sweep, at most {result['grdr']['settings']['max_candidates']} candidates. "
        "The dotted line is exact dense search's R@10.",
        "",
        f"![recall vs candidates]({SWEEP_PLOT})",
        "",
        "| beam | prefix beam | mean candidates | candidate hit | R@10 |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['beam']} | {p['prefix_beam']} | {p['mean_candidates']:.1f} | {p['candidate_hit']:.3f} | {p['r10']:.3f} |" for p in result["beam_sweep"]
    ]
    return lines


def _scaling_section(result: dict[str, Any]) -> list[str]:
    scaling = result["latency_vs_corpus_size"]
    lines = [
        "## Latency vs corpus size",
        "",
        "Exact dense search and both FAISS indexes are rebuilt on random samples of the indexed videos "
        f"and timed with the first {scaling['queries']} queries. "
        "grdr is measured on the full index only, drawn as a star: its semantic IDs and retriever are "
        "trained for the whole corpus, and a sub-corpus would need a separate training run. "
        "Its recall cost is by design independent of the corpus size, but this report does not measure that.",
        "",
        f"![latency vs corpus size]({SCALING_PLOT})",
        "",
        "| method | videos | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {p['method']} | {p['videos']} | {p['latency_ms_p50']:.3f} | {p['latency_ms_p95']:.3f} |" for p in scaling["points"]]
    return lines


def write_report(result: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report.md`` and its two PNG plots into ``out_dir``; return the report's path.

    ``result`` is ``evaluation.summary``'s object of a run with sweeps.
    """
    if "beam_sweep" not in result or "latency_vs_corpus_size" not in result:
        raise InvalidInputError("The report needs an evaluation run with sweeps (evaluate(..., sweeps=True))")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"Report path {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_beam_sweep(result["beam_sweep"], result["dense"]["r10"], out_dir / SWEEP_PLOT)
    plot_corpus_scaling(result["latency_vs_corpus_size"]["points"], out_dir / SCALING_PLOT)

    queries = result["queries"]
    lines = [
        "# grdr evaluation",
        "",
        f"Index `{result['index']}`: {result['videos']} videos. Queries: {queries['evaluated']} {result['query_kind']} queries evaluated "
        f"of {queries['queries']} ({queries['rows']} rows); {queries['skipped_unknown']} skipped because no ground-truth video "
        f"is in the index, {queries['unknown_ids']} ground-truth ids not in the index.",
        "",
        *_methods_table(result),
        "",
        f"Ranks are positions in each method's top {result['depth']}. A query whose ground truth is not among them counts "
        f"as rank {result['videos'] + 1} in the median and mean rank. Latency is retrieval per query at k = {result['latency_k']} "
        "on one thread, without the text encoding.",
        "",
        *_grdr_section(result),
        "",
        *_sweep_section(result),
        "",
        *_scaling_section(result),
        "",
        "## Definitions",
        "",
        *[f"- **{name}**: {text}" for name, text in result["definitions"].items()],
        "",
        "## Method settings",
        "",
        *[f"- **{name}**: " + ", ".join(f"{key} {value}" for key, value in result[name]["settings"].items()) for name in METHODS],
        "",
    ]
    path = out_dir / REPORT_NAME
    path.write_text("\n".join(lines))
    logger.info("Wrote evaluation report %s", path)
    return path
