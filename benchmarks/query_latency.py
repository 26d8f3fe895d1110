"""Time grdr queries one per call on a trained index: total, recall and rerank latency.

The queries are embeddings from a Parquet file with an ``embedding`` column (for example
the ``test_queries.parquet`` that ``msvd_eval.py`` writes), so text encoding is left out.
A fixed random sample of them runs through ``Searcher.search_embeddings`` after untimed
warm-up queries, which also import numba and load the compiled kernels. Run it twice with
two code versions, or two kernel variants, to compare them on the same index:

    .venv/bin/python benchmarks/query_latency.py bench-out/msvd/indexes/default/full \
        bench-out/msvd/data/test_queries.parquet --queries 2000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow.parquet as pq

from grdr_core.query_checks import DEFAULT_BEAM, DEFAULT_LEVEL_DECAY, DEFAULT_MAX_CANDIDATES, resolve_prefix_beam
from grdr_core.searcher import Searcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index_dir", help="A trained grdr index.")
    parser.add_argument("queries_file", help="Parquet file with an embedding column.")
    parser.add_argument("--queries", type=int, default=2000, help="Queries to time (a random sample of the file).")
    parser.add_argument("--warmup", type=int, default=50, help="Untimed queries before timing.")
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, help="Beam width.")
    parser.add_argument("--max-candidates", type=int, default=DEFAULT_MAX_CANDIDATES, help="Cap on the candidate pool.")
    parser.add_argument("--level-decay", type=float, default=DEFAULT_LEVEL_DECAY, help="Factor on each deeper level's logits in beam search (see grdr-index query --help).")
    parser.add_argument("--prefix-beam", type=int, default=None, help="Prefixes kept at each level before the last (see grdr-index query --help) [default: the beam].")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the query sample.")
    args = parser.parse_args()

    table = pq.read_table(args.queries_file, columns=["embedding"])
    queries = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    sample = np.random.default_rng(args.seed).choice(len(queries), min(args.queries, len(queries)), replace=False)
    queries = queries[sample]

    totals, recall, rerank = [], [], []
    with Searcher(args.index_dir) as searcher:
        for query in queries[: args.warmup]:
            searcher.search_embeddings(query[None], k=10, beam=args.beam, max_candidates=args.max_candidates, level_decay=args.level_decay, prefix_beam=args.prefix_beam)
        for query in queries:
            started = time.perf_counter()
            (result,) = searcher.search_embeddings(query[None], k=10, beam=args.beam, max_candidates=args.max_candidates, level_decay=args.level_decay, prefix_beam=args.prefix_beam)
            totals.append((time.perf_counter() - started) * 1000)
            recall.append(result.timings_ms["recall"])
            rerank.append(result.timings_ms["rerank"])

    def percentiles(values: list[float]) -> dict[str, float]:
        return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}

    report = {
        "queries": len(queries),
        "beam": args.beam,
        "max_candidates": args.max_candidates,
        "level_decay": args.level_decay,
        "prefix_beam": resolve_prefix_beam(args.beam, args.prefix_beam),
        "total_ms": percentiles(totals),
        "recall_ms": percentiles(recall),
        "rerank_ms": percentiles(rerank),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
