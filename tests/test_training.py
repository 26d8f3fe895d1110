"""Multi-view tokenizer and generative retriever: recall quality, determinism, persistence, parity.

Quality tests train on the default synthetic corpus (500 videos, 48 concepts, 64-d,
3 concepts per video, 3 training captions and 1 held-out caption per video) with
``RECALL_CONFIG``. The measured numbers in the comments come from torch 2.13.0 CPU on a
2-core x86-64 machine. Each assert keeps a margin below them for other BLAS builds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from grdr_core.errors import InvalidInputError
from grdr_core.multiview import MultiViewTokenizer, assign_multiview_codes, id_statistics, repair_duplicate_ids, route_captions, sinkhorn_codes
from grdr_core.quantize import QuantizerConfig, ResidualKMeansTokenizer
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.testing.synthetic import RecallReport, SyntheticConfig, SyntheticCorpus, evaluate_recall, make_synthetic_corpus
from grdr_core.training import TrainConfig, TrainedModel, train, train_retriever_for_codes

# The quality tests compare the method's mechanisms on captions alone, without video
# queries, which test_video_queries_teach_the_ids_of_uncaptioned_videos measures.
RECALL_CONFIG = TrainConfig(codes_per_level=16, epochs_per_level=6, polish_epochs=3, batch_size=128, hidden=128, video_queries=0.0)
SMALL_CORPUS = SyntheticConfig(num_videos=120, num_concepts=16, seed=3)
SMALL_CONFIG = TrainConfig(codes_per_level=8, epochs_per_level=2, polish_epochs=1, batch_size=64, hidden=64)
# Two levels and a learning rate ten times the default: Adam's steps are long enough to
# show, within a few seconds, whether co-training collapses the two-code prefixes.
COLLAPSE_CONFIG = TrainConfig(codes_per_level=16, levels=2, epochs_per_level=2, polish_epochs=0, batch_size=128, lr=0.03)
BEAM = 20


def _train_split(corpus: SyntheticCorpus, config: TrainConfig) -> TrainedModel:
    captions = corpus.train_captions
    return train(corpus.video_embeddings, corpus.caption_ordinals[captions], corpus.caption_embeddings[captions], config)


def _recall(corpus: SyntheticCorpus, runtime: RetrieverRuntime, codes: np.ndarray, codebook_sizes: list[int]) -> RecallReport:
    test = corpus.test_captions
    return evaluate_recall(
        runtime, codes, codebook_sizes, corpus.video_embeddings, corpus.caption_embeddings[test], corpus.caption_ordinals[test], beam=BEAM
    )


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    # These models are small enough that extra threads gain little, and on a machine busy
    # with other jobs oversubscribed torch and OpenMP threads slowed training tenfold.
    # The results themselves were the same with one thread and with two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus() -> SyntheticCorpus:
    return make_synthetic_corpus(SyntheticConfig())


@pytest.fixture(scope="module")
def small_corpus() -> SyntheticCorpus:
    return make_synthetic_corpus(SMALL_CORPUS)


@pytest.fixture(scope="module")
def multiview(corpus: SyntheticCorpus) -> TrainedModel:
    return _train_split(corpus, RECALL_CONFIG)


@pytest.fixture(scope="module")
def multiview_recall(corpus: SyntheticCorpus, multiview: TrainedModel) -> RecallReport:
    return _recall(corpus, multiview.runtime(), multiview.assign(corpus.video_embeddings), multiview.codebook_sizes)


@pytest.fixture(scope="module")
def small_run(small_corpus: SyntheticCorpus) -> tuple[TrainedModel, list[list[torch.Tensor]]]:
    """A small model and copies of all codebooks taken at the end of each level."""
    snapshots: list[list[torch.Tensor]] = []

    def snapshot(level: int, tokenizer: MultiViewTokenizer) -> None:
        snapshots.append([c.detach().clone() for c in tokenizer.codebooks])

    captions = small_corpus.train_captions
    model = train(
        small_corpus.video_embeddings, small_corpus.caption_ordinals[captions], small_corpus.caption_embeddings[captions], SMALL_CONFIG, snapshot
    )
    return model, snapshots


@pytest.fixture(scope="module")
def small_model(small_run: tuple[TrainedModel, list[list[torch.Tensor]]]) -> TrainedModel:
    return small_run[0]


def test_multiview_recall_beats_visual_baseline(corpus, multiview_recall):
    # The visual-only baseline: residual k-means IDs of the video embeddings and a
    # retriever trained on those fixed IDs for as many epochs as the multi-view one.
    # Measured hit rates at beam 20: multi-view 0.910 (34 candidates on average),
    # baseline 0.808 (23 candidates).
    tokenizer = ResidualKMeansTokenizer(QuantizerConfig(levels=RECALL_CONFIG.levels, codes_per_level=RECALL_CONFIG.codes_per_level))
    codes = tokenizer.fit(corpus.video_embeddings).encode(corpus.video_embeddings)
    captions = corpus.train_captions
    retriever = train_retriever_for_codes(
        corpus.video_embeddings, codes, tokenizer.codebooks, corpus.caption_ordinals[captions], corpus.caption_embeddings[captions], RECALL_CONFIG
    )
    baseline = _recall(corpus, retriever.to_runtime(), codes, tokenizer.codebook_sizes)

    assert baseline.hit_rate > 0.5
    assert multiview_recall.hit_rate >= baseline.hit_rate + 0.08


def test_multiview_recall_beats_single_view(corpus, multiview_recall):
    # Measured at beam 20: 4 views 0.910, 1 view 0.840 (24 candidates).
    single = _train_split(corpus, dataclasses.replace(RECALL_CONFIG, views=1))
    single_recall = _recall(corpus, single.runtime(), single.assign(corpus.video_embeddings), single.codebook_sizes)

    assert single_recall.hit_rate > 0.5
    assert multiview_recall.hit_rate >= single_recall.hit_rate + 0.05


def test_video_queries_teach_the_ids_of_uncaptioned_videos(corpus):
    # Captions of the first half of the videos train; held-out captions of the other
    # half query. Measured hit rates at beam 20: 0.668 with video queries, 0.536 without.
    half = len(corpus.video_embeddings) // 2
    train_rows = corpus.train_captions[corpus.caption_ordinals[corpus.train_captions] < half]
    test_rows = corpus.test_captions[corpus.caption_ordinals[corpus.test_captions] >= half]

    def hit_rate(config: TrainConfig) -> float:
        model = train(corpus.video_embeddings, corpus.caption_ordinals[train_rows], corpus.caption_embeddings[train_rows], config)
        return evaluate_recall(
            model.runtime(),
            model.assign(corpus.video_embeddings),
            model.codebook_sizes,
            corpus.video_embeddings,
            corpus.caption_embeddings[test_rows],
            corpus.caption_ordinals[test_rows],
            beam=BEAM,
        ).hit_rate

    with_videos = hit_rate(dataclasses.replace(RECALL_CONFIG, video_queries=1.0))
    without = hit_rate(RECALL_CONFIG)
    assert with_videos >= without + 0.08


def test_rerank_puts_hit_first(multiview_recall):
    # Of the held-out captions whose video is a candidate, the dense rerank (query . video)
    # ranks that video first for 0.681. The pool contains 34 candidates on average.
    assert multiview_recall.rerank_top1_given_hit >= 0.58
    assert multiview_recall.mean_candidates <= 60


def test_diversity_mechanisms_make_views_distinct(corpus, multiview):
    # Measured: distinct IDs per video 4.00 with the mechanisms on, 3.78 off; identical
    # last-level codes across views 0.05 on, 0.07 off.
    plain = _train_split(corpus, RECALL_CONFIG.without_view_diversity())
    on = id_statistics(multiview.assign(corpus.video_embeddings), multiview.codebook_sizes)
    off = id_statistics(plain.assign(corpus.video_embeddings), plain.codebook_sizes)

    assert on["distinct_ids_per_video"] == 4.0
    assert off["distinct_ids_per_video"] < on["distinct_ids_per_video"]
    assert on["identical_last_level_fraction"] < off["identical_last_level_fraction"]
    assert len(on["codebook_use"]) == RECALL_CONFIG.levels
    assert all(0.5 <= use <= 1.0 for use in on["codebook_use"])


def test_cotraining_keeps_two_code_prefixes(corpus):
    # Measured: 244 distinct two-code prefixes co-trained and 247 without co-training,
    # of 16 x 16. With refit_code_lengths=False the co-trained codes grew longer and
    # the level-1 code mostly followed from the level-0 code: 104 prefixes.
    cotrained = _train_split(corpus, COLLAPSE_CONFIG)
    alone = _train_split(corpus, dataclasses.replace(COLLAPSE_CONFIG, cotrain=False))
    cotrained_prefixes = id_statistics(cotrained.assign(corpus.video_embeddings), cotrained.codebook_sizes)["distinct_prefixes"][1]
    alone_prefixes = id_statistics(alone.assign(corpus.video_embeddings), alone.codebook_sizes)["distinct_prefixes"][1]

    assert alone_prefixes >= 200
    assert cotrained_prefixes >= 0.9 * alone_prefixes


def test_refit_code_lengths_matches_member_projections(small_corpus, small_model):
    tokenizer = copy.deepcopy(small_model.tokenizer)  # the fixture is shared with other tests
    videos = torch.from_numpy(small_corpus.video_embeddings)
    level = 1
    with torch.no_grad():
        tokenizer.codebooks[level].mul_(3.0)
    directions = torch.nn.functional.normalize(tokenizer.codebooks[level], dim=-1).clone()
    residuals = tokenizer.residuals_at(videos, level)
    labels = tokenizer.level_scores(level, residuals).argmax(dim=-1)

    tokenizer.refit_code_lengths(level, videos)

    codebook = tokenizer.codebooks[level]
    torch.testing.assert_close(torch.nn.functional.normalize(codebook, dim=-1), directions)
    for code in torch.unique(labels).tolist():
        expected = (residuals[labels == code] @ directions[code]).mean().clamp(min=1e-6)
        torch.testing.assert_close(codebook[code].norm(), expected, rtol=1e-5, atol=1e-6)


def test_training_is_deterministic_for_a_seed(small_corpus, small_model):
    again = _train_split(small_corpus, SMALL_CONFIG)
    other_seed = _train_split(small_corpus, dataclasses.replace(SMALL_CONFIG, seed=1))
    codes = small_model.assign(small_corpus.video_embeddings)

    assert np.array_equal(codes, again.assign(small_corpus.video_embeddings))
    for name, tensor in small_model.retriever.state_dict().items():
        assert torch.equal(tensor, again.retriever.state_dict()[name]), name
    for name, tensor in small_model.tokenizer.state_dict().items():
        assert torch.equal(tensor, again.tokenizer.state_dict()[name]), name
    assert not np.array_equal(codes, other_seed.assign(small_corpus.video_embeddings))


def test_save_load_round_trip(tmp_path: Path, small_corpus, small_model):
    small_model.save(tmp_path / "model")
    loaded = TrainedModel.load(tmp_path / "model")
    queries = small_corpus.caption_embeddings[:32]
    states = small_model.runtime().start(queries)

    assert loaded.codebook_sizes == small_model.codebook_sizes
    assert loaded.config == small_model.config
    assert loaded.stats == small_model.stats
    assert np.array_equal(loaded.assign(small_corpus.video_embeddings), small_model.assign(small_corpus.video_embeddings))
    for runtime in (loaded.runtime(), RetrieverRuntime.load(tmp_path / "model")):
        assert np.array_equal(runtime.logits(0, runtime.start(queries)), small_model.runtime().logits(0, states))


def test_model_saved_before_video_queries_loads_without_them(tmp_path: Path, small_model):
    small_model.save(tmp_path / "model")
    header_file = tmp_path / "model" / "multiview.json"
    header = json.loads(header_file.read_text())
    assert header["train_config"]["video_queries"] == SMALL_CONFIG.video_queries
    del header["train_config"]["video_queries"]
    header_file.write_text(json.dumps(header))

    # An update retrains with the recorded settings, so an old model must not gain video
    # queries if the default changes; a recorded value is kept.
    assert TrainedModel.load(tmp_path / "model").config.video_queries == 0.0
    header["train_config"]["video_queries"] = 2.5
    header_file.write_text(json.dumps(header))
    assert TrainedModel.load(tmp_path / "model").config.video_queries == 2.5


def test_batches_without_captions_keep_losses_finite(small_corpus):
    # 9 captions and 200 video queries per epoch in batches of 64: most batches hold no caption.
    rows = small_corpus.train_captions[:9]
    config = dataclasses.replace(SMALL_CONFIG, video_queries=200 / 9)
    model = train(small_corpus.video_embeddings, small_corpus.caption_ordinals[rows], small_corpus.caption_embeddings[rows], config)

    for losses in model.stats.level_losses:
        assert "contrastive" in losses
        assert all(np.isfinite(value) for value in losses.values()), losses


def test_torch_and_runtime_logits_agree(small_corpus, small_model):
    queries = small_corpus.caption_embeddings[:64]
    codes = small_model.assign(small_corpus.video_embeddings)[small_corpus.caption_ordinals[:64], 0].astype(np.int64)
    runtime = small_model.runtime()
    with torch.no_grad():
        torch_logits = small_model.retriever(torch.from_numpy(queries), torch.from_numpy(codes))

    states = runtime.start(queries)
    for level in range(runtime.levels):
        np.testing.assert_allclose(runtime.logits(level, states), torch_logits[level].numpy(), rtol=1e-5, atol=1e-5)
        if level + 1 < runtime.levels:
            states = runtime.advance(level, states, codes[:, level])


def test_earlier_codebooks_stay_frozen(small_run):
    model, snapshots = small_run

    assert len(snapshots) == SMALL_CONFIG.levels
    for level in range(SMALL_CONFIG.levels):
        # Unchanged from the end of its own level through later levels and the final retriever epochs.
        assert torch.equal(snapshots[level][level], model.tokenizer.codebooks[level]), level
        assert snapshots[level][level].abs().sum() > 0, level
    # A level still in zeros had not been initialised yet when the level above finished.
    assert snapshots[0][1].abs().sum() == 0


def test_query_dimension_may_differ_from_video(small_corpus, caplog):
    # A query encoder of another width: captions embedded in 48 dimensions.
    projection = np.random.default_rng(0).normal(size=(small_corpus.caption_embeddings.shape[1], 48)).astype(np.float32)
    captions = small_corpus.caption_embeddings @ projection
    config = dataclasses.replace(SMALL_CONFIG, view_dim=32, epochs_per_level=1, video_queries=1.0)
    with caplog.at_level(logging.WARNING, logger="grdr_core.training"):
        model = train(small_corpus.video_embeddings, small_corpus.caption_ordinals, captions, config)

    assert "Training without video queries: captions have 48 dimensions and videos 64" in caplog.text

    assert model.runtime().query_dim == 48
    assert model.assign(small_corpus.video_embeddings).shape == (len(small_corpus.video_embeddings), 4, 3)
    assert model.runtime().logits(0, model.runtime().start(captions[:4])).shape == (4, model.codebook_sizes[0])


def test_repair_gives_distinct_ids_with_tiny_last_codebook():
    # Two codes at the last level cannot separate four views; the repair changes level 0.
    rng = np.random.default_rng(0)
    projections = np.repeat(np.eye(8, dtype=np.float32)[None], 4, axis=0)
    codebooks = [rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)]
    videos = rng.normal(size=(50, 8)).astype(np.float32)

    plain = assign_multiview_codes(videos, projections, codebooks, distinct_ids=False)
    repaired = assign_multiview_codes(videos, projections, codebooks, distinct_ids=True)

    assert id_statistics(plain, [6, 2])["distinct_ids_per_video"] == 1.0
    assert id_statistics(repaired, [6, 2])["distinct_ids_per_video"] == 4.0
    assert np.array_equal(repaired[:, 0], plain[:, 0])


def test_repair_keeps_distinct_ids():
    codes = np.array([[[0, 1], [1, 1]]])
    scores = np.zeros((1, 2, 2), dtype=np.float32)
    repaired = repair_duplicate_ids(codes, scores, np.zeros((1, 2, 4), np.float32), [np.eye(2, 4, dtype=np.float32)] * 2)
    assert np.array_equal(repaired, codes)


def test_id_statistics_on_known_codes():
    codes = np.array(
        [
            [[0, 0], [0, 0]],  # one ID in both views
            [[0, 0], [1, 1]],
            [[1, 0], [2, 0]],  # same last-level code, different IDs
        ],
        dtype=np.uint16,
    )
    stats = id_statistics(codes, [4, 2])

    assert stats["distinct_ids_per_video"] == pytest.approx(5 / 3)
    assert stats["single_id_fraction"] == pytest.approx(1 / 3)
    assert stats["identical_last_level_fraction"] == pytest.approx(2 / 3)
    assert stats["distinct_ids"] == 4
    assert stats["videos_per_id_max"] == 2
    assert stats["shared_ids"] == 1
    assert stats["codebook_use"] == [0.75, 1.0]
    assert stats["distinct_prefixes"] == [3, 4]


def test_sinkhorn_balances_a_skewed_batch():
    # Every point prefers code 0; balanced assignment spreads them over all four codes.
    scores = torch.tensor([[1.0, 0.9, 0.8, 0.7]]).repeat(40, 1) + 0.01 * torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    codes = sinkhorn_codes(scores, epsilon=0.05, iterations=50)
    assert torch.bincount(codes, minlength=4).min() >= 5


def test_routing_never_mixes_concepts_in_a_view():
    # Six captions per video, two per concept, clustered into four views: one concept
    # is split over two views, but no view receives captions of two concepts.
    corpus = make_synthetic_corpus(dataclasses.replace(SMALL_CORPUS, train_captions_per_concept=2, test_captions_per_video=0))
    routes = route_captions(corpus.caption_ordinals, corpus.caption_embeddings, SMALL_CORPUS.num_videos, 4, seed=0)

    assert routes.min() == 0
    assert routes.max() == 3
    for video in range(SMALL_CORPUS.num_videos):
        mine = corpus.caption_ordinals == video
        concept_of_view = dict(zip(routes[mine].tolist(), corpus.caption_concepts[mine].tolist()))
        assert len(concept_of_view) == 4, video
        for view, concept in zip(routes[mine].tolist(), corpus.caption_concepts[mine].tolist()):
            assert concept_of_view[view] == concept, video


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"views": 0}, "views must be >= 1"),
        ({"view_order": "random"}, "accepted: anchors, size"),
        ({"device": "tpu"}, "accepted: cpu, cuda"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"video_queries": -0.5}, r"video_queries must lie in \[0, 1000"),
        ({"video_queries": 1e300}, "video_queries must lie in"),
        ({"video_queries": float("nan")}, "video_queries must lie in"),
    ],
)
def test_config_rejects_invalid_values(change, message):
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig(**change)


def test_train_rejects_ordinals_out_of_range(small_corpus):
    ordinals = small_corpus.caption_ordinals.copy()
    ordinals[0] = SMALL_CORPUS.num_videos
    with pytest.raises(InvalidInputError, match="Caption ordinals must lie in"):
        train(small_corpus.video_embeddings, ordinals, small_corpus.caption_embeddings, SMALL_CONFIG)
