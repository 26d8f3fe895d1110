"""Co-training of the multi-view tokenizer and the generative retriever.

After GRDR (Zhao et al., "Generative Recall, Dense Reranking: Learning Multi-View
Semantic IDs for Efficient Text-to-Video Retrieval", arXiv 2601.21193, 2026). The
retriever decodes a query embedding into a semantic ID one level at a time. Its output
and input embeddings at level ``l`` are the tokenizer's level-``l`` codebook (the same
``nn.Parameter``), so training the retriever also shapes the codes. ``GenerativeRetriever`` is the torch twin of
``grdr_core.retriever_runtime.RetrieverRuntime``, whose docstring fixes the architecture.

``train`` runs progressive training. For each level in turn, the level's codebook is
initialised by k-means on the residuals left by the levels above it, and the codebooks
above are frozen. The tokenizer (and, when co-training, the retriever) then trains on
these losses:

- in-batch contrastive (InfoNCE): a projection of each caption against the quantized
  vector of the view it is routed to, other videos in the batch as negatives;
- code cross-entropy with label smoothing: retriever logits at the level against the
  routed view's code, with teacher forcing on the true codes of the levels above;
- cross-entropy on the levels above, which keeps the retriever on codes that drift as
  the view projections keep training;
- reconstruction: the quantized views, decoded and summed, against the video embedding;
- commitment (VQ-VAE, van den Oord et al. 2017) with the straight-through estimator;
- optionally, view diversity: a hinge on the cosine between two views of one video.

With ``refit_code_lengths`` (the default) the gradient steps only turn the trained
level's codes, and each code's length is refit after every epoch to the mean projection
of its members' residuals. Without it, co-training lengthens the codes until each code
nearly decides the next level's code (see ``_step_keeping_lengths``).

Finally the tokenizer is frozen, every video is assigned its IDs, and the retriever
trains a few more epochs on exactly those IDs (the IDs that the trie will contain).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.multiview import TOKENIZER_NAME, VIEW_ORDERS, MultiViewTokenizer, route_captions, sinkhorn_codes
from grdr_core.quantize import MAX_CODES, effective_codes
from grdr_core.retriever_runtime import RetrieverRuntime

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1
MODEL_WEIGHTS_FILE = "multiview.safetensors"
MODEL_CONFIG_FILE = "multiview.json"
MAX_VIDEO_QUERIES = 1000  # per caption and epoch
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    views: int = 4
    levels: int = 3
    codes_per_level: int = 128  # shrunk for small corpora by quantize.effective_codes
    view_dim: int | None = None  # None: the video embedding dimension
    hidden: int = 128  # retriever state size H; recall cost grows with H^2 per beam step
    # On MSVD captions, 5 epochs per level and no polish epochs recalled more than 10 and 5
    # (docs/benchmarks.md), because longer training fits the retriever to the training videos.
    epochs_per_level: int = 5
    polish_epochs: int = 0  # retriever-only epochs on the final, frozen IDs
    # Video embeddings that also train the retriever as queries, per epoch, as a multiple
    # of the caption count (at most MAX_VIDEO_QUERIES). Each is a (video, view) pair
    # whose target is that view's ID, so the retriever also learns the IDs of videos
    # without captions. They enter every loss but the contrastive one. Off by default:
    # one per caption changed MSVD's candidate hit by -0.2 to +0.3 points and lowered it
    # at 100,000 synthetic videos, at 1.7-2.5 times the training time (docs/benchmarks.md).
    video_queries: float = 0.0
    batch_size: int = 256  # queries per step: captions and video queries
    lr: float = 3e-3  # Adam
    seed: int = 0
    label_smoothing: float = 0.1
    temperature: float = 0.07  # InfoNCE temperature
    contrastive_weight: float = 1.0
    code_weight: float = 1.0
    earlier_code_weight: float = 0.5
    reconstruction_weight: float = 1.0
    commitment_weight: float = 0.25  # beta of the VQ-VAE commitment term
    retriever_scale: float = 10.0  # initial scale of the retriever's cosine logits (learned)
    # Factor on the gradient that the retriever's code losses send into the shared
    # codebooks while a level trains: 0 stops it, 1 passes it whole.
    codebook_code_gradient: float = 1.0
    cotrain: bool = True  # False: train the tokenizer alone, freeze it, then train the retriever
    view_order: str = "anchors"  # see multiview.route_captions
    # View diversity and codebook use. without_view_diversity() turns all four off.
    distinct_ids: bool = True
    balanced_assignment: bool = True
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 10
    reinit_dead_codes: bool = True
    # Gradient steps turn the trained level's codes but keep their lengths, which are refit
    # to the data after each epoch. False lets Adam's steps change the lengths too.
    refit_code_lengths: bool = True
    diversity_weight: float = 0.1
    diversity_margin: float = 0.5  # cosine between two views of a video above which the hinge applies
    # NOTE: "cuda" has not been run yet. Training moves every tensor to this device, and
    # assignment and export always run on the CPU in NumPy.
    device: str = "cpu"

    def __post_init__(self) -> None:
        positive = ("views", "levels", "codes_per_level", "hidden", "epochs_per_level", "batch_size", "sinkhorn_iterations")
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.codes_per_level > MAX_CODES:
            raise InvalidInputError(f"codes_per_level must be <= {MAX_CODES}, got {self.codes_per_level}")
        if self.view_dim is not None and self.view_dim < 1:
            raise InvalidInputError(f"view_dim must be >= 1 or None, got {self.view_dim}")
        if self.polish_epochs < 0:
            raise InvalidInputError(f"polish_epochs must be >= 0, got {self.polish_epochs}")
        if not 0 <= self.video_queries <= MAX_VIDEO_QUERIES:
            raise InvalidInputError(f"video_queries must lie in [0, {MAX_VIDEO_QUERIES}], got {self.video_queries}")
        if not 0 <= self.codebook_code_gradient <= 1:
            raise InvalidInputError(f"codebook_code_gradient must lie in [0, 1], got {self.codebook_code_gradient}")
        for name in ("lr", "temperature", "retriever_scale", "sinkhorn_epsilon"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise InvalidInputError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        weights = ("contrastive_weight", "code_weight", "earlier_code_weight", "reconstruction_weight", "commitment_weight", "diversity_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.view_order not in VIEW_ORDERS:
            raise InvalidInputError(f"Unknown view_order {self.view_order!r}; accepted: {', '.join(VIEW_ORDERS)}")
        if self.device.split(":")[0] not in DEVICES:
            raise InvalidInputError(f"Unknown device {self.device!r}; accepted: cpu, cuda, cuda:N")

    def without_view_diversity(self) -> TrainConfig:
        """Return this config with the four view-diversity and codebook-use mechanisms off (the ablation)."""
        return replace(self, distinct_ids=False, balanced_assignment=False, reinit_dead_codes=False, diversity_weight=0.0)


@dataclass(frozen=True)
class TrainingStats:
    level_losses: list[dict[str, float]]  # per level, the mean of each loss over its last epoch
    retriever_losses: dict[str, float]  # the last epoch of retriever training on the final IDs
    dead_codes_reset: list[int]  # per level, codes re-initialised over all epochs
    seconds: float  # wall-clock training time
    routed_captions_per_view: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# The retriever.


class GenerativeRetriever(nn.Module):
    """Generative retriever from query embedding to semantic-ID logits, as in ``grdr_core.retriever_runtime``.

    ``codebooks`` is the tokenizer's ``nn.ParameterList`` itself, not a copy, so the
    retriever's vocabulary at level ``l`` is the tokenizer's level-``l`` codebook.
    """

    def __init__(
        self,
        query_dim: int,
        hidden: int,
        codebooks: nn.ParameterList,
        generator: torch.Generator | None = None,
        scale: float = 10.0,
    ) -> None:
        super().__init__()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        code_dim = codebooks[0].shape[1]
        levels = len(codebooks)

        def gaussian(*shape: int, fan_in: int, gain: float = 1.0) -> nn.Parameter:
            return nn.Parameter(gain * torch.randn(*shape, generator=generator) / math.sqrt(fan_in))

        self.codebooks = codebooks
        self.w_in = gaussian(hidden, query_dim, fan_in=query_dim, gain=2.0)
        self.b_in = nn.Parameter(torch.zeros(hidden))
        self.w_out = nn.ParameterList([gaussian(code_dim, hidden, fan_in=hidden) for _ in range(levels)])
        self.w_h = nn.ParameterList([gaussian(hidden, hidden, fan_in=hidden, gain=0.5) for _ in range(levels)])
        self.w_e = nn.ParameterList([gaussian(hidden, code_dim, fan_in=code_dim, gain=2.0) for _ in range(levels)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(hidden)) for _ in range(levels)])
        self.log_scale = nn.Parameter(torch.full((1,), math.log(scale)))
        self.codebook_gradient = 1.0  # factor on the gradient into the shared codebooks

    def codebook(self, level: int) -> torch.Tensor:
        """Return codebook ``level`` with its gradient scaled by ``codebook_gradient`` (same values)."""
        codebook = self.codebooks[level]
        if self.codebook_gradient == 1.0:
            return codebook
        detached = codebook.detach()
        if self.codebook_gradient == 0.0:
            return detached
        return detached + self.codebook_gradient * (codebook - detached)

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    def start(self, queries: torch.Tensor) -> torch.Tensor:
        return torch.tanh(queries @ self.w_in.T + self.b_in)

    def logits(self, level: int, states: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(states @ self.w_out[level].T, dim=-1)
        return self.log_scale.exp() * projected @ F.normalize(self.codebook(level), dim=-1).T

    def advance(self, level: int, states: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        code_embeddings = self.codebook(level)[codes]
        return states + torch.tanh(states @ self.w_h[level].T + code_embeddings @ self.w_e[level].T + self.b[level])

    def forward(self, queries: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Return logits ``(B, K_l)`` for levels ``0 .. n-1`` given the true codes ``(B, n)`` (teacher forcing)."""
        states = self.start(queries)
        outputs = []
        for level in range(codes.shape[1]):
            outputs.append(self.logits(level, states))
            if level + 1 < codes.shape[1]:
                states = self.advance(level, states, codes[:, level])
        return outputs

    def to_runtime(self) -> RetrieverRuntime:
        """Export the weights as the float32 NumPy retriever used at query time."""

        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

        return RetrieverRuntime.fold(
            w_in=array(self.w_in),
            b_in=array(self.b_in),
            w_out=[array(w) for w in self.w_out],
            codebooks=[array(c) for c in self.codebooks],
            w_h=[array(w) for w in self.w_h],
            w_e=[array(w) for w in self.w_e],
            b=[array(b) for b in self.b],
            scale=float(self.log_scale.detach().exp().item()),
        )

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the weights without the shared codebooks, which the tokenizer stores."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("codebooks.")}


