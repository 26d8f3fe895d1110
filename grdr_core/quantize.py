"""Residual k-means quantizer: the visual-only semantic-ID tokenizer.

Each video embedding is quantized over ``L`` levels: level 0 clusters the embeddings,
every later level clusters the residuals left by the levels before it (residual
quantization, Juang and Gray 1982). The codes of the ``L`` levels form the video's
semantic ID. This is the baseline that learned multi-view tokenizers must beat.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.cluster import KMeans

from grdr_core.errors import IndexFormatError, InvalidInputError

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "rq-kmeans"
MAX_CODES = 65535  # codes are stored as uint16 in the trie


@dataclass(frozen=True)
class QuantizerConfig:
    levels: int = 3
    codes_per_level: int = 128
    seed: int = 0
    kmeans_iterations: int = 50

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise InvalidInputError(f"levels must be >= 1, got {self.levels}")
        if not 1 <= self.codes_per_level <= MAX_CODES:
            raise InvalidInputError(f"codes_per_level must lie in [1, {MAX_CODES}], got {self.codes_per_level}")


def effective_codes(requested: int, num_points: int, num_distinct: int) -> int:
    """Shrink the codebook size for a small corpus.

    Uses at most ``floor(sqrt(n))`` codes, the usual rule of thumb for k-means on ``n``
    points, so that small corpora still share codes at each level; never more codes
    than distinct points and never fewer than one.
    """
    return max(1, min(requested, math.isqrt(max(num_points, 1)), num_distinct))


class ResidualKMeansTokenizer:
    """Residual k-means over L levels with one view per video."""

    name = TOKENIZER_NAME
    views = 1

    def __init__(self, config: QuantizerConfig, codebooks: list[np.ndarray] | None = None) -> None:
        self.config = config
        self.codebooks: list[np.ndarray] = codebooks or []  # level l: (K_l, dim) float32

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(c) for c in self.codebooks]

    def fit(self, embeddings: np.ndarray) -> ResidualKMeansTokenizer:
        """Learn one codebook per level from ``(n, dim)`` embeddings; deterministic for a seed."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise InvalidInputError(f"Need a non-empty (n, dim) array to fit the quantizer, got shape {embeddings.shape}")

        residual = embeddings.copy()
        self.codebooks = []
        for level in range(self.config.levels):
            distinct = len(np.unique(residual.round(decimals=6), axis=0))
            k = effective_codes(self.config.codes_per_level, len(residual), distinct)
            kmeans = KMeans(
                n_clusters=k,
                n_init=1,
                max_iter=self.config.kmeans_iterations,
                random_state=self.config.seed + level,
            )
            labels = kmeans.fit_predict(residual)
            codebook = kmeans.cluster_centers_.astype(np.float32)
            self.codebooks.append(codebook)
            residual -= codebook[labels]
            logger.info("Quantizer level %d: %d codes, mean residual norm %.4f", level, k, float(np.linalg.norm(residual, axis=1).mean()))
        return self

    def encode(self, embeddings: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Return ``(n, views, levels)`` uint16 codes of ``(n, dim)`` embeddings."""
        if not self.codebooks:
            raise InvalidInputError("The quantizer has not been fitted")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        codes = np.empty((len(embeddings), 1, self.levels), dtype=np.uint16)
        for start in range(0, len(embeddings), chunk):
            residual = embeddings[start : start + chunk].copy()
            for level, codebook in enumerate(self.codebooks):
                nearest = _nearest(residual, codebook)
                codes[start : start + chunk, 0, level] = nearest
                residual -= codebook[nearest]
        return codes

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"codebook.{level}": c for level, c in enumerate(self.codebooks)}
        save_file(tensors, str(directory / "tokenizer.safetensors"))
        header = {"tokenizer": self.name, "config": asdict(self.config), "codebook_sizes": self.codebook_sizes}
        (directory / "tokenizer.json").write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ResidualKMeansTokenizer:
        try:
            header = json.loads((directory / "tokenizer.json").read_text())
            tensors = load_file(str(directory / "tokenizer.safetensors"))
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"Cannot load the tokenizer from {directory}: {exc}") from exc
        if header.get("tokenizer") != cls.name:
            raise IndexFormatError(f"{directory} holds tokenizer {header.get('tokenizer')!r}, not {cls.name!r}")
        config = QuantizerConfig(**header["config"])
        codebooks = [tensors[f"codebook.{level}"] for level in range(config.levels)]
        return cls(config, codebooks)


def _nearest(points: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    # Squared Euclidean distance without forming the (n, K, dim) difference tensor.
    distances = (codebook * codebook).sum(axis=1)[None, :] - 2.0 * points @ codebook.T
    return distances.argmin(axis=1).astype(np.uint16)
