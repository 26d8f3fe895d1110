"""Synthetic retrieval corpus with known structure, for tests and ablations of semantic IDs.

``C`` concepts are random unit vectors in ``D`` dimensions. Each video mixes a few
concepts, and each caption names one concept of its video, so a video matches several
distinct queries, the case that multi-view semantic IDs are meant for. A private unit
vector per video, added to the video and, at a smaller weight, to its captions, lets a
caption identify its video among the videos that share the concept.

``evaluate_recall`` measures generative recall on such a corpus end to end: it writes
the trie of the assigned codes, runs trie-constrained beam search and reranks the
candidates densely.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grdr_core.errors import InvalidInputError
from grdr_core.recall import beam_search, candidates_from_ids
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.trie import TrieReader, write_trie


@dataclass(frozen=True)
class SyntheticConfig:
    num_videos: int = 500
    num_concepts: int = 48
    dim: int = 64
    concepts_per_video: int = 3
    train_captions_per_concept: int = 1  # per concept of each video
    test_captions_per_video: int = 1  # each names one of the video's concepts, drawn at random
    video_noise: float = 0.1  # expected norm of the isotropic noise added to a unit vector
    caption_noise: float = 0.3
    identity_weight: float = 0.6  # weight of the video's private vector in the video embedding
    caption_identity_weight: float = 0.5  # weight of the same vector in each caption
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_videos < 1 or self.num_concepts < 1 or self.dim < 2:
            raise InvalidInputError(
                f"num_videos and num_concepts must be >= 1 and dim >= 2, got {self.num_videos}, {self.num_concepts}, {self.dim}"
            )
        if not 1 <= self.concepts_per_video <= self.num_concepts:
            raise InvalidInputError(f"concepts_per_video must lie in [1, {self.num_concepts}], got {self.concepts_per_video}")
        if self.train_captions_per_concept < 1 or self.test_captions_per_video < 0:
            raise InvalidInputError(
                "train_captions_per_concept must be >= 1 and test_captions_per_video >= 0, "
                f"got {self.train_captions_per_concept} and {self.test_captions_per_video}"
            )


@dataclass(frozen=True, eq=False)
class SyntheticCorpus:
    """Embeddings and ground truth of a synthetic corpus. Every embedding row is float32 with unit L2 norm."""

    video_embeddings: np.ndarray  # (N, D)
    caption_ordinals: np.ndarray  # (M,) int64, the video each caption describes
    caption_embeddings: np.ndarray  # (M, D)
    caption_concepts: np.ndarray  # (M,) int64, the concept each caption names
    video_concepts: np.ndarray  # (N, concepts_per_video) int64
    concepts: np.ndarray  # (C, D)
    train_captions: np.ndarray  # int64 indices into the caption arrays
    test_captions: np.ndarray  # int64 indices, disjoint from train_captions


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def make_synthetic_corpus(config: SyntheticConfig = SyntheticConfig()) -> SyntheticCorpus:
    """Generate a corpus from ``config``. The same config gives identical arrays."""
    rng = np.random.default_rng(config.seed)
    concepts = _unit_rows(rng.normal(size=(config.num_concepts, config.dim)))
    identities = _unit_rows(rng.normal(size=(config.num_videos, config.dim)))

    # Concept weights in [0.6, 1.0] keep every concept of a video clearly present.
    video_concepts = np.stack([rng.choice(config.num_concepts, config.concepts_per_video, replace=False) for _ in range(config.num_videos)])
    weights = rng.uniform(0.6, 1.0, size=video_concepts.shape)
    mixtures = np.einsum("nc,ncd->nd", weights, concepts[video_concepts]) / np.sqrt(config.concepts_per_video)
    # Noise scaled by 1/sqrt(D) has an expected norm close to video_noise.
    noise = config.video_noise * rng.normal(size=mixtures.shape) / np.sqrt(config.dim)
    video_embeddings = _unit_rows(_unit_rows(mixtures) + config.identity_weight * identities + noise)

    ordinals: list[int] = []
    named: list[int] = []
    is_test: list[bool] = []
    for video in range(config.num_videos):
        for concept in video_concepts[video]:
            for _ in range(config.train_captions_per_concept):
                ordinals.append(video)
                named.append(int(concept))
                is_test.append(False)
        for concept in rng.choice(video_concepts[video], config.test_captions_per_video):
            ordinals.append(video)
            named.append(int(concept))
            is_test.append(True)

    caption_ordinals = np.asarray(ordinals, dtype=np.int64)
    caption_concepts = np.asarray(named, dtype=np.int64)
    caption_noise = config.caption_noise * rng.normal(size=(len(ordinals), config.dim)) / np.sqrt(config.dim)
    caption_embeddings = _unit_rows(
        concepts[caption_concepts] + config.caption_identity_weight * identities[caption_ordinals] + caption_noise
    )
    test_mask = np.asarray(is_test)
    return SyntheticCorpus(
        video_embeddings=video_embeddings,
        caption_ordinals=caption_ordinals,
        caption_embeddings=caption_embeddings,
        caption_concepts=caption_concepts,
        video_concepts=video_concepts.astype(np.int64),
        concepts=concepts,
        train_captions=np.flatnonzero(~test_mask).astype(np.int64),
        test_captions=np.flatnonzero(test_mask).astype(np.int64),
    )


@dataclass(frozen=True)
class RecallReport:
    hit_rate: float  # fraction of queries whose video is in the candidate pool
    rerank_top1_given_hit: float  # of those queries, the fraction whose video ranks first after rerank
    top1: float  # end to end: the fraction whose video ranks first (= hit_rate * rerank_top1_given_hit)
    mean_candidates: float  # mean candidate pool size


def evaluate_recall(
    runtime: RetrieverRuntime,
    codes: np.ndarray,
    codebook_sizes: list[int],
    video_embeddings: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    beam: int = 20,
    max_candidates: int = 1000,
) -> RecallReport:
    """Measure generative recall and dense reranking for ``(B, Dq)`` queries of videos ``truth`` ``(B,)``.

    The trie of ``codes`` ``(N, V, L)`` is written to a temporary file. Reranking scores
    candidates by the dot product of query and video embedding, so the queries must live
    in the video embedding space (true of ``make_synthetic_corpus``).
    """
    with tempfile.TemporaryDirectory(prefix="grdr-recall-") as workdir:
        trie_path = Path(workdir) / "trie.lmdb"
        write_trie(trie_path, codes, codebook_sizes)
        trie = TrieReader(trie_path)
        try:
            decoded = beam_search(runtime, trie, queries, beam)
            pools = [candidates_from_ids(trie, ids, max_candidates) for ids in decoded]
        finally:
            trie.close()

    hits = 0
    top1 = 0
    for query, video, pool in zip(queries, truth, pools):
        if video not in pool:
            continue
        hits += 1
        scores = video_embeddings[pool] @ query
        top1 += int(pool[int(np.argmax(scores))] == video)
    return RecallReport(
        hit_rate=hits / len(queries),
        rerank_top1_given_hit=top1 / hits if hits else 0.0,
        top1=top1 / len(queries),
        mean_candidates=float(np.mean([len(p) for p in pools])),
    )
