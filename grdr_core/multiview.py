"""Multi-view semantic-ID tokenizer: V learned views per video, residual quantization with shared codebooks.

After GRDR (Zhao et al., "Generative Recall, Dense Reranking: Learning Multi-View
Semantic IDs for Efficient Text-to-Video Retrieval", arXiv 2601.21193, 2026). Each video
embedding ``x`` (``D``) is mapped by ``V`` learned linear projections to unit view
vectors ``z_v`` (``d``). Every view is quantized by residual quantization over ``L``
levels with cosine code selection: at level ``l`` the code is the row of codebook ``l``
with the largest cosine to the view's residual, and the residual loses that row. The
codebooks (``K_l x d``) are shared by all views and, in ``grdr_core.training``, by the
generative retriever. A video's semantic IDs are the ``V`` code tuples.

Views are query-guided in training: ``route_captions`` clusters each video's captions
and sends every caption to one view. Three mechanisms, each with a switch in
``grdr_core.training.TrainConfig``, keep views distinct and codebooks used, because the
reference implementation's own audit found 76% of videos with identical last-level codes
across views and 13-17% of the level-0 codes used:

- distinct IDs at assignment (``repair_duplicate_ids``): a view whose ID repeats an
  earlier view's ID of the same video takes the best alternative code at the deepest
  level that has one;
- balanced code assignment in training (``sinkhorn_codes``, Sinkhorn-Knopp as in SwAV);
- dead-code re-initialisation (``MultiViewTokenizer.reinit_dead_codes``).

``id_statistics`` (defined in ``grdr_core.id_stats``, re-exported here) measures view
redundancy, ID collisions and codebook use of any ``(N, V, L)`` code array.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torch import nn

from grdr_core.errors import InvalidInputError
from grdr_core.id_stats import id_statistics  # noqa: F401  (re-exported: measured on multi-view codes)
from grdr_core.quantize import MAX_CODES

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "grdr-multiview"
VIEW_ORDERS = ("anchors", "size")
CAPTION_KMEANS_ITERATIONS = 20
MAX_INIT_POINTS = 200_000  # residuals sampled for a codebook's k-means initialisation


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Return ``x`` with its last axis scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------
# Query-guided routing of captions to views.


def _batched_kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster each of ``G`` point sets ``(G, n, dim)`` into ``k`` clusters and return the labels ``(G, n)``.

    Uses k-means++ seeding, then Lloyd iterations, vectorised over the ``G`` sets. One
    sklearn ``KMeans`` call per video took 7-30 ms of fixed overhead on a 2-core machine,
    too slow for one call per video of a large corpus.
    """
    groups, n, _ = points.shape
    rows = np.arange(groups)
    centers = np.empty((groups, k, points.shape[2]), dtype=np.float32)
    centers[:, 0] = points[rows, rng.integers(0, n, size=groups)]
    nearest = ((points - centers[:, :1]) ** 2).sum(axis=2)  # (G, n) squared distance to the nearest center
    for j in range(1, k):
        # D^2 sampling. A set whose points all coincide with chosen centers picks uniformly.
        weights = nearest + 1e-12
        cumulative = np.cumsum(weights, axis=1)
        draws = rng.random(groups) * cumulative[:, -1]
        picks = np.minimum((cumulative < draws[:, None]).sum(axis=1), n - 1)
        centers[:, j] = points[rows, picks]
        nearest = np.minimum(nearest, ((points - centers[:, j : j + 1]) ** 2).sum(axis=2))

    labels = np.zeros((groups, n), dtype=np.int64)
    for _ in range(CAPTION_KMEANS_ITERATIONS):
        distances = ((points[:, :, None, :] - centers[:, None, :, :]) ** 2).sum(axis=3)  # (G, n, k)
        new_labels = distances.argmin(axis=2)
        one_hot = np.eye(k, dtype=np.float32)[new_labels]  # (G, n, k)
        counts = one_hot.sum(axis=1)  # (G, k)
        sums = np.einsum("gnk,gnd->gkd", one_hot, points)
        # An emptied cluster keeps its previous center.
        centers = np.where(counts[:, :, None] > 0, sums / np.maximum(counts, 1)[:, :, None], centers)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def route_captions(
    caption_ordinals: np.ndarray,
    caption_embeddings: np.ndarray,
    num_videos: int,
    views: int,
    seed: int,
    order: str = "anchors",
) -> np.ndarray:
    """Route each caption to one view of its video by clustering the video's captions, and return the ``(M,)`` int64 views.

    A video's captions (unit-normalised) are clustered by k-means with ``k = min(views,
    number of captions)``, and every cluster goes to its own view. ``order`` decides which
    cluster gets which view:

    - ``"anchors"``: all captions are first clustered into ``views`` global anchors (sklearn
      k-means), and each video's clusters are matched one to one to the views whose
      anchors they are most similar to (maximum total cosine, Hungarian algorithm). View
      ``j`` thus tends to carry the same kind of query for every video, which a linear
      view projection can learn.
    - ``"size"``: clusters by decreasing size, ties by their first caption's position.

    The result depends only on the inputs and ``seed``.
    """
    caption_ordinals = np.asarray(caption_ordinals, dtype=np.int64)
    if order not in VIEW_ORDERS:
        raise InvalidInputError(f"Unknown view order {order!r}; accepted: {', '.join(VIEW_ORDERS)}")
    if views < 1:
        raise InvalidInputError(f"views must be >= 1, got {views}")
    routes = np.zeros(len(caption_ordinals), dtype=np.int64)
    if views == 1 or len(caption_ordinals) == 0:
        return routes

    captions = unit_rows(caption_embeddings)
    rng = np.random.default_rng(seed)
    anchors = None
    if order == "anchors":
        anchor_count = min(views, len(np.unique(captions.round(6), axis=0)))
        kmeans = KMeans(n_clusters=anchor_count, n_init=1, random_state=seed).fit(captions)
        anchors = unit_rows(kmeans.cluster_centers_)

    # Stable sort keeps each video's captions in input order, which the tie-breaks rely on.
    by_video = np.argsort(caption_ordinals, kind="stable")
    starts = np.searchsorted(caption_ordinals[by_video], np.arange(num_videos + 1))
    counts = np.diff(starts)
    for count in np.unique(counts[counts > 0]):
        group_videos = np.flatnonzero(counts == count)
        members = by_video[starts[group_videos][:, None] + np.arange(count)[None, :]]  # (G, count)
        k = min(views, int(count))
        if k == int(count):
            labels = np.tile(np.arange(k), (len(group_videos), 1))
        else:
            labels = _batched_kmeans(captions[members], k, rng)
        for member_row, label_row in zip(members, labels):
            routes[member_row] = _order_clusters(captions[member_row], label_row, k, views, anchors)[label_row]
    return routes


