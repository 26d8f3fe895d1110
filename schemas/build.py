"""Work directory of a build in progress: the plan, the map stage's unit outputs and markers.

A build writes into a work directory beside its output (``.<name>.grdr-build``), so that
a build killed at any point and started again with the same command continues where
it stopped. Layout::

    plan.json                  the build's settings and unit count, written first
    files.parquet              every discovered file in order, with its unit number
    units/u-000000/
        embeddings.npy         float16 (n_ok, dim) L2-normalised embeddings, in row order
        manifest.parquet       one manifest row per file of the unit; ``ordinal`` is the
                               row in embeddings.npy (null when not ok)
        _SUCCESS               written last: the unit's counts as JSON
    staging/                   the index version being assembled by the global steps
    merged.json, ids.json      markers of the finished global steps

A unit without ``_SUCCESS`` is incomplete and is redone from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

BUILD_WORK_VERSION = 1

# Files per unit of the map stage. A unit is the smallest piece of work that a resumed
# build redoes and the element that the Beam and Ray engines distribute.
DEFAULT_FILES_PER_UNIT = 64

BUILD_FILES_SCHEMA = pa.schema(
    [
        pa.field("unit", pa.int64(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("uri_bytes", pa.binary()),  # raw path bytes when they are not valid UTF-8
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
    ],
    metadata={"grdr.build_work_version": str(BUILD_WORK_VERSION)},
)


def unit_name(unit: int) -> str:
    return f"u-{unit:06d}"


@dataclass(frozen=True)
class WorkLayout:
    """Paths inside a build's work directory."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def files(self) -> Path:
        return self.root / "files.parquet"

    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    def unit_dir(self, unit: int) -> Path:
        return self.units_dir / unit_name(unit)

    def unit_embeddings(self, unit: int) -> Path:
        return self.unit_dir(unit) / "embeddings.npy"

    def unit_manifest(self, unit: int) -> Path:
        return self.unit_dir(unit) / "manifest.parquet"

    def unit_marker(self, unit: int) -> Path:
        return self.unit_dir(unit) / "_SUCCESS"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def merged_marker(self) -> Path:
        return self.root / "merged.json"

    @property
    def ids_marker(self) -> Path:
        return self.root / "ids.json"


def work_dir_for(out_dir: Path) -> Path:
    """Return the work directory of a build that publishes at ``out_dir``."""
    return out_dir.parent / f".{out_dir.name}.grdr-build"
