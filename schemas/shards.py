"""Embedding shard store: fixed-size float16 records addressed by ordinal.

Shard ``i`` is the NumPy ``.npy`` file ``shards/{i:05d}.npy`` holding a C-order array of
shape ``(n_i, dim)`` and dtype little-endian float16. Every shard but the last holds
exactly ``records_per_shard`` rows, so ordinal ``o`` lives in shard
``o // records_per_shard`` at row ``o % records_per_shard``. Rows are L2-normalised
video embeddings (before the float16 cast).
"""

from __future__ import annotations

import numpy as np

SHARD_FORMAT_VERSION = 1
SHARD_DTYPE = np.dtype("<f2")
DEFAULT_RECORDS_PER_SHARD = 65536


def shard_file_name(shard: int) -> str:
    return f"{shard:05d}.npy"
