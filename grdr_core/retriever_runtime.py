"""NumPy inference of the generative retriever, for fast CPU recall without torch.

The retriever maps a query embedding to a distribution over semantic-ID codes, one
level at a time (weights trained by ``grdr_core.training``):

    h_0       = tanh(W_in q + b_in)                                   state, (H,)
    logits_l  = scale * cos(W_out[l] h_l, codebook[l][k])  for each code k of level l
    h_{l+1}   = h_l + tanh(W_h[l] h_l + W_e[l] codebook[l][c_l] + b[l])

``codebook[l]`` is the tokenizer's level-l codebook (``K_l x d``), so the retriever and
the tokenizer share one vocabulary, and the input at level ``l+1`` is the embedding of
the code chosen at level ``l``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from grdr_core.errors import IndexFormatError, InvalidInputError

RUNTIME_FORMAT_VERSION = 1
WEIGHTS_FILE = "retriever.safetensors"
CONFIG_FILE = "retriever.json"


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class PackedWeights:
    """The folded retriever weights as float32 row-major arrays, levels concatenated."""

    w_in: np.ndarray  # (H, D)
    b_in: np.ndarray  # (H,)
    code_weights: np.ndarray  # (sum of K_l, H): row k of level l is W_out[l]^T times unit code k
    code_offsets: np.ndarray  # (L + 1,) int64, first row of each level in code_weights and code_inputs
    output_grams: np.ndarray  # (L, H, H): W_out[l]^T W_out[l]
    w_h: np.ndarray  # (L, H, H)
    code_inputs: np.ndarray  # (sum of K_l, H): W_e[l] c + b[l] for every code c of level l
    scale: float


@dataclass
class RetrieverRuntime:
    """Weights of a trained retriever as float32 arrays; see the module docstring for shapes."""

    w_in: np.ndarray  # (H, D)
    b_in: np.ndarray  # (H,)
    w_out: list[np.ndarray]  # per level (d, H)
    codebooks: list[np.ndarray]  # per level (K_l, d), as trained (not normalised)
    w_h: list[np.ndarray]  # per level (H, H); the last level's step is never used
    w_e: list[np.ndarray]  # per level (H, d)
    b: list[np.ndarray]  # per level (H,)
    scale: float

    def __post_init__(self) -> None:
        levels = len(self.codebooks)
        if levels < 1 or not all(len(x) == levels for x in (self.w_out, self.w_h, self.w_e, self.b)):
            raise InvalidInputError("Retriever weights need one w_out, w_h, w_e, b and codebook per level")
        # Products folded once so that a beam step costs O(H^2 + H K) instead of O(H d):
        # cos(W_out h, c) = h^T (W_out^T c_unit) / sqrt(h^T W_out^T W_out h), and the code
        # input W_e c of every code is a (K, H) lookup table.
        # Both products that logits need come from one matrix product per level.
        self._logit_weights = []  # per level (H, K_l + H): [W_out^T unit codebook^T | W_out^T W_out]
        self._code_inputs = []  # per level (K_l, H): W_e applied to every code
        for level, codebook in enumerate(self.codebooks):
            w_out = np.asarray(self.w_out[level], dtype=np.float64)
            unit = _normalize_rows(np.asarray(codebook, dtype=np.float64))
            code_scores = w_out.T @ unit.T
            output_gram = w_out.T @ w_out
            self._logit_weights.append(np.ascontiguousarray(np.hstack((code_scores, output_gram)), dtype=np.float32))
            self._code_inputs.append(np.ascontiguousarray(codebook @ self.w_e[level].T + self.b[level], dtype=np.float32))
        self._w_h_t = [np.ascontiguousarray(w.T, dtype=np.float32) for w in self.w_h]
        self._packed: PackedWeights | None = None

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @property
    def query_dim(self) -> int:
        return self.w_in.shape[1]

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(c) for c in self.codebooks]

    def start(self, queries: np.ndarray) -> np.ndarray:
        """Return initial states ``(B, H)`` for ``(B, D)`` query embeddings."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.query_dim:
            raise InvalidInputError(f"Expected queries of shape (B, {self.query_dim}), got {queries.shape}")
        return np.tanh(queries @ self.w_in.T + self.b_in)

    def logits(self, level: int, states: np.ndarray) -> np.ndarray:
        """Return ``(B, K_level)`` code logits for ``(B, H)`` states."""
        codes = len(self.codebooks[level])
        products = states @ self._logit_weights[level]
        norms = np.sqrt(np.maximum(np.einsum("bh,bh->b", products[:, codes:], states), 1e-24))
        return (self.scale / norms)[:, None] * products[:, :codes]

    def advance(self, level: int, states: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Return the states after choosing ``codes`` (``(B,)`` ints) at ``level``."""
        return states + np.tanh(states @ self._w_h_t[level] + self._code_inputs[level][codes])

    def packed_weights(self) -> PackedWeights:
        """Return the weights in the layout of the compiled kernels, built on first use and kept."""
        if self._packed is None:
            self._packed = self._pack_weights()
        return self._packed

    def _pack_weights(self) -> PackedWeights:
        sizes = self.codebook_sizes
        # Transposed, so that every logit and every state value is a dot product of two
        # contiguous rows, and a kernel computes only the logits of allowed codes.
        code_weights = [lw[:, :size].T for lw, size in zip(self._logit_weights, sizes)]
        output_grams = [lw[:, size:].T for lw, size in zip(self._logit_weights, sizes)]
        return PackedWeights(
            w_in=np.ascontiguousarray(self.w_in, dtype=np.float32),
            b_in=np.ascontiguousarray(self.b_in, dtype=np.float32),
            code_weights=np.ascontiguousarray(np.concatenate(code_weights)),
            code_offsets=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
            output_grams=np.ascontiguousarray(np.stack(output_grams)),
            w_h=np.ascontiguousarray(np.stack([w.T for w in self._w_h_t])),
            code_inputs=np.ascontiguousarray(np.concatenate(self._code_inputs)),
            scale=float(self.scale),
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"w_in": self.w_in, "b_in": self.b_in}
        for level in range(self.levels):
            tensors[f"w_out.{level}"] = self.w_out[level]
            tensors[f"codebook.{level}"] = self.codebooks[level]
            tensors[f"w_h.{level}"] = self.w_h[level]
            tensors[f"w_e.{level}"] = self.w_e[level]
            tensors[f"b.{level}"] = self.b[level]
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(directory / WEIGHTS_FILE))
        config = {"format_version": RUNTIME_FORMAT_VERSION, "levels": self.levels, "scale": float(self.scale)}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> RetrieverRuntime:
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
            tensors = load_file(str(directory / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"Cannot load the retriever from {directory}: {exc}") from exc
        if config.get("format_version") != RUNTIME_FORMAT_VERSION:
            raise IndexFormatError(f"Retriever in {directory} has format version {config.get('format_version')}, expected {RUNTIME_FORMAT_VERSION}")
        levels = range(config["levels"])
        return cls(
            w_in=tensors["w_in"],
            b_in=tensors["b_in"],
            w_out=[tensors[f"w_out.{level}"] for level in levels],
            codebooks=[tensors[f"codebook.{level}"] for level in levels],
            w_h=[tensors[f"w_h.{level}"] for level in levels],
            w_e=[tensors[f"w_e.{level}"] for level in levels],
            b=[tensors[f"b.{level}"] for level in levels],
            scale=float(config["scale"]),
        )