def _order_clusters(captions: np.ndarray, labels: np.ndarray, k: int, views: int, anchors: np.ndarray | None) -> np.ndarray:
    """Return the view of each of ``k`` clusters of one video's captions."""
    present = [j for j in range(k) if (labels == j).any()]
    if anchors is None:
        first = {j: int(np.flatnonzero(labels == j)[0]) for j in present}
        ranked = sorted(present, key=lambda j: (-int((labels == j).sum()), first[j]))
        view_of = np.zeros(k, dtype=np.int64)
        view_of[ranked] = np.arange(len(ranked))
        return view_of

    centroids = unit_rows(np.stack([captions[labels == j].mean(axis=0) for j in present]))
    # (clusters, anchors). There are fewer anchors than views only when all captions have fewer distinct rows.
    similarity = centroids @ anchors.T
    cluster_rows, anchor_columns = linear_sum_assignment(-similarity)
    view_of = np.zeros(k, dtype=np.int64)
    taken = set(anchor_columns.tolist())
    spare = iter(v for v in range(views) if v not in taken)
    for row, column in zip(cluster_rows, anchor_columns):
        view_of[present[row]] = column
    for row in sorted(set(range(len(present))) - set(cluster_rows.tolist())):
        view_of[present[row]] = next(spare)
    return view_of


