"""Compiled (numba) kernels of generative recall and rerank: beam search, pool deduplication, float16 dot products.

One kernel call decodes a whole batch of queries, so a query costs no Python or NumPy
call per level. The arithmetic follows ``grdr_core.recall.beam_search_numpy`` step by
step, with three differences in rounding only: dot products sum in another order than
OpenBLAS (the matrix products that serve all beams of a level are BLAS calls), tanh is
a rational approximation, and the softmax normaliser sums a polynomial float32 exp in
float32 (NumPy: float64). Log-probs differed from the NumPy path by at most 5.2e-6 on
the MSVD benchmark index before the float32 exp, and by at most 1.2e-6 on the tests'
synthetic tries after it.

Importing this module imports numba (about 0.5 s on a 2-vCPU VM) and loads the compiled
kernels from numba's disk cache, so ``grdr_core.recall`` imports it at the first query,
and a cache miss compiles them (seconds). Numba writes
the cache to ``NUMBA_CACHE_DIR`` when that is set, else to the ``__pycache__`` folder
next to this file, else to the user's cache folder (``~/.cache/numba`` on Linux). When
none of them is writable, the kernels are compiled again in every process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

logger = logging.getLogger(__name__)

# Kernel status values besides a non-negative count.
INVALID_CODE = -1  # the trie lists a code outside the retriever's codebook
TOO_MANY_CHILDREN = -2  # a prefix lists more children than the codebook has codes


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Return a numba ``njit`` decorator that caches on disk when numba finds a writable folder."""

    # The NumPy error model lets division return inf or NaN instead of raising, which
    # would add a branch that stops LLVM from vectorising a loop.
    options = {"nogil": True, "error_model": "numpy", **options}

    def decorate(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError as exc:
            # numba raises RuntimeError("cannot cache function ...") when neither
            # NUMBA_CACHE_DIR, __pycache__ nor the user cache folder is writable.
            logger.warning("Compiling %s without a disk cache, so every process compiles it again: %s", function.__name__, exc)
            return numba.njit(**options)(function)

    return decorate


# Reassociation lets LLVM vectorise the sum, which changes only its rounding.
@_jit(fastmath={"reassoc", "contract"})
def _dot(left: np.ndarray, right: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for i in range(left.shape[0]):
        total += left[i] * right[i]
    return total


@_jit(fastmath={"reassoc", "contract"})
def _matvec(matrix: np.ndarray, vector: np.ndarray, out: np.ndarray) -> None:
    """Set ``out[j]`` to the dot product of ``matrix[j]`` and ``vector``.

    Four rows share each pass over ``vector``, which saves loads and horizontal sums.
    """
    rows, width = matrix.shape
    blocked = rows - rows % 4
    for j in range(0, blocked, 4):
        total0 = np.float32(0.0)
        total1 = np.float32(0.0)
        total2 = np.float32(0.0)
        total3 = np.float32(0.0)
        for i in range(width):
            value = vector[i]
            total0 += matrix[j, i] * value
            total1 += matrix[j + 1, i] * value
            total2 += matrix[j + 2, i] * value
            total3 += matrix[j + 3, i] * value
        out[j] = total0
        out[j + 1] = total1
        out[j + 2] = total2
        out[j + 3] = total3
    for j in range(blocked, rows):
        out[j] = _dot(matrix[j], vector)


# tanh(x) ~ x P(x^2) / Q(x^2) on [-TANH_CLAMP, TANH_CLAMP]: the rational approximation of
# Eigen's generic_fast_tanh_float (Eigen/src/Core/MathFunctionsImpl.h), also ONNX
# Runtime's MLAS tanh kernel. Evaluated in float64 and rounded to float32, it is within 4
# ulp of tanh (0.65 ulp on average). Unlike a call to tanhf, LLVM vectorises it.
TANH_CLAMP = 7.90531110763549805


@_jit(inline="always")
def _tanh(value: np.float32) -> np.float32:
    x = min(max(np.float64(value), -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    p = -2.76076847742355e-16
    p = p * x2 + 2.00018790482477e-13
    p = p * x2 - 8.60467152213735e-11
    p = p * x2 + 5.12229709037114e-08
    p = p * x2 + 1.48572235717979e-05
    p = p * x2 + 6.37261928875436e-04
    p = p * x2 + 4.89352455891786e-03
    q = 1.19825839466702e-06
    q = q * x2 + 1.18534705686654e-04
    q = q * x2 + 2.26843463243900e-03
    q = q * x2 + 4.89352518554385e-03
    return np.float32(x * p / q)


# exp(x) = 2^n exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2, exp(r) by the degree-7
# polynomial of Cephes' expf (S. Moshier), within about 1 ulp of expf. ln 2 is split in
# two parts so that r is exact. Unlike a call to exp, LLVM vectorises it.
_LOG2_E = np.float32(1.4426950408889634)
_LN2_HIGH = np.float32(0.693359375)
_LN2_LOW = np.float32(-2.12194440e-4)
_EXP_FLOOR = np.float32(-87.0)  # 2^n stays a normal float32 above it


@_jit(fastmath={"reassoc", "contract"})
def _shifted_exp_sum(values, peak, terms, scales):  # type: ignore[no-untyped-def]
    """Return the float32 sum of ``exp(values[k] - peak)``, for ``values <= peak``.

    ``terms`` (float32) and ``scales`` (uint32) are scratch arrays at least as long as
    ``values``. Differences below -87 count as ``exp(-87)``, about 1.6e-38.
    """
    count = values.shape[0]
    powers = scales.view(np.float32)
    for k in range(count):
        x = max(values[k] - peak, _EXP_FLOOR)
        n = np.floor(x * _LOG2_E + np.float32(0.5))
        r = x - n * _LN2_HIGH - n * _LN2_LOW
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        terms[k] = p * r * r + r + np.float32(1.0)
        scales[k] = np.uint32(np.int32(n) + 127) << np.uint32(23)
    total = np.float32(0.0)
    for k in range(count):
        total += terms[k] * powers[k]
    return total


@_jit()
def _insert(total, row, entry, top_totals, top_rows, top_entries, filled):  # type: ignore[no-untyped-def]
    """Insert a candidate into the best-first top list; return the new fill.

    Candidates arrive in (row, code) order, so a candidate goes after every kept one with
    an equal total: ties keep the lower row, then the lower code.
    """
    capacity = top_totals.shape[0]
    if filled == capacity:
        if not total > top_totals[capacity - 1]:
            return filled
        position = capacity - 1
    else:
        position = filled
        filled += 1
    while position > 0 and top_totals[position - 1] < total:
        top_totals[position] = top_totals[position - 1]
        top_rows[position] = top_rows[position - 1]
        top_entries[position] = top_entries[position - 1]
        position -= 1
    top_totals[position] = total
    top_rows[position] = row
    top_entries[position] = entry
    return filled


@_jit()
def _decode_query(  # type: ignore[no-untyped-def]
    query,
    w_in,
    b_in,
    code_weights,
    code_offsets,
    output_grams,
    w_h,
    code_inputs,
    scale,
    level_scales,
    table_codes,
    first_child,
    child_count,
    beam,
    prefix_beam,
    out_paths,
    out_scores,
    out_entries,
):
    """Decode one query into ``out_paths``/``out_scores``/``out_entries``; return the count or a negative status."""
    levels = code_offsets.shape[0] - 1
    hidden = w_in.shape[0]
    scale32 = np.float32(scale)
    width = max(beam, prefix_beam)

    # Each beam row is a trie node with its summed log-prob and its retriever state.
    states = np.empty((width, hidden), np.float32)
    next_states = np.empty((width, hidden), np.float32)
    nodes = np.zeros(width, np.int64)
    scores = np.zeros(width, np.float64)
    parents = np.empty((levels, width), np.int64)
    chosen_codes = np.empty((levels, width), np.int64)
    top_totals = np.empty(width, np.float64)
    top_rows = np.empty(width, np.int64)
    top_entries = np.empty(width, np.int64)
    parent_states = np.empty((width, hidden), np.float32)
    slot_of = np.empty(width, np.int64)
    projected = np.zeros(width, np.bool_)

    products = np.empty(hidden, np.float32)
    _matvec(w_in, query, products)
    for j in range(hidden):
        states[0, j] = _tanh(products[j] + b_in[j])
    rows = 1

    for level in range(levels):
        code_offset = code_offsets[level]
        num_codes = code_offsets[level + 1] - code_offset
        logits = np.empty(num_codes, np.float32)
        exp_terms = np.empty(num_codes, np.float32)
        exp_scales = np.empty(num_codes, np.uint32)
        # The last level keeps ``beam`` full IDs, the levels before it ``prefix_beam`` prefixes.
        level_beam = beam if level + 1 == levels else prefix_beam
        level_totals, level_rows, level_entries = top_totals[:level_beam], top_rows[:level_beam], top_entries[:level_beam]
        filled = 0
        # cos(W_out h, c) = h^T (W_out^T c_unit) / |W_out h|, and |W_out h|^2 = h^T G h
        # with G = W_out^T W_out. Two matrix products (BLAS) serve every row of the level.
        code_products = np.dot(states[:rows], code_weights[code_offset : code_offset + num_codes].T)
        gram_products = np.dot(states[:rows], output_grams[level].T)
        for row in range(rows):
            node = nodes[row]
            start = first_child[node]
            count = child_count[node]
            if count > num_codes:
                return TOO_MANY_CHILDREN

            squared_norm = _dot(gram_products[row], states[row])
            factor = scale32 * level_scales[level] / np.sqrt(max(squared_norm, np.float32(1e-24)))
            # Log-softmax over the whole codebook.
            peak = np.float32(-np.inf)
            for k in range(num_codes):
                logits[k] = factor * code_products[row, k]
                peak = max(peak, logits[k])
            log_norm = np.float64(peak) + np.log(np.float64(_shifted_exp_sum(logits, peak, exp_terms, exp_scales)))
            for c in range(count):
                code = table_codes[start + c]
                if code < 0 or code >= num_codes:
                    return INVALID_CODE
                total = scores[row] + np.float64(logits[code]) - log_norm
                filled = _insert(total, row, start + c, level_totals, level_rows, level_entries, filled)

        for i in range(filled):
            entry = top_entries[i]
            parents[level, i] = top_rows[i]
            chosen_codes[level, i] = table_codes[entry]
            # The child at position e of the table is node e + 1 (see PrefixTable).
            nodes[i] = entry + 1
            scores[i] = top_totals[i]

        if level + 1 < levels:
            # Several new rows often share a parent, and W_h h depends on the parent only,
            # so W_h h is computed once per parent with one matrix product.
            projected[:rows] = False
            distinct = 0
            for i in range(filled):
                parent = parents[level, i]
                if not projected[parent]:
                    projected[parent] = True
                    slot_of[parent] = distinct
                    parent_states[distinct] = states[parent]
                    distinct += 1
            projections = np.dot(parent_states[:distinct], w_h[level].T)
            for i in range(filled):
                parent = parents[level, i]
                slot = slot_of[parent]
                code_row = code_offset + chosen_codes[level, i]
                for j in range(hidden):
                    next_states[i, j] = states[parent, j] + _tanh(projections[slot, j] + code_inputs[code_row, j])
            states, next_states = next_states, states
        rows = filled

    for i in range(rows):
        row = i
        for level in range(levels - 1, -1, -1):
            out_paths[i, level] = chosen_codes[level, row]
            row = parents[level, row]
        out_scores[i] = scores[i]
        out_entries[i] = nodes[i] - 1
    return rows


@_jit()
def decode_batch(  # type: ignore[no-untyped-def]
    queries,
    w_in,
    b_in,
    code_weights,
    code_offsets,
    output_grams,
    w_h,
    code_inputs,
    scale,
    level_scales,
    table_codes,
    first_child,
    child_count,
    beam,
    prefix_beam,
):
    """Beam-search every row of ``queries``; see ``grdr_core.recall.beam_search``.

    ``level_scales[l]`` (float32) multiplies the logits of level ``l`` before its log-softmax.
    The levels before the last keep ``prefix_beam`` prefixes, the last ``beam`` IDs.

    Returns paths ``(B, beam, levels)``, scores ``(B, beam)``, the position of each ID in
    ``table_codes`` ``(B, beam)`` and per query the number of IDs found, or
    ``INVALID_CODE`` / ``TOO_MANY_CHILDREN`` when the trie does not fit the retriever.
    """
    num_queries = queries.shape[0]
    levels = code_offsets.shape[0] - 1
    paths = np.zeros((num_queries, beam, levels), np.int64)
    scores = np.zeros((num_queries, beam), np.float64)
    entries = np.zeros((num_queries, beam), np.int64)
    counts = np.zeros(num_queries, np.int64)
    for q in range(num_queries):
        counts[q] = _decode_query(
            queries[q],
            w_in,
            b_in,
            code_weights,
            code_offsets,
            output_grams,
            w_h,
            code_inputs,
            scale,
            level_scales,
            table_codes,
            first_child,
            child_count,
            beam,
            prefix_beam,
            paths[q],
            scores[q],
            entries[q],
        )
    return paths, scores, entries, counts


@_jit()
def first_occurrences_in_ranges(ordinals, starts, ends, limit):  # type: ignore[no-untyped-def]
    """Return the first ``limit`` distinct values of ``ordinals[starts[i]:ends[i]]``, range after range."""
    total = 0
    for r in range(starts.shape[0]):
        total += ends[r] - starts[r]
    capacity = min(limit, total)
    result = np.empty(capacity, np.int64)
    # Open addressing with a load of at most one half. The slot is the top bits of a
    # multiplicative (Fibonacci) hash.
    bits = 4
    while (1 << bits) < 2 * capacity:
        bits += 1
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(64 - bits)
    table = np.full(1 << bits, -1, np.int64)
    count = 0
    for r in range(starts.shape[0]):
        for i in range(starts[r], ends[r]):
            if count == capacity:
                return result
            value = np.int64(ordinals[i])
            slot = (np.uint64(value) * np.uint64(0x9E3779B97F4A7C15)) >> shift
            while table[slot] != -1 and table[slot] != value:
                slot = (slot + np.uint64(1)) & mask
            if table[slot] == -1:
                table[slot] = value
                result[count] = value
                count += 1
    return result[:count]


# 2^112 moves a float16 exponent (bias 15) to float32's (bias 127). The product is exact
# for every finite float16 value, subnormals included, unless denormals are flushed.
_HALF_TO_SINGLE_SCALE = np.float32(2.0**112)


@_jit(fastmath={"reassoc", "contract"})
def float16_row_dots(records, rows, query, out):  # type: ignore[no-untyped-def]
    """Set ``out[i]`` to the dot product of float16 row ``records[rows[i]]`` and float32 ``query``.

    ``records`` contains the float16 rows as their ``uint16`` bit patterns, because numba
    has no float16 type. NumPy's float16 cast took about 2 ns per value on the 2-vCPU
    benchmark VM (AVX2, no AVX-512), about 7 times this kernel's conversion and sum. The
    conversion is exact, like NumPy's, and only the order of the sum differs.

    NOTE: the conversion goes through float32 subnormals, so in a thread whose
    denormals-are-zero flag is set (a library built with -Ofast may set it) float16
    values below 6.1e-5 count as 0.
    """
    width = records.shape[1]
    bits = np.empty(width, np.uint32)
    values = bits.view(np.float32)
    for i in range(rows.shape[0]):
        row = records[rows[i]]
        for j in range(width):
            bits[j] = (np.uint32(row[j]) & np.uint32(0x7FFF)) << np.uint32(13)
        for j in range(width):
            values[j] = values[j] * _HALF_TO_SINGLE_SCALE
        for j in range(width):
            half = np.uint32(row[j])
            if half & np.uint32(0x7C00) == np.uint32(0x7C00):  # infinity or NaN
                bits[j] = np.uint32(0x7F800000) | ((half & np.uint32(0x3FF)) << np.uint32(13))
            bits[j] = bits[j] | ((half & np.uint32(0x8000)) << np.uint32(16))
        out[i] = _dot(values, query)
