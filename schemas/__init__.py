"""On-disk formats of a grdr index, each defined once.

Everything that reads or writes an index imports its schema from here, tests included.
Bump ``INDEX_FORMAT_VERSION`` on any incompatible change to any component.
"""

from grdr_schemas.index import INDEX_FORMAT_VERSION, IndexLayout
from grdr_schemas.manifest import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION, VideoStatus
from grdr_schemas.shards import SHARD_DTYPE, SHARD_FORMAT_VERSION
from grdr_schemas.trie import TRIE_FORMAT_VERSION, CODE_DTYPE, ORDINAL_DTYPE

__all__ = [
    "CODE_DTYPE",
    "INDEX_FORMAT_VERSION",
    "IndexLayout",
    "MANIFEST_SCHEMA",
    "MANIFEST_SCHEMA_VERSION",
    "ORDINAL_DTYPE",
    "SHARD_DTYPE",
    "SHARD_FORMAT_VERSION",
    "TRIE_FORMAT_VERSION",
    "VideoStatus",
]