# ---------------------------------------------------------------------------------------
# Code selection: cosine residual quantization, distinct IDs, Sinkhorn balancing.


def sinkhorn_codes(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Assign balanced codes ``(n,)`` for ``(n, K)`` similarity scores.

    Sinkhorn-Knopp iterations, here in the log domain, find the soft assignment closest
    to ``softmax(scores / epsilon)`` in which every code takes ``n / K`` of the points.
    This is the equipartition step of SwAV (Caron et al., "Unsupervised Learning of
    Visual Features by Contrasting Cluster Assignments", NeurIPS 2020). Each point then
    takes its most likely code.
    """
    n, k = scores.shape
    log_q = scores.detach().float() / epsilon
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)
    return log_q.argmax(dim=1)


def quantize_residuals(views: np.ndarray, codebooks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``(n, d)`` view vectors and return codes ``(n, L)`` and the last level's cosines ``(n, K_last)``."""
    residual = views.astype(np.float32, copy=True)
    codes = np.empty((len(views), len(codebooks)), dtype=np.int64)
    scores = np.empty((len(views), 0), dtype=np.float32)
    for level, codebook in enumerate(codebooks):
        scores = unit_rows(residual) @ unit_rows(codebook).T
        codes[:, level] = scores.argmax(axis=1)
        residual -= codebook[codes[:, level]]
    return codes, scores


def _ids_equal_earlier(codes: np.ndarray, candidate: np.ndarray, view: int) -> np.ndarray:
    """Return ``(n,)`` whether the ``(n, L)`` candidate IDs equal any of views ``< view`` in ``codes`` ``(n, V, L)``."""
    return (codes[:, :view, :] == candidate[:, None, :]).all(axis=2).any(axis=1)


def repair_duplicate_ids(
    codes: np.ndarray,
    last_scores: np.ndarray,
    view_vectors: np.ndarray,
    codebooks: list[np.ndarray],
) -> np.ndarray:
    """Give each video's views distinct full IDs where the codebooks allow it and return the repaired codes.

    ``codes`` ``(n, V, L)`` are the plain assignments, ``last_scores`` ``(n, V, K_last)``
    the cosines of each view's last residual to the last codebook, ``view_vectors``
    ``(n, V, d)`` the unit view vectors. Views are repaired in order, so view 0 always
    keeps its nearest ID. A view whose ID equals an earlier view's ID first takes the
    next-best last-level code that makes it distinct. Where the last codebook has too few
    codes, the next-deeper level with an alternative is changed and the levels below it
    are re-quantized. A video with fewer possible IDs than views keeps its duplicates.
    """
    codes = codes.copy()
    n, views, levels = codes.shape
    if views == 1:
        return codes
    last = levels - 1
    candidates_per_view = min(views, last_scores.shape[2])
    ranked = np.argsort(-last_scores, axis=2, kind="stable")[:, :, :candidates_per_view]  # (n, V, c)

    unresolved_rows: list[tuple[int, int]] = []
    for view in range(1, views):
        duplicate = _ids_equal_earlier(codes, codes[:, view], view)
        for rank in range(1, candidates_per_view):
            if not duplicate.any():
                break
            rows = np.flatnonzero(duplicate)
            candidate = codes[rows, view].copy()
            candidate[:, last] = ranked[rows, view, rank]
            accepted = ~_ids_equal_earlier(codes[rows], candidate, view)
            codes[rows[accepted], view] = candidate[accepted]
            duplicate[rows[accepted]] = False
        unresolved_rows.extend((int(row), view) for row in np.flatnonzero(duplicate))

    for row, view in unresolved_rows:
        replacement = _search_deeper_alternative(codes[row], view, view_vectors[row, view], codebooks)
        if replacement is not None:
            codes[row, view] = replacement
    if unresolved_rows:
        logger.debug("Changed a level above the last for %d views with duplicate IDs", len(unresolved_rows))
    return codes


def _search_deeper_alternative(video_codes: np.ndarray, view: int, view_vector: np.ndarray, codebooks: list[np.ndarray]) -> np.ndarray | None:
    """Return a distinct ID for one view by changing the deepest level that allows it, or None."""
    taken = {tuple(video_codes[w].tolist()) for w in range(view)}
    levels = len(codebooks)
    residuals = [view_vector.astype(np.float32)]
    for level in range(levels - 1):
        residuals.append(residuals[-1] - codebooks[level][video_codes[view, level]])

    for level in range(levels - 2, -1, -1):
        order = np.argsort(-(unit_rows(codebooks[level]) @ unit_rows(residuals[level])), kind="stable")
        for code in order:
            if code == video_codes[view, level]:
                continue
            prefix = video_codes[view, :level].tolist() + [int(code)]
            residual = residuals[level] - codebooks[level][code]
            for deeper in range(level + 1, levels - 1):
                prefix.append(int(np.argmax(unit_rows(codebooks[deeper]) @ unit_rows(residual))))
                residual = residual - codebooks[deeper][prefix[-1]]
            for last_code in np.argsort(-(unit_rows(codebooks[-1]) @ unit_rows(residual)), kind="stable"):
                candidate = tuple(prefix + [int(last_code)])
                if candidate not in taken:
                    return np.asarray(candidate, dtype=video_codes.dtype)
    return None


def assign_multiview_codes(
    video_embeddings: np.ndarray,
    projections: np.ndarray,
    codebooks: list[np.ndarray],
    distinct_ids: bool = True,
    chunk: int = 8192,
) -> np.ndarray:
    """Return ``(N, V, L)`` uint16 semantic IDs of ``(N, D)`` video embeddings, in NumPy.

    ``projections`` are the ``(V, d, D)`` view projections and ``codebooks`` the
    ``(K_l, d)`` level codebooks. Rows are processed ``chunk`` at a time so memory stays
    bounded for any ``N``. With ``distinct_ids`` the views of a video get distinct IDs
    (``repair_duplicate_ids``).
    """
    video_embeddings = np.asarray(video_embeddings, dtype=np.float32)
    views, view_dim, video_dim = projections.shape
    if video_embeddings.ndim != 2 or video_embeddings.shape[1] != video_dim:
        raise InvalidInputError(f"Expected video embeddings of shape (N, {video_dim}), got {video_embeddings.shape}")
    if chunk < 1:
        raise InvalidInputError(f"chunk must be >= 1, got {chunk}")

    codes = np.empty((len(video_embeddings), views, len(codebooks)), dtype=np.uint16)
    flat_projections = np.ascontiguousarray(projections.reshape(views * view_dim, video_dim), dtype=np.float32)
    for start in range(0, len(video_embeddings), chunk):
        block = video_embeddings[start : start + chunk]
        # One BLAS product for all views; np.einsum would loop in C without BLAS here.
        view_vectors = unit_rows((block @ flat_projections.T).reshape(len(block), views, view_dim))  # (n, V, d)
        flat_codes, flat_scores = quantize_residuals(view_vectors.reshape(-1, view_dim), codebooks)
        block_codes = flat_codes.reshape(len(block), views, -1)
        if distinct_ids:
            block_codes = repair_duplicate_ids(block_codes, flat_scores.reshape(len(block), views, -1), view_vectors, codebooks)
        codes[start : start + chunk] = block_codes
    return codes


# ---------------------------------------------------------------------------------------
# The torch module.


def _member_projections(residuals: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Return each code's mean projection of its members ``residuals[labels == code]`` onto its unit direction, at least 1e-6.

    A code without members gets its ``fallback`` value.
    """
    size = len(directions)
    projections = (residuals * directions[labels]).sum(dim=-1)
    totals = torch.zeros(size, dtype=residuals.dtype, device=residuals.device).index_add_(0, labels, projections)
    counts = torch.bincount(labels, minlength=size).to(residuals.dtype)
    return torch.where(counts > 0, (totals / counts.clamp(min=1)).clamp(min=1e-6), fallback.to(residuals.dtype))


class MultiViewTokenizer(nn.Module):
    """Learned view projections, shared residual codebooks, and the heads used only in training.

    Parameters:
    - ``view_projections`` ``(V, d, D)``;
    - ``codebooks[l]`` ``(K_l, d)``, shared with the retriever;
    - ``query_projection`` ``(d, Dq)`` maps a caption into view space for the contrastive loss;
    - ``decoders`` ``(V, D, d)`` map the quantized views back to the video embedding for
      the reconstruction loss.

    Assigning IDs needs only the projections and the codebooks.
    """

    def __init__(
        self,
        video_dim: int,
        query_dim: int,
        views: int,
        view_dim: int,
        codebook_sizes: list[int],
        generator: torch.Generator | None = None,
        view_init_noise: float = 0.1,
    ) -> None:
        super().__init__()
        if min(video_dim, query_dim, views, view_dim) < 1 or not codebook_sizes:
            raise InvalidInputError(
                f"Tokenizer dimensions must be >= 1 and at least one level is needed, got video_dim={video_dim}, "
                f"query_dim={query_dim}, views={views}, view_dim={view_dim}, codebook_sizes={codebook_sizes}"
            )
        if not all(1 <= size <= MAX_CODES for size in codebook_sizes):
            raise InvalidInputError(f"Codebook sizes must lie in [1, {MAX_CODES}], got {codebook_sizes}")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)

        # Identity-like base shared by all views (a random orthonormal map when d != D)
        # plus a small per-view perturbation, so views start similar but not equal.
        if view_dim == video_dim:
            base = torch.eye(video_dim)
        else:
            matrix = torch.randn(max(video_dim, view_dim), min(video_dim, view_dim), generator=generator)
            orthonormal, _ = torch.linalg.qr(matrix)
            base = orthonormal.T if view_dim < video_dim else orthonormal
        perturbation = view_init_noise * torch.randn(views, view_dim, video_dim, generator=generator) / math.sqrt(video_dim)
        self.view_projections = nn.Parameter(base.expand(views, -1, -1) + perturbation)
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(size, view_dim)) for size in codebook_sizes])
        self.query_projection = nn.Parameter(torch.randn(view_dim, query_dim, generator=generator) / math.sqrt(query_dim))
        self.decoders = nn.Parameter(base.T.expand(views, -1, -1) / views + perturbation.transpose(1, 2) / views)

    @property
    def views(self) -> int:
        return self.view_projections.shape[0]

    @property
    def view_dim(self) -> int:
        return self.view_projections.shape[1]

    @property
    def video_dim(self) -> int:
        return self.view_projections.shape[2]

    @property
    def query_dim(self) -> int:
        return self.query_projection.shape[1]

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @property
    def codebook_sizes(self) -> list[int]:
        return [c.shape[0] for c in self.codebooks]

    def view_vectors(self, videos: torch.Tensor) -> torch.Tensor:
        """Return unit view vectors ``(B, V, d)`` of ``(B, D)`` video embeddings."""
        return nn.functional.normalize(torch.einsum("vkd,bd->bvk", self.view_projections, videos), dim=-1)

    def project_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Return unit query vectors ``(B, d)`` in view space for ``(B, Dq)`` caption embeddings."""
        return nn.functional.normalize(queries @ self.query_projection.T, dim=-1)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(B, D)`` video embeddings from the ``(B, V, d)`` quantized views, all views together."""
        return torch.einsum("vdk,bvk->bd", self.decoders, quantized)

    def level_scores(self, level: int, residuals: torch.Tensor) -> torch.Tensor:
        """Return cosines ``(..., K_level)`` of residuals ``(..., d)`` to the level's codes."""
        return nn.functional.normalize(residuals, dim=-1) @ nn.functional.normalize(self.codebooks[level], dim=-1).T

    @torch.no_grad()
    def residuals_at(self, videos: torch.Tensor, level: int, chunk: int = 8192) -> torch.Tensor:
        """Return the residuals ``(B * V, d)`` of all views that enter ``level`` (argmax codes above it)."""
        parts = []
        for start in range(0, len(videos), chunk):
            residual = self.view_vectors(videos[start : start + chunk]).reshape(-1, self.view_dim)
            for above in range(level):
                residual = residual - self.codebooks[above][self.level_scores(above, residual).argmax(dim=-1)]
            parts.append(residual)
        return torch.cat(parts)

    @torch.no_grad()
    def init_codebook(self, level: int, videos: torch.Tensor, seed: int) -> None:
        """Initialise codebook ``level`` from the residuals of all views of ``videos`` (progressive training).

        k-means (sklearn) on the unit residual directions gives the code directions, and
        each code's length is the mean projection of its members onto that direction, so
        that subtracting the code removes the members' component along it. Cosine code
        selection ignores the length, but the residual passed down does not.
        """
        residuals = self.residuals_at(videos, level).cpu().numpy()
        rng = np.random.default_rng(seed + level)
        if len(residuals) > MAX_INIT_POINTS:
            residuals = residuals[np.sort(rng.choice(len(residuals), MAX_INIT_POINTS, replace=False))]
        size = self.codebook_sizes[level]
        directions = unit_rows(residuals)
        kmeans = KMeans(n_clusters=size, n_init=1, max_iter=100, random_state=seed + level).fit(directions)
        centers = torch.from_numpy(unit_rows(kmeans.cluster_centers_))
        lengths = _member_projections(torch.from_numpy(residuals), torch.from_numpy(kmeans.labels_.astype(np.int64)), centers, torch.full((size,), 1e-6))
        self.codebooks[level].copy_((centers * lengths[:, None]).to(self.codebooks[level].device))
        logger.info("Initialised level %d codebook: %d codes from %d residuals", level, size, len(residuals))

    @torch.no_grad()
    def refit_code_lengths(self, level: int, videos: torch.Tensor) -> None:
        """Set each code's length at ``level`` to the mean projection of its members' residuals, keeping its direction.

        This is the length rule of ``init_codebook`` applied to the current view
        projections. A code that no view selects keeps its length.
        """
        residuals = self.residuals_at(videos, level)
        codebook = self.codebooks[level]
        directions = nn.functional.normalize(codebook, dim=-1)
        labels = self.level_scores(level, residuals).argmax(dim=-1)
        lengths = _member_projections(residuals, labels, directions, codebook.norm(dim=-1))
        codebook.copy_(directions * lengths[:, None])

    @torch.no_grad()
    def reinit_dead_codes(self, level: int, videos: torch.Tensor, generator: torch.Generator) -> int:
        """Reset the level's codes that no view of ``videos`` selects and return how many were reset.

        A code that no point selects gets no gradient and would stay unused, a common
        failure of VQ codebooks. Each such code becomes the residual of a random view.
        """
        residuals = self.residuals_at(videos, level)
        used = torch.zeros(self.codebook_sizes[level], dtype=torch.bool, device=residuals.device)
        used[self.level_scores(level, residuals).argmax(dim=-1)] = True
        dead = torch.nonzero(~used).flatten()
        if len(dead):
            picks = torch.randperm(len(residuals), generator=generator)[: len(dead)].to(residuals.device)
            self.codebooks[level][dead] = residuals[picks]
        return int(len(dead))

    def numpy_weights(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Return float32 copies of the view projections ``(V, d, D)`` and the codebooks."""
        projections = self.view_projections.detach().cpu().numpy().astype(np.float32)
        return projections, [c.detach().cpu().numpy().astype(np.float32) for c in self.codebooks]

    def assign(self, video_embeddings: np.ndarray, distinct_ids: bool = True, chunk: int = 8192) -> np.ndarray:
        """Return ``(N, V, L)`` uint16 semantic IDs of ``(N, D)`` video embeddings (see ``assign_multiview_codes``)."""
        projections, codebooks = self.numpy_weights()
        return assign_multiview_codes(video_embeddings, projections, codebooks, distinct_ids=distinct_ids, chunk=chunk)
