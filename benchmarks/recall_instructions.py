"""Run generative recall (beam search and candidate pool) for a fixed number of queries.

Meant to run under ``valgrind --tool=callgrind``: the instruction count of a run with
``--queries N`` minus that of a run with ``--queries 0`` is the cost of N queries, a
measure that other jobs on a shared machine do not disturb. The queries are stored video
embeddings (a fixed random sample of 300), which decode like queries close to a video.
Both runs first run one untimed query, so the difference leaves out importing numba
and loading the compiled kernels. ``--numpy`` measures the NumPy reference path instead.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind \
        --callgrind-out-file=/tmp/cg.100 .venv/bin/python benchmarks/recall_instructions.py INDEX --queries 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from grdr_core.recall import beam_search_numpy, candidates_from_ids_numpy, recall_pools
from grdr_core.searcher import DEFAULT_BEAM, DEFAULT_MAX_CANDIDATES, Searcher

QUERY_SAMPLE = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index_dir", help="A trained grdr index.")
    parser.add_argument("--queries", type=int, default=100, help="Queries to run, one per call; 0 measures the fixed cost.")
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, help="Beam width.")
    parser.add_argument("--max-candidates", type=int, default=DEFAULT_MAX_CANDIDATES, help="Cap on the candidate pool.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the query sample.")
    parser.add_argument("--time", action="store_true", help="Also print the mean thread CPU milliseconds per query (run pinned, e.g. with taskset).")
    parser.add_argument("--numpy", action="store_true", help="Run beam_search_numpy and candidates_from_ids_numpy instead of the compiled kernels.")
    args = parser.parse_args()

    with Searcher(args.index_dir) as searcher:
        rng = np.random.default_rng(args.seed)
        count = len(searcher.index.shards)
        if not 0 <= args.queries <= min(QUERY_SAMPLE, count):
            parser.error(f"--queries must lie in [0, {min(QUERY_SAMPLE, count)}]")
        queries = searcher.index.shards.get(rng.choice(count, size=min(QUERY_SAMPLE, count), replace=False))
        retriever, trie = searcher.retriever, searcher.index.trie

        def recall(query: np.ndarray) -> None:
            if args.numpy:
                decoded = beam_search_numpy(retriever, trie, query[None], args.beam)[0]
                candidates_from_ids_numpy(trie, decoded, args.max_candidates)
            else:
                recall_pools(retriever, trie, query[None], args.beam, args.max_candidates)

        recall(queries[-1])
        started = time.thread_time()
        for query in queries[: args.queries]:
            recall(query)
        if args.time and args.queries:
            print(f"{(time.thread_time() - started) * 1000 / args.queries:.3f} ms thread CPU time per query")


if __name__ == "__main__":
    main()
