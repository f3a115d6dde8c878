"""The VHD footer: found at the end of every VHD, and the only header of a fixed VHD.

oslo.utils only looks for ``conectix`` at offset 0, so a fixed VHD (raw data + a 512-byte footer
at EOF) looks raw to it. The stream inspector keeps the last 512 bytes; this module decides
whether they are a VHD footer (cookie and ones'-complement checksum) and what disk type it names.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FOOTER_SIZE = 512  # bytes
COOKIE = b"conectix"
DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
_CHECKSUM_OFFSET = 64
_DISK_TYPE_OFFSET = 60
_ORIGINAL_SIZE_OFFSET = 40


@dataclass(frozen=True)
class Footer:
    """The fields of a VHD footer imageport uses."""

    disk_type: int
    original_size: int  # bytes; what qemu reports as the virtual size of a fixed VHD


def parse_footer(data: bytes | bytearray) -> Footer | None:
    """The footer in ``data`` (exactly 512 bytes) if its cookie and checksum are right."""
    if len(data) != FOOTER_SIZE or not data.startswith(COOKIE):
        return None
    (stored,) = struct.unpack_from(">I", data, _CHECKSUM_OFFSET)
    if checksum(data) != stored:
        return None
    (disk_type,) = struct.unpack_from(">I", data, _DISK_TYPE_OFFSET)
    (original_size,) = struct.unpack_from(">Q", data, _ORIGINAL_SIZE_OFFSET)
    return Footer(disk_type=disk_type, original_size=original_size)


def checksum(data: bytes | bytearray) -> int:
    """Ones' complement of the byte sum, with the checksum field counted as zero."""
    field = data[_CHECKSUM_OFFSET : _CHECKSUM_OFFSET + 4]
    return ~(sum(data) - sum(field)) & 0xFFFFFFFF


def disk_type_problem(disk_type: int, *, fixed: bool) -> tuple[str, str] | None:
    """Only fixed (footer at EOF only) and dynamic VHDs are accepted."""
    expected = DISK_FIXED if fixed else DISK_DYNAMIC
    if disk_type == expected:
        return None
    if disk_type == DISK_DIFFERENCING:
        return (
            "vhd_differencing",
            "differencing VHDs need their parent disk: merge it and upload a fixed or dynamic VHD",
        )
    return "unknown_features", f"VHD disk type {disk_type} is not a fixed or dynamic disk"
