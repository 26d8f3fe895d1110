"""Byte-level checks of video container files, made before FFmpeg opens them.

``sniff_container`` names the container format from a file's first bytes, so that a
file FFmpeg cannot open is reported as damaged when it looks like a video container
and as an unknown format otherwise. ``find_truncation`` compares the sizes that an ISO
BMFF (MP4, MOV), Matroska (MKV, WebM) or RIFF AVI file declares with its size on disk,
which distinguishes an incomplete download or copy from other damage.
"""

from __future__ import annotations

from typing import BinaryIO

# Top-level box types of ISO BMFF files (ISO/IEC 14496-12, plus QuickTime's "wide" and
# "pnot"). A file whose first box has one of these types is taken to be ISO BMFF.
_ISO_BMFF_TOP_LEVEL = frozenset(
    {
        b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid",
        b"sidx", b"ssix", b"moof", b"mfra", b"meta", b"pdin", b"prft", b"emsg",
    }
)  # fmt: skip
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT_ID = b"\x18\x53\x80\x67"
_ASF_MAGIC = b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"
_MPEG_TS_PACKET = 188
# A fragmented MP4 has two boxes per fragment. The walk stops after this many boxes so
# that checking a file costs a bounded number of reads (16 bytes each).
_MAX_BOXES = 100_000


def sniff_container(head: bytes) -> str | None:
    """Return the container format that ``head``, a file's first bytes, starts like, or None.

    ``head`` should contain at least the first 378 bytes of the file, or all of a
    smaller file, because the MPEG-TS check needs the sync bytes of two packets.
    """
    if len(head) >= 8 and head[4:8] in _ISO_BMFF_TOP_LEVEL:
        return "ISO BMFF (MP4/MOV)"
    if head.startswith(_EBML_MAGIC):
        return "Matroska/WebM"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "AVI"
    if head.startswith(b"OggS"):
        return "Ogg"
    if head.startswith(b"FLV\x01"):
        return "FLV"
    if head.startswith(_ASF_MAGIC):
        return "ASF (WMV)"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "MPEG program stream"
    if len(head) > _MPEG_TS_PACKET and head[0] == 0x47 and head[_MPEG_TS_PACKET] == 0x47:
        return "MPEG transport stream"
    return None


def find_truncation(f: BinaryIO, size: int) -> str | None:
    """Return why the open file ``f`` of ``size`` bytes is truncated, or None when it is not known to be.

    Only ISO BMFF, Matroska and AVI files are checked. A file counts as truncated when
    a size field at its top level points past the end of the file. A size that a
    writer left open (ISO BMFF size 0, Matroska's unknown size) never does.
    """
    f.seek(0)
    head = f.read(16)
    if len(head) >= 8 and head[4:8] in _ISO_BMFF_TOP_LEVEL:
        return _iso_bmff_truncation(f, size)
    if head.startswith(_EBML_MAGIC):
        return _matroska_truncation(f, size)
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        declared = 8 + int.from_bytes(head[4:8], "little")
        if declared > size:
            return f"its RIFF header declares {declared} bytes but the file has {size}"
    return None


def _iso_bmff_truncation(f: BinaryIO, size: int) -> str | None:
    offset = 0
    for _ in range(_MAX_BOXES):
        if offset >= size:
            return None
        f.seek(offset)
        header = f.read(16)
        if len(header) < 8:
            return f"the file ends at byte {size}, inside the header of the box that starts at byte {offset}"
        box_size = int.from_bytes(header[:4], "big")
        box_type = header[4:8].decode("latin-1")
        if box_size == 1:  # a 64-bit size follows the type
            if len(header) < 16:
                return f"the file ends at byte {size}, inside the header of the {box_type!r} box at byte {offset}"
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:  # the box extends to the end of the file
            return None
        if box_size < 8:
            return None  # not a valid box header; FFmpeg reports that damage
        if offset + box_size > size:
            return (
                f"its {box_type!r} box at byte {offset} declares {box_size} bytes, ending at byte "
                f"{offset + box_size}, but the file has {size} bytes"
            )
        offset += box_size
    return None


def _matroska_truncation(f: BinaryIO, size: int) -> str | None:
    f.seek(len(_EBML_MAGIC))
    header_size, unknown = _read_vint(f)
    if header_size is None:
        return f"the file ends at byte {size}, inside its EBML header"
    if unknown:
        return None
    segment_at = f.tell() + header_size
    if segment_at > size:
        return f"its EBML header declares {header_size} bytes, past the end of the file at byte {size}"
    f.seek(segment_at)
    element_id = f.read(4)
    if len(element_id) < 4 and segment_at + len(element_id) >= size:
        return f"the file ends at byte {size}, before its Segment element"
    if element_id != _MATROSKA_SEGMENT_ID:
        return None
    segment_size, unknown = _read_vint(f)
    if segment_size is None:
        return f"the file ends at byte {size}, inside the size of its Segment element"
    if unknown:  # written by a live or non-seeking muxer
        return None
    end = f.tell() + segment_size
    if end > size:
        return f"its Segment element declares {segment_size} bytes, ending at byte {end}, but the file has {size} bytes"
    return None


def _read_vint(f: BinaryIO) -> tuple[int | None, bool]:
    """Read an EBML variable-length integer. Returns (value, unknown), or (None, False) at the end of the file."""
    first = f.read(1)
    if not first:
        return None, False
    length = 9 - first[0].bit_length()  # leading zero bits + 1; 9 for a zero byte, which is invalid
    if length > 8:
        return 0, True  # not a valid size; treat it as unknown and leave the damage to FFmpeg
    rest = f.read(length - 1)
    if len(rest) < length - 1:
        return None, False
    value = first[0] & ((1 << (8 - length)) - 1)
    for byte in rest:
        value = (value << 8) | byte
    unknown = value == (1 << (7 * length)) - 1  # all value bits set marks an unknown size
    return value, unknown
