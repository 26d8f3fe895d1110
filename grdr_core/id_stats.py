"""Statistics of assigned semantic IDs: view redundancy, ID collisions and codebook use.

NumPy only, so that ``grdr-index inspect`` and builds can report them without torch.
"""

from __future__ import annotations

import numpy as np

from grdr_core.errors import InvalidInputError


def id_statistics(codes: np.ndarray, codebook_sizes: list[int]) -> dict[str, float | int | list[float]]:
    """Measure view redundancy, ID collisions and codebook use of ``(N, V, L)`` semantic IDs.

    Returned keys:
    - ``videos``, ``views``, ``levels``;
    - ``distinct_ids_per_video``: mean number of distinct IDs among a video's views;
    - ``single_id_fraction``: fraction of videos whose views all share one ID (1.0 when V = 1);
    - ``identical_last_level_fraction``: fraction whose last-level code is the same in every view;
    - ``distinct_ids``: number of distinct IDs in the corpus;
    - ``videos_per_id_max``, ``videos_per_id_mean``: videos filed under one ID (a video counts once per ID);
    - ``shared_ids``: number of IDs filed under more than one video;
    - ``codebook_use``: per level, the fraction of the level's codes that some view uses;
    - ``distinct_prefixes``: for ``l = 1 .. L``, the number of distinct first-``l``-code
      prefixes in the corpus (the last equals ``distinct_ids``). Far fewer two-code
      prefixes than level-0 codes times level-1 codes mean that the level-1 code mostly
      follows from the level-0 code.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3 or 0 in codes.shape:
        raise InvalidInputError(f"Expected non-empty codes of shape (N, V, L), got {codes.shape}")
    num_videos, views, levels = codes.shape
    if len(codebook_sizes) != levels:
        raise InvalidInputError(f"Expected {levels} codebook sizes, one per level, got {list(codebook_sizes)}")
    for level, size in enumerate(codebook_sizes):
        if int(codes[:, :, level].max()) >= size:
            raise InvalidInputError(f"Level {level} uses code {int(codes[:, :, level].max())}, outside its codebook of {size}")

    # Each ID as one opaque byte string, so np.unique compares whole rows quickly.
    rows = np.ascontiguousarray(codes.astype(np.uint16)).reshape(num_videos * views, levels)
    packed = rows.view(np.dtype((np.void, 2 * levels))).ravel()
    unique_ids, inverse = np.unique(packed, return_inverse=True)
    id_index = inverse.reshape(num_videos, views)

    sorted_ids = np.sort(id_index, axis=1)
    distinct_per_video = 1 + (np.diff(sorted_ids, axis=1) != 0).sum(axis=1)
    pairs = np.unique(np.stack([id_index.ravel(), np.repeat(np.arange(num_videos), views)], axis=1), axis=0)
    videos_per_id = np.bincount(pairs[:, 0], minlength=len(unique_ids))
    last = codes[:, :, -1]
    return {
        "videos": int(num_videos),
        "views": int(views),
        "levels": int(levels),
        "distinct_ids_per_video": float(distinct_per_video.mean()),
        "single_id_fraction": float((distinct_per_video == 1).mean()),
        "identical_last_level_fraction": float((last == last[:, :1]).all(axis=1).mean()),
        "distinct_ids": int(len(unique_ids)),
        "videos_per_id_max": int(videos_per_id.max()),
        "videos_per_id_mean": float(videos_per_id.mean()),
        "shared_ids": int((videos_per_id > 1).sum()),
        "codebook_use": [float(len(np.unique(codes[:, :, level])) / size) for level, size in enumerate(codebook_sizes)],
        "distinct_prefixes": [_distinct_rows(rows[:, :length]) for length in range(1, levels + 1)],
    }


def _distinct_rows(rows: np.ndarray) -> int:
    packed = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    return int(len(np.unique(packed)))
