"""Assign semantic IDs to every stored video and write the trie and tokenizer."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from grdr_core.id_stats import id_statistics
from grdr_core.quantize import QuantizerConfig, ResidualKMeansTokenizer
from grdr_core.shards import ShardReader
from grdr_core.trie import write_trie
from grdr_schemas.index import IndexLayout

logger = logging.getLogger(__name__)

# The quantizer is fitted on at most this many embeddings (a seeded sample), then every
# video is encoded; k-means cost grows linearly with the sample while quality saturates.
MAX_QUANTIZER_TRAINING_POINTS = 65_536


def assign_baseline_ids(shards: ShardReader, config: QuantizerConfig, layout: IndexLayout) -> dict[str, Any]:
    """Fit the residual k-means tokenizer on the stored embeddings, write the trie and model.

    Returns the tokenizer section of ``index.json``, ID statistics included.
    """
    count = len(shards)
    if count > MAX_QUANTIZER_TRAINING_POINTS:
        rng = np.random.default_rng(config.seed)
        training = shards.get(np.sort(rng.choice(count, MAX_QUANTIZER_TRAINING_POINTS, replace=False)))
    else:
        training = shards.get(np.arange(count))
    tokenizer = ResidualKMeansTokenizer(config).fit(training)

    codes = np.concatenate([tokenizer.encode(block) for _, block in shards.iter_blocks()])
    write_trie(layout.trie, codes, tokenizer.codebook_sizes)
    tokenizer.save(layout.model_dir)
    return {
        "name": tokenizer.name,
        "views": tokenizer.views,
        "levels": tokenizer.levels,
        "codebook_sizes": tokenizer.codebook_sizes,
        "seed": tokenizer.config.seed,
        "retriever": False,
        "id_statistics": id_statistics(codes, tokenizer.codebook_sizes),
    }