# ---------------------------------------------------------------------------------------
# The trained model.


@dataclass
class TrainedModel:
    tokenizer: MultiViewTokenizer
    retriever: GenerativeRetriever
    config: TrainConfig
    stats: TrainingStats | None = None

    name = TOKENIZER_NAME

    @property
    def codebook_sizes(self) -> list[int]:
        return self.tokenizer.codebook_sizes

    @property
    def views(self) -> int:
        return self.tokenizer.views

    @property
    def levels(self) -> int:
        return self.tokenizer.levels

    def assign(self, video_embeddings: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Return ``(N, V, L)`` uint16 semantic IDs of ``(N, D)`` video embeddings."""
        return self.tokenizer.assign(video_embeddings, distinct_ids=self.config.distinct_ids, chunk=chunk)

    def runtime(self) -> RetrieverRuntime:
        return self.retriever.to_runtime()

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and config (JSON), plus the NumPy runtime's own files.

        The runtime files (``retriever_runtime.WEIGHTS_FILE`` and ``CONFIG_FILE``) let a
        query server load the retriever with ``RetrieverRuntime.load`` and no torch.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"tokenizer.{k}": v for k, v in self.tokenizer.state_dict().items()}
        tensors.update({f"retriever.{k}": v for k, v in self.retriever.own_state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / MODEL_WEIGHTS_FILE))
        header = {
            "tokenizer": self.name,
            "format_version": MODEL_FORMAT_VERSION,
            "views": self.views,
            "levels": self.levels,
            "codebook_sizes": self.codebook_sizes,
            "video_dim": self.tokenizer.video_dim,
            "query_dim": self.tokenizer.query_dim,
            "view_dim": self.tokenizer.view_dim,
            "hidden": self.retriever.w_in.shape[0],
            "train_config": asdict(self.config),
            "stats": asdict(self.stats) if self.stats is not None else None,
        }
        (directory / MODEL_CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        self.runtime().save(directory)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> TrainedModel:
        directory = Path(directory)
        try:
            header = json.loads((directory / MODEL_CONFIG_FILE).read_text())
            tensors = load_file(str(directory / MODEL_WEIGHTS_FILE), device=device)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"Cannot load the multi-view model from {directory}: {exc}") from exc
        if header.get("tokenizer") != cls.name:
            raise IndexFormatError(f"{directory} contains tokenizer {header.get('tokenizer')!r}, expected {cls.name!r}")
        if header.get("format_version") != MODEL_FORMAT_VERSION:
            raise IndexFormatError(f"Model in {directory} has format version {header.get('format_version')}, expected {MODEL_FORMAT_VERSION}")

        known = {f.name for f in fields(TrainConfig)}
        # Models saved before video queries existed were trained without them (a default
        # that may change must not apply to them).
        recorded = {"video_queries": 0.0, **header["train_config"]}
        config = replace(TrainConfig(**{k: v for k, v in recorded.items() if k in known}), device=device)
        tokenizer = MultiViewTokenizer(header["video_dim"], header["query_dim"], header["views"], header["view_dim"], header["codebook_sizes"])
        retriever = GenerativeRetriever(header["query_dim"], header["hidden"], tokenizer.codebooks)
        try:
            tokenizer.load_state_dict({k.removeprefix("tokenizer."): v for k, v in tensors.items() if k.startswith("tokenizer.")})
            retriever_state = {k.removeprefix("retriever."): v for k, v in tensors.items() if k.startswith("retriever.")}
            retriever_state.update({f"codebooks.{level}": c for level, c in enumerate(tokenizer.codebooks)})
            retriever.load_state_dict(retriever_state)
        except RuntimeError as exc:
            raise IndexFormatError(f"Weights in {directory} do not match their config: {exc}") from exc
        stats = TrainingStats(**header["stats"]) if header.get("stats") else None
        model = cls(tokenizer.to(device), retriever.to(device), config, stats)
        model.tokenizer.requires_grad_(False)
        model.retriever.requires_grad_(False)
        return model


# ---------------------------------------------------------------------------------------
# Training.


@contextmanager
def _deterministic_algorithms() -> Iterator[None]:
    # NOTE: torch keeps this flag per process, so two trainings in parallel threads can
    # restore the wrong value. warn_only avoids errors on CUDA ops without a deterministic kernel.
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _validate_videos(video_embeddings: np.ndarray) -> np.ndarray:
    videos = np.asarray(video_embeddings, dtype=np.float32)
    if videos.ndim != 2 or len(videos) < 2:
        raise InvalidInputError(f"Expected video embeddings of shape (N, D) with N >= 2, got {videos.shape}")
    if not np.isfinite(videos).all():
        raise InvalidInputError("Video embeddings must be finite (found NaN or inf)")
    return videos


def _validate_captions(caption_ordinals: np.ndarray, caption_embeddings: np.ndarray, num_videos: int) -> tuple[np.ndarray, np.ndarray]:
    ordinals = np.asarray(caption_ordinals)
    captions = np.asarray(caption_embeddings, dtype=np.float32)
    if captions.ndim != 2 or len(captions) < 1:
        raise InvalidInputError(f"Expected caption embeddings of shape (M, Dq) with M >= 1, got {captions.shape}")
    if ordinals.shape != (len(captions),) or not np.issubdtype(ordinals.dtype, np.integer):
        raise InvalidInputError(f"Expected {len(captions)} integer caption ordinals, got dtype {ordinals.dtype} and shape {ordinals.shape}")
    if ordinals.min() < 0 or ordinals.max() >= num_videos:
        raise InvalidInputError(f"Caption ordinals must lie in [0, {num_videos - 1}], got values from {ordinals.min()} to {ordinals.max()}")
    if not np.isfinite(captions).all():
        raise InvalidInputError("Caption embeddings must be finite (found NaN or inf)")
    return ordinals.astype(np.int64), captions


def _code_losses(logits: list[torch.Tensor], targets: torch.Tensor, label_smoothing: float) -> list[torch.Tensor]:
    return [F.cross_entropy(level_logits, targets[:, level], label_smoothing=label_smoothing) for level, level_logits in enumerate(logits)]


def _contrastive_loss(queries: torch.Tensor, targets: torch.Tensor, ordinals: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between unit ``(B, d)`` queries and unit ``(B, d)`` targets.

    Rows of the same video are not negatives of each other (a video appears once per
    caption in a batch), so those entries are masked out.
    """
    logits = queries @ targets.T / temperature
    same_video = ordinals[:, None] == ordinals[None, :]
    same_video.fill_diagonal_(False)
    logits = logits.masked_fill(same_video, float("-inf"))
    labels = torch.arange(len(queries), device=queries.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _diversity_loss(view_vectors: torch.Tensor, margin: float) -> torch.Tensor:
    """Squared hinge on the cosine between two views of one video, ``(B, V, d)`` unit vectors."""
    views = view_vectors.shape[1]
    cosines = view_vectors @ view_vectors.transpose(1, 2)
    off_diagonal = ~torch.eye(views, dtype=torch.bool, device=view_vectors.device)
    return F.relu(cosines[:, off_diagonal] - margin).pow(2).mean()


def _level_step(
    tokenizer: MultiViewTokenizer,
    retriever: GenerativeRetriever,
    videos: torch.Tensor,
    queries: torch.Tensor,
    routes: torch.Tensor,
    ordinals: torch.Tensor,
    caption_rows: int,
    level: int,
    config: TrainConfig,
) -> dict[str, torch.Tensor]:
    """Compute the losses of one batch while ``level`` trains, with one ``videos`` row ``(B, D)`` per query.

    The first ``caption_rows`` queries are captions, the others video queries (see
    ``TrainConfig.video_queries``).
    """
    batch, views = len(videos), tokenizer.views
    view_vectors = tokenizer.view_vectors(videos)
    flat = view_vectors.reshape(batch * views, -1)

    # Residual quantization of every view down to `level`. The trained level may pick
    # balanced codes, but the retriever's targets are always the nearest codes, because
    # those are the codes that assignment produces.
    residual = flat
    quantized = torch.zeros_like(flat)
    commitment = flat.new_zeros(())
    nearest_codes = []
    for current in range(level + 1):
        scores = tokenizer.level_scores(current, residual)
        nearest = scores.argmax(dim=-1)
        chosen = nearest
        if config.balanced_assignment and current == level:
            chosen = sinkhorn_codes(scores, config.sinkhorn_epsilon, config.sinkhorn_iterations)
        code_vectors = tokenizer.codebooks[current][chosen]
        commitment = commitment + F.mse_loss(code_vectors, residual.detach()) + config.commitment_weight * F.mse_loss(residual, code_vectors.detach())
        quantized = quantized + code_vectors.detach()
        residual = residual - code_vectors.detach()
        nearest_codes.append(nearest)
    straight_through = (flat + (quantized - flat).detach()).reshape(batch, views, -1)

    rows = torch.arange(batch, device=videos.device)
    routed = F.normalize(straight_through[rows, routes], dim=-1)
    losses = {
        "reconstruction": 1.0 - F.cosine_similarity(tokenizer.decode(straight_through), videos, dim=-1).mean(),
        "commitment": commitment,
    }
    # A video as its own query would pull every view towards the video, so the
    # contrastive loss uses the caption rows only (a batch may contain none).
    if caption_rows > 0:
        captions = slice(0, caption_rows)
        losses["contrastive"] = _contrastive_loss(
            tokenizer.project_queries(queries[captions]), routed[captions], ordinals[captions], config.temperature
        )
    if views > 1 and config.diversity_weight > 0:
        losses["diversity"] = _diversity_loss(view_vectors, config.diversity_margin)

    if config.cotrain:
        targets = torch.stack(nearest_codes, dim=1).reshape(batch, views, level + 1)[rows, routes]
        code_losses = _code_losses(retriever(queries, targets), targets, config.label_smoothing)
        losses["code"] = code_losses[level]
        if level > 0:
            losses["earlier_code"] = torch.stack(code_losses[:level]).mean()
    return losses


_LOSS_WEIGHTS = {
    "contrastive": "contrastive_weight",
    "reconstruction": "reconstruction_weight",
    "diversity": "diversity_weight",
    "code": "code_weight",
    "earlier_code": "earlier_code_weight",
}


def _weighted_total(losses: dict[str, torch.Tensor], config: TrainConfig) -> torch.Tensor:
    # The commitment term carries beta (commitment_weight) inside it, so it is added unweighted.
    weighted = [value if name == "commitment" else value * getattr(config, _LOSS_WEIGHTS[name]) for name, value in losses.items()]
    return torch.stack(weighted).sum()


@torch.no_grad()
def _step_keeping_lengths(optimizer: torch.optim.Optimizer, codebook: nn.Parameter) -> None:
    """Take an optimizer step, then scale each row of ``codebook`` back to its length before the step.

    The retriever's cosine logits are blind to a code's length, so their gradient is
    perpendicular to each row. A step along such a gradient lengthens the row, and
    Adam's steps, which rescale each coordinate, lengthened the rows too. On MSVD
    (``benchmarks/msvd_eval.py``) free lengths made the co-trained level-0 codes 2.7
    times as long as those trained without the retriever (1.60 against 0.59 for unit
    view vectors). The residual left by such a code points back along it (mean cosine
    -0.81), so the level-1 code followed from the level-0 code: 54 of 44 x 44 two-code
    prefixes were in use.
    """
    lengths = codebook.norm(dim=-1, keepdim=True)
    optimizer.step()
    codebook.copy_(F.normalize(codebook, dim=-1) * lengths)


def _train_level(
    tokenizer: MultiViewTokenizer,
    retriever: GenerativeRetriever,
    data: _TrainingData,
    level: int,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[dict[str, float], int]:
    """Train one level for ``epochs_per_level`` epochs and return its last epoch's mean losses and the dead codes reset."""
    tokenizer.init_codebook(level, data.videos, config.seed)
    trained = tokenizer.codebooks[level]
    for current, codebook in enumerate(tokenizer.codebooks):
        codebook.requires_grad_(current == level)
    modules = [tokenizer, retriever] if config.cotrain else [tokenizer]
    parameters = list({id(p): p for module in modules for p in module.parameters() if p.requires_grad}.values())
    optimizer = torch.optim.Adam(parameters, lr=config.lr)

    dead_total = 0
    epoch_losses: dict[str, float] = {}
    for epoch in range(config.epochs_per_level):
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for batch in data.batches(config.batch_size, generator):
            losses = _level_step(
                tokenizer, retriever, data.videos[batch.ordinals], batch.queries, batch.routes, batch.ordinals, batch.caption_rows, level, config
            )
            total = _weighted_total(losses, config)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.refit_code_lengths:
                _step_keeping_lengths(optimizer, trained)
            else:
                optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
                counts[name] = counts.get(name, 0) + 1
        epoch_losses = {name: value / counts[name] for name, value in sums.items()}
        if config.reinit_dead_codes and epoch + 1 < config.epochs_per_level:
            dead_total += tokenizer.reinit_dead_codes(level, data.videos, generator)
        if config.refit_code_lengths:
            tokenizer.refit_code_lengths(level, data.videos)
    logger.info("Level %d trained: %s, %d dead codes reset", level, ", ".join(f"{k} {v:.4f}" for k, v in sorted(epoch_losses.items())), dead_total)
    return epoch_losses, dead_total


def _fit_retriever_on_codes(
    retriever: GenerativeRetriever,
    codes: torch.Tensor,
    data: _TrainingData,
    epochs: int,
    config: TrainConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """Train the retriever's own weights on fixed ``(N, V, L)`` IDs, all levels at once, and return the last epoch's losses."""
    parameters = [p for name, p in retriever.named_parameters() if not name.startswith("codebooks.")]
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    epoch_losses: dict[str, float] = {}
    for _ in range(epochs):
        sums = np.zeros(codes.shape[2])
        steps = 0
        for batch in data.batches(config.batch_size, generator):
            targets = codes[batch.ordinals, batch.routes]
            level_losses = _code_losses(retriever(batch.queries, targets), targets, config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            torch.stack(level_losses).mean().backward()
            optimizer.step()
            sums += np.array([float(loss.detach()) for loss in level_losses])
            steps += 1
        epoch_losses = {f"code_level_{level}": float(value / steps) for level, value in enumerate(sums)}
    return epoch_losses


@dataclass(frozen=True, eq=False)
class _Batch:
    queries: torch.Tensor  # (B, Dq), captions first, then video queries
    ordinals: torch.Tensor  # (B,) int64, the video of each query
    routes: torch.Tensor  # (B,) int64, the view each query trains against
    caption_rows: int


@dataclass(frozen=True, eq=False)
class _TrainingData:
    videos: torch.Tensor  # (N, D)
    queries: torch.Tensor  # (M, Dq) caption embeddings
    ordinals: torch.Tensor  # (M,) int64
    routes: torch.Tensor  # (M,) int64
    views: int
    video_queries: int  # video queries per epoch, so (video, view) pairs repeat when there are more than N * views

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[_Batch]:
        """Yield one epoch of shuffled batches: every caption once and ``video_queries`` (video, view) pairs drawn anew."""
        captions = len(self.queries)
        order = torch.randperm(captions + self.video_queries, generator=generator)
        pairs = None
        if self.video_queries:
            # Every (video, view) pair once before any pair repeats.
            count = len(self.videos) * self.views
            rounds = -(-self.video_queries // count)
            pairs = torch.cat([torch.randperm(count, generator=generator) for _ in range(rounds)])[: self.video_queries]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            caption = rows[rows < captions].to(self.queries.device)
            if pairs is None:
                yield _Batch(self.queries[caption], self.ordinals[caption], self.routes[caption], len(caption))
                continue
            pair = pairs[rows[rows >= captions] - captions].to(self.queries.device)
            videos, views = pair // self.views, pair % self.views
            yield _Batch(
                torch.cat((self.queries[caption], self.videos[videos])),
                torch.cat((self.ordinals[caption], videos)),
                torch.cat((self.routes[caption], views)),
                len(caption),
            )


def _training_data(
    videos: np.ndarray, ordinals: np.ndarray, captions: np.ndarray, routes: np.ndarray, config: TrainConfig, device: torch.device
) -> _TrainingData:
    video_queries = round(config.video_queries * len(captions))
    if video_queries and videos.shape[1] != captions.shape[1]:
        logger.warning(
            "Training without video queries: captions have %d dimensions and videos %d, so videos cannot serve as queries",
            captions.shape[1], videos.shape[1],
        )
        video_queries = 0
    return _TrainingData(
        videos=torch.from_numpy(videos).to(device),
        queries=torch.from_numpy(captions).to(device),
        ordinals=torch.from_numpy(ordinals).to(device),
        routes=torch.from_numpy(np.asarray(routes, dtype=np.int64)).to(device),
        views=config.views,
        video_queries=video_queries,
    )


def train(
    video_embeddings: np.ndarray,
    caption_ordinals: np.ndarray,
    caption_embeddings: np.ndarray,
    config: TrainConfig = TrainConfig(),
    on_level_end: Callable[[int, MultiViewTokenizer], None] | None = None,
) -> TrainedModel:
    """Train a multi-view tokenizer and its retriever on (video, caption) pairs.

    ``video_embeddings`` ``(N, D)`` float32, ``caption_ordinals`` ``(M,)`` the video of
    each training caption, ``caption_embeddings`` ``(M, Dq)`` float32. ``Dq`` may differ
    from ``D`` (a different query encoder); videos then cannot serve as queries, and
    training skips video queries with a warning. ``on_level_end(level, tokenizer)``, if given,
    runs after each level has trained, e.g. for progress reports. The same inputs and
    config give identical weights on the same hardware, torch build and number of
    torch threads.
    """
    videos_np = _validate_videos(video_embeddings)
    ordinals_np, captions_np = _validate_captions(caption_ordinals, caption_embeddings, len(videos_np))
    started = time.perf_counter()
    device = torch.device(config.device)
    with _deterministic_algorithms():
        generator = torch.Generator().manual_seed(config.seed)
        routes_np = route_captions(ordinals_np, captions_np, len(videos_np), config.views, config.seed, config.view_order)
        distinct_videos = len(np.unique(videos_np.round(6), axis=0))
        sizes = [effective_codes(config.codes_per_level, len(videos_np), distinct_videos)] * config.levels
        view_dim = config.view_dim or videos_np.shape[1]

        tokenizer = MultiViewTokenizer(videos_np.shape[1], captions_np.shape[1], config.views, view_dim, sizes, generator).to(device)
        retriever = GenerativeRetriever(captions_np.shape[1], config.hidden, tokenizer.codebooks, generator, config.retriever_scale).to(device)
        retriever.codebook_gradient = config.codebook_code_gradient
        data = _training_data(videos_np, ordinals_np, captions_np, routes_np, config, device)

        level_losses = []
        dead_codes = []
        for level in range(config.levels):
            losses, dead = _train_level(tokenizer, retriever, data, level, config, generator)
            level_losses.append(losses)
            dead_codes.append(dead)
            if on_level_end is not None:
                on_level_end(level, tokenizer)

        tokenizer.requires_grad_(False)
        codes = torch.from_numpy(tokenizer.assign(videos_np, distinct_ids=config.distinct_ids).astype(np.int64)).to(device)
        retriever_epochs = config.polish_epochs if config.cotrain else config.levels * config.epochs_per_level + config.polish_epochs
        retriever_losses = _fit_retriever_on_codes(retriever, codes, data, retriever_epochs, config, generator)
        retriever.requires_grad_(False)

    stats = TrainingStats(
        level_losses=level_losses,
        retriever_losses=retriever_losses,
        dead_codes_reset=dead_codes,
        seconds=time.perf_counter() - started,
        routed_captions_per_view=np.bincount(routes_np, minlength=config.views).tolist(),
    )
    logger.info("Trained %d views x %d levels on %d videos and %d captions in %.1f s", config.views, config.levels, len(videos_np), len(captions_np), stats.seconds)
    return TrainedModel(tokenizer, retriever, config, stats)


def train_retriever_for_codes(
    video_embeddings: np.ndarray,
    video_codes: np.ndarray,
    codebooks: list[np.ndarray],
    caption_ordinals: np.ndarray,
    caption_embeddings: np.ndarray,
    config: TrainConfig = TrainConfig(),
) -> GenerativeRetriever:
    """Train a retriever to decode captions into fixed IDs, e.g. the residual k-means baseline's.

    ``video_embeddings`` ``(N, D)`` serve as video queries (``TrainConfig.video_queries``);
    ``video_codes`` ``(N, V, L)`` and the ``(K_l, d)`` ``codebooks`` stay frozen. With
    ``V > 1`` captions are routed to views as in ``train``. The retriever trains for as
    many epochs as ``train`` gives it in all (``levels * epochs_per_level +
    polish_epochs``), so both compare at equal training.
    """
    videos_np = _validate_videos(video_embeddings)
    video_codes = np.asarray(video_codes)
    if video_codes.ndim != 3 or video_codes.shape[2] != len(codebooks) or len(video_codes) != len(videos_np):
        raise InvalidInputError(
            f"Expected codes of shape ({len(videos_np)}, V, {len(codebooks)}) for {len(videos_np)} videos and {len(codebooks)} codebooks, "
            f"got {video_codes.shape}"
        )
    for level, codebook in enumerate(codebooks):
        if int(video_codes[:, :, level].max()) >= len(codebook):
            raise InvalidInputError(f"Level {level} uses code {int(video_codes[:, :, level].max())}, outside its codebook of {len(codebook)}")
    ordinals_np, captions_np = _validate_captions(caption_ordinals, caption_embeddings, len(video_codes))

    device = torch.device(config.device)
    with _deterministic_algorithms():
        generator = torch.Generator().manual_seed(config.seed)
        views = video_codes.shape[1]
        routes = route_captions(ordinals_np, captions_np, len(video_codes), views, config.seed, config.view_order)
        frozen = nn.ParameterList([nn.Parameter(torch.as_tensor(np.asarray(c, dtype=np.float32)), requires_grad=False) for c in codebooks])
        retriever = GenerativeRetriever(captions_np.shape[1], config.hidden, frozen, generator, config.retriever_scale).to(device)
        data = _training_data(videos_np, ordinals_np, captions_np, routes, replace(config, views=views), device)
        codes = torch.from_numpy(video_codes.astype(np.int64)).to(device)
        epochs = config.levels * config.epochs_per_level + config.polish_epochs
        losses = _fit_retriever_on_codes(retriever, codes, data, epochs, config, generator)
        retriever.requires_grad_(False)
    logger.info("Trained a retriever for fixed codes: %s", ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return retriever
