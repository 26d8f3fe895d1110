"""Write a new LMDB file in one transaction, growing the map when it fills up.

LMDB needs the map size, the file's upper bound, before writing. An estimate that
proves too small raises ``lmdb.MapFullError`` in the middle of the transaction.
``write_sorted_tables`` then aborts the transaction, doubles the map and writes again,
so a bad estimate costs time, not the build.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lmdb

from grdr_core.errors import IndexFormatError

logger = logging.getLogger(__name__)

# LMDB on 64-bit systems can map far more, but a trie or table beyond 1 TiB means the
# size estimate or the input is wrong, so growing stops there.
MAX_MAP_SIZE = 1 << 40


def write_sorted_tables(
    path: Path,
    tables: Sequence[tuple[bytes, Sequence[tuple[bytes, bytes]]]],
    map_size: int,
    max_dbs: int,
) -> int:
    """Append each table's items, sorted by key, to its named database in a new LMDB file.

    ``tables`` lists (database name, items) pairs. Everything is written in one
    transaction, so readers never see part of it. Returns the map size that sufficed.
    Raises ``IndexFormatError`` when a table stores fewer items than given (unsorted or
    duplicate keys) or the data needs more than ``MAX_MAP_SIZE`` bytes.
    """
    env = lmdb.open(str(path), subdir=False, map_size=map_size, max_dbs=max_dbs, lock=False, meminit=True)
    try:
        while True:
            try:
                _write_once(env, path, tables)
                return map_size
            except lmdb.MapFullError as exc:
                if map_size >= MAX_MAP_SIZE:
                    raise IndexFormatError(
                        f"Writing {path} needs more than the {MAX_MAP_SIZE} bytes LMDB is allowed to map"
                    ) from exc
                grown = min(2 * map_size, MAX_MAP_SIZE)
                logger.info("LMDB map of %s is full at %d bytes; retrying the write with %d bytes", path, map_size, grown)
                # The failed transaction was aborted, so no transaction is open here, as set_mapsize requires.
                env.set_mapsize(grown)
                map_size = grown
    finally:
        env.close()


def _write_once(env: lmdb.Environment, path: Path, tables: Sequence[tuple[bytes, Sequence[tuple[bytes, bytes]]]]) -> None:
    with env.begin(write=True) as txn:
        for name, items in tables:
            db = env.open_db(name, txn=txn)
            _, added = txn.cursor(db).putmulti(items, append=True)
            if added != len(items):
                raise IndexFormatError(f"Writing {name!r} to {path} stored {added} of {len(items)} keys")
