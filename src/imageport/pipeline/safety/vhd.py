"""The VHD footer: found at the end of every VHD, and the only header of a fixed VHD.

oslo.utils only looks for ``conectix`` at offset 0, so a fixed VHD (raw data + a 512-byte footer
at EOF) looks raw to it. The stream inspector keeps the last bytes; this module decides whether
the last 512 are a VHD footer (cookie and ones'-complement checksum), what disk type it names
and which virtual size qemu-img will give the disk (it depends on the creator application).
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
_CREATOR_OFFSET = 28
_CURRENT_SIZE_OFFSET = 48
_GEOMETRY_OFFSET = 56  # cylinders u16, heads u8, sectors per track u8
_MAX_GEOMETRY = 65535 * 16 * 255  # sectors; qemu writes it to mean "use current_size"
#: Creator applications whose disks qemu sizes by current_size; all others (Virtual PC "vpc ",
#: Virtual Server "vs  ", VirtualBox "vbox", qemu without force_size "qemu") by CHS geometry.
_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00")


@dataclass(frozen=True)
class Footer:
    """The fields of a VHD footer imageport uses."""

    disk_type: int
    creator: bytes  # creator application, 4 bytes ("win " is Hyper-V)
    virtual_size: int  # bytes, computed the way qemu-img does (see :func:`parse_footer`)


def parse_footer(data: bytes | bytearray) -> Footer | None:
    """The footer in ``data`` (exactly 512 bytes) if its cookie and checksum are right.

    The virtual size follows qemu's vpc driver, so that the inspector's limit check sees the
    size qemu-img will convert: current_size for Hyper-V, Disk2vhd, XenServer and qemu with
    force_size (or when the geometry is the maximum), else cylinders x heads x sectors.
    """
    if len(data) != FOOTER_SIZE or not data.startswith(COOKIE):
        return None
    (stored,) = struct.unpack_from(">I", data, _CHECKSUM_OFFSET)
    if checksum(data) != stored:
        return None
    (disk_type,) = struct.unpack_from(">I", data, _DISK_TYPE_OFFSET)
    creator = bytes(data[_CREATOR_OFFSET : _CREATOR_OFFSET + 4])
    (current_size,) = struct.unpack_from(">Q", data, _CURRENT_SIZE_OFFSET)
    cylinders, heads, sectors = struct.unpack_from(">HBB", data, _GEOMETRY_OFFSET)
    chs = cylinders * heads * sectors
    if creator in _CURRENT_SIZE_CREATORS or chs == _MAX_GEOMETRY:
        size = current_size // 512 * 512
    else:
        size = chs * 512
    return Footer(disk_type=disk_type, creator=creator, virtual_size=size)


def checksum(data: bytes | bytearray) -> int:
    """Ones' complement of the byte sum, with the checksum field counted as zero."""
    field = data[_CHECKSUM_OFFSET : _CHECKSUM_OFFSET + 4]
    return ~(sum(data) - sum(field)) & 0xFFFFFFFF


def disk_type_problem(disk_type: int, *, fixed: bool) -> tuple[str, str] | None:
    """Only fixed (footer at EOF only) and dynamic VHDs are accepted."""
    expected = DISK_FIXED if fixed else DISK_DYNAMIC
    if disk_type == expected:
        return None
    where = "footer at EOF" if fixed else "footer copy at offset 0"
    if disk_type == DISK_DIFFERENCING:
        return (
            "vhd_differencing",
            f"VHD {where} field disk_type is 4 (differencing): it needs its parent disk; merge "
            "it and upload a fixed or dynamic VHD (rule vhd_disk_type)",
        )
    return (
        "unknown_features",
        f"VHD {where} field disk_type is {disk_type}, not {expected} "
        f"({'fixed' if fixed else 'dynamic'}) (rule vhd_disk_type)",
    )
