"""Work directory of an index update: the build's layout plus the list of changes.

An update (``grdr_core.update``) keeps its work in ``.<index name>.grdr-update`` beside
the index, laid out as ``grdr_schemas.build`` describes. Its units hold only the new
and changed files. One more file records what the update found::

    changes.parquet    every discovered file in discovery order, then the removed ones,
                       each with its change; written before plan.json

The merge walks ``changes.parquet`` in order, so the new version lists its files in
discovery order whichever engine ran the units.
"""

from __future__ import annotations

import enum
from pathlib import Path

import pyarrow as pa

UPDATE_WORK_VERSION = 1


class Change(str, enum.Enum):
    """The change of a file against the index version that an update starts from."""

    ADDED = "added"  # no row with this video_id in the old manifest
    CHANGED = "changed"  # a row with another fingerprint
    UNCHANGED = "unchanged"  # a row with the same fingerprint: its row and embedding are reused
    REMOVED = "removed"  # a row whose file was not discovered: left out of the new version


UPDATE_CHANGES_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("change", pa.string(), nullable=False),  # a Change value
        # As discovered now; for a removed file, as the old manifest recorded it.
        pa.field("uri", pa.string(), nullable=False),
        pa.field("uri_bytes", pa.binary()),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
    ],
    metadata={"grdr.update_work_version": str(UPDATE_WORK_VERSION)},
)


def update_work_dir_for(index_root: Path) -> Path:
    """Return the work directory of an update of the index at ``index_root``."""
    return index_root.parent / f".{index_root.name}.grdr-update"


def changes_path(work_root: Path) -> Path:
    return work_root / "changes.parquet"
