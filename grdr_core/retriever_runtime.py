"""NumPy inference of the generative retriever, for fast CPU recall without torch.

The retriever maps a query embedding to a distribution over semantic-ID codes, one
level at a time (weights trained by ``grdr_core.training``):

    h_0       = tanh(W_in q + b_in)                                   state, (H,)
    logits_l  = scale * cos(W_out[l] h_l, codebook[l][k])  for each code k of level l
    h_{l+1}   = h_l + tanh(W_h[l] h_l + W_e[l] codebook[l][c_l] + b[l])

``codebook[l]`` is the tokenizer's level-l codebook (``K_l x d``), so the retriever and
the tokenizer share one vocabulary, and the input at level ``l+1`` is the embedding of
the code chosen at level ``l``.

Queries need only products of these weights, so ``RetrieverRuntime.fold`` computes them
once and the model folder stores only them: ``cos(W_out h, c) = h^T (W_out^T c_unit) /
sqrt(h^T W_out^T W_out h)``, and the input ``W_e c + b`` of every code is a ``(K, H)``
table. A beam step then costs ``O(H^2 + H K)`` instead of ``O(H d)``, and the stored
weights shrink from ``H D + L (3 H d + K d + H^2)`` to about ``H D + L (2 H K + 2 H^2)``
floats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from grdr_core.errors import IndexFormatError, InvalidInputError

# Version 2 stores the folded weights; version 1 stored W_out, the codebooks, W_e and b.
RUNTIME_FORMAT_VERSION = 2
WEIGHTS_FILE = "retriever.safetensors"
CONFIG_FILE = "retriever.json"
_ARRAYS = ("w_in", "b_in", "code_weights", "output_grams", "w_h", "code_inputs")


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class PackedWeights:
    """The folded retriever weights as float32 row-major arrays, levels concatenated.

    The last level chooses no next code, so ``w_h`` and ``code_inputs`` cover the levels
    before it only.
    """

    w_in: np.ndarray  # (H, D)
    b_in: np.ndarray  # (H,)
    code_weights: np.ndarray  # (sum of K_l, H): row k of level l is W_out[l]^T times unit code k
    code_offsets: np.ndarray  # (L + 1,) int64, first row of each level in code_weights and code_inputs
    output_grams: np.ndarray  # (L, H, H): W_out[l]^T W_out[l]
    w_h: np.ndarray  # (L - 1, H, H)
    code_inputs: np.ndarray  # (sum of K_l over the first L - 1 levels, H): W_e[l] c + b[l] for every code c of level l
    scale: float


class RetrieverRuntime:
    """A trained retriever's folded weights, read by beam search (``grdr_core.recall``)."""

    def __init__(self, packed: PackedWeights) -> None:
        offsets = packed.code_offsets
        levels = len(offsets) - 1
        hidden = packed.w_in.shape[0]
        if levels < 1 or packed.output_grams.shape != (levels, hidden, hidden) or packed.w_h.shape != (levels - 1, hidden, hidden):
            raise InvalidInputError(
                f"Retriever weights do not fit {levels} levels of state size {hidden}: output_grams {packed.output_grams.shape}, w_h {packed.w_h.shape}"
            )
        if packed.code_weights.shape != (offsets[-1], hidden) or packed.code_inputs.shape != (offsets[-2], hidden) or packed.b_in.shape != (hidden,):
            raise InvalidInputError(
                f"Retriever weights do not fit codebooks of sizes {np.diff(offsets).tolist()}: "
                f"code_weights {packed.code_weights.shape}, code_inputs {packed.code_inputs.shape}, b_in {packed.b_in.shape}"
            )
        self._packed = packed
        # The NumPy path computes both products that logits need with one matrix product per level.
        self._logit_weights = [
            np.ascontiguousarray(np.hstack((packed.code_weights[offsets[level] : offsets[level + 1]].T, packed.output_grams[level].T)))
            for level in range(levels)
        ]

    @classmethod
    def fold(
        cls,
        w_in: np.ndarray,
        b_in: np.ndarray,
        w_out: list[np.ndarray],
        codebooks: list[np.ndarray],
        w_h: list[np.ndarray],
        w_e: list[np.ndarray],
        b: list[np.ndarray],
        scale: float,
    ) -> RetrieverRuntime:
        """Fold trained weights (shapes in the module docstring: ``w_out[l]`` is ``(d, H)``, ``w_e[l]`` ``(H, d)``)."""
        levels = len(codebooks)
        if levels < 1 or not all(len(x) == levels for x in (w_out, w_h, w_e, b)):
            raise InvalidInputError("Retriever weights need one w_out, w_h, w_e, b and codebook per level")
        code_weights, output_grams, code_inputs = [], [], []
        for level, codebook in enumerate(codebooks):
            # The logit products in float64, rounded to float32 once. The code inputs are
            # float32 products, as the NumPy path computed them before weights were folded.
            level_w_out = np.asarray(w_out[level], dtype=np.float64)
            code_weights.append(_normalize_rows(np.asarray(codebook, dtype=np.float64)) @ level_w_out)
            output_grams.append(level_w_out.T @ level_w_out)
            if level + 1 < levels:
                code_inputs.append(np.asarray(codebook, dtype=np.float32) @ np.asarray(w_e[level], dtype=np.float32).T + b[level])
        hidden = np.asarray(w_in).shape[0]
        sizes = [len(c) for c in codebooks]
        return cls(
            PackedWeights(
                w_in=np.ascontiguousarray(w_in, dtype=np.float32),
                b_in=np.ascontiguousarray(b_in, dtype=np.float32),
                code_weights=np.ascontiguousarray(np.concatenate(code_weights), dtype=np.float32),
                code_offsets=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
                output_grams=np.ascontiguousarray(np.stack(output_grams), dtype=np.float32),
                w_h=np.ascontiguousarray(np.stack(w_h[: levels - 1]) if levels > 1 else np.empty((0, hidden, hidden)), dtype=np.float32),
                code_inputs=np.ascontiguousarray(np.concatenate(code_inputs) if code_inputs else np.empty((0, hidden)), dtype=np.float32),
                scale=float(scale),
            )
        )

    @property
    def levels(self) -> int:
        return len(self._packed.code_offsets) - 1

    @property
    def query_dim(self) -> int:
        return self._packed.w_in.shape[1]

    @property
    def codebook_sizes(self) -> list[int]:
        return np.diff(self._packed.code_offsets).tolist()

    def start(self, queries: np.ndarray) -> np.ndarray:
        """Return initial states ``(B, H)`` for ``(B, D)`` query embeddings."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.query_dim:
            raise InvalidInputError(f"Expected queries of shape (B, {self.query_dim}), got {queries.shape}")
        return np.tanh(queries @ self._packed.w_in.T + self._packed.b_in)

    def logits(self, level: int, states: np.ndarray) -> np.ndarray:
        """Return ``(B, K_level)`` code logits for ``(B, H)`` states."""
        codes = self.codebook_sizes[level]
        products = states @ self._logit_weights[level]
        norms = np.sqrt(np.maximum(np.einsum("bh,bh->b", products[:, codes:], states), 1e-24))
        return (self._packed.scale / norms)[:, None] * products[:, :codes]

    def advance(self, level: int, states: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Return the states after choosing ``codes`` (``(B,)`` ints) at ``level``, which is not the last."""
        first = self._packed.code_offsets[level]
        return states + np.tanh(states @ self._packed.w_h[level].T + self._packed.code_inputs[first + np.asarray(codes)])

    def packed_weights(self) -> PackedWeights:
        """Return the weights in the layout of the compiled kernels."""
        return self._packed

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({name: getattr(self._packed, name) for name in _ARRAYS}, str(directory / WEIGHTS_FILE))
        config = {
            "format_version": RUNTIME_FORMAT_VERSION,
            "levels": self.levels,
            "codebook_sizes": self.codebook_sizes,
            "scale": self._packed.scale,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> RetrieverRuntime:
        try:
            config = json.loads((directory / CONFIG_FILE).read_text())
            tensors = load_file(str(directory / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"Cannot load the retriever from {directory}: {exc}") from exc
        if config.get("format_version") != RUNTIME_FORMAT_VERSION:
            raise IndexFormatError(
                f"Retriever in {directory} has format version {config.get('format_version')}, expected {RUNTIME_FORMAT_VERSION}; "
                "run `grdr-index train` again with this version of grdr"
            )
        missing = [name for name in _ARRAYS if name not in tensors] + [key for key in ("codebook_sizes", "scale") if key not in config]
        if missing:
            raise IndexFormatError(f"Retriever in {directory} is missing {', '.join(missing)}; run `grdr-index train` again")
        try:
            packed = PackedWeights(
                **{name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in _ARRAYS},
                code_offsets=np.concatenate(([0], np.cumsum(config["codebook_sizes"]))).astype(np.int64),
                scale=float(config["scale"]),
            )
            return cls(packed)
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"Retriever in {directory} is damaged: {exc}") from exc
