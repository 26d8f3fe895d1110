"""LMDB semantic-ID trie (``trie.lmdb``, a single LMDB file, no lock file).

The trie is stored as four flat arrays, so that it costs a few bytes per distinct ID and
per posting instead of one LMDB entry (about 16 bytes of overhead) per ID. Its nodes are
the distinct prefixes of length ``0..L-1`` in key order: by length, then code by code,
so node 0 is the root (a trie of no videos has no nodes).

Named databases:
- ``arrays``, with four keys:
  - ``child_codes``: the codes that may follow each node's prefix, sorted and distinct,
    node after node (``CODE_DTYPE``). The children of the last level's nodes are the
    last codes of the full semantic IDs, so position ``e`` of the last level's part of
    this array is the ``e``-th full ID in code order.
  - ``child_counts``: the number of children of each node, at least 1 (``COUNT_DTYPE``).
  - ``posting_ends``: for each full ID in code order, the end of its posting list in
    ``ordinals`` (``COUNT_DTYPE``); each list starts where the previous one ends.
  - ``ordinals``: the sorted, distinct ordinals of the videos filed under each full ID,
    list after list (``ORDINAL_DTYPE``).
- ``meta``: ``b"format_version"``, ``b"levels"``, ``b"codebook_sizes"`` and
  ``b"nodes_per_level"`` (the node count of each prefix length) as ASCII JSON.

All arrays are packed without separators. A trie stores at most 2^32 - 1 postings
(distinct pairs of semantic ID and video), because ``posting_ends`` is 32-bit.
"""

from __future__ import annotations

import numpy as np

TRIE_FORMAT_VERSION = 2
CODE_DTYPE = np.dtype("<u2")
COUNT_DTYPE = np.dtype("<u4")
ORDINAL_DTYPE = np.dtype("<u4")
DB_ARRAYS = b"arrays"
DB_META = b"meta"
KEY_CHILD_CODES = b"child_codes"
KEY_CHILD_COUNTS = b"child_counts"
KEY_POSTING_ENDS = b"posting_ends"
KEY_ORDINALS = b"ordinals"
