"""LMDB semantic-ID trie (``trie.lmdb``, a single LMDB file, no lock file).

Named databases:
- ``children``: key = one byte holding the prefix length ``l`` (``0..L-1``) followed by
  the prefix's ``l`` codes (LMDB rejects empty keys, so the root's key is ``b"\x00"``),
  value = sorted, distinct codes that may follow the prefix.
- ``postings``: key = a full semantic ID of ``L`` codes, value = sorted, distinct
  ordinals of the videos filed under it.
- ``meta``: ``b"format_version"``, ``b"levels"`` and ``b"codebook_sizes"`` as ASCII JSON.

Codes are ``CODE_DTYPE`` (big-endian uint16, so that byte order is code order) and
ordinals ``ORDINAL_DTYPE`` (little-endian uint32), packed without separators.
"""

from __future__ import annotations

import numpy as np

TRIE_FORMAT_VERSION = 1
CODE_DTYPE = np.dtype(">u2")
ORDINAL_DTYPE = np.dtype("<u4")
DB_CHILDREN = b"children"
DB_POSTINGS = b"postings"
DB_META = b"meta"
