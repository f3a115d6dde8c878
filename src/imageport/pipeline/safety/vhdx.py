"""VHDX File Parameters: a Hyper-V differencing disk (checkpoint, ``.avhdx``) needs its parent.

oslo.utils' VHDX inspector reads the region table and the Virtual Disk Size item only, and
qemu 7.2 refuses a VHDX whose File Parameters item has HasParent set with a bare "Invalid
argument". An operator should rather read that the upload is a checkpoint, so this rule reads
that one item from the staged file (a file the stream inspector already accepted, before
qemu-img sees it) and names the field. Anything it cannot parse is left to qemu-img.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import BinaryIO

Problem = tuple[str, str]  # (reason code, message)

_REGION_TABLE = 192 * 1024  # the first region table (VHDX spec 2.2.3)
_TABLE_SIZE = 64 * 1024
_ENTRY = 32
_MAX_ENTRIES = 2047  # region and metadata entries, as oslo and qemu cap them
_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
_HAS_PARENT = 0x2  # File Parameters flags: bit 0 LeaveBlockAllocated, bit 1 HasParent


def parent_problem(path: Path) -> Problem | None:
    """``backing_file`` when the File Parameters item says HasParent; None otherwise."""
    with path.open("rb") as f:
        metadata = _metadata_offset(_read(f, _REGION_TABLE, _TABLE_SIZE))
        if metadata is None:
            return None
        item = _item_offset(_read(f, metadata, _TABLE_SIZE), _FILE_PARAMETERS)
        if item is None:
            return None
        params = _read(f, metadata + item, 8)
    if len(params) < 8:
        return None
    _block_size, flags = struct.unpack("<II", params)
    if not flags & _HAS_PARENT:
        return None
    return (
        "backing_file",
        "VHDX metadata item File Parameters has HasParent set: this is a Hyper-V checkpoint "
        "(.avhdx) whose parent disk holds the rest of the data; merge or export the disk in "
        "Hyper-V and upload the result (rule vhdx_parent)",
    )


def _read(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _metadata_offset(table: bytes) -> int | None:
    if len(table) < 16 or table[:4] != b"regi":
        return None
    (count,) = struct.unpack_from("<I", table, 8)
    for i in range(min(count, _MAX_ENTRIES)):
        entry = table[16 + i * _ENTRY : 16 + (i + 1) * _ENTRY]
        if len(entry) == _ENTRY and entry[:16] == _METADATA_REGION:
            return int(struct.unpack_from("<Q", entry, 16)[0])
    return None


def _item_offset(table: bytes, wanted: bytes) -> int | None:
    if len(table) < _ENTRY or table[:8] != b"metadata":
        return None
    (count,) = struct.unpack_from("<H", table, 10)
    for i in range(min(count, _MAX_ENTRIES)):
        entry = table[_ENTRY * (i + 1) : _ENTRY * (i + 2)]
        if len(entry) == _ENTRY and entry[:16] == wanted:
            return int(struct.unpack_from("<I", entry, 16)[0])
    return None
