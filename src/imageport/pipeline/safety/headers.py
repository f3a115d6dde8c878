"""Header checks oslo.utils' format inspector does not make (SECURITY.md §2.3, §4 R4).

Each check reads bytes the stream inspector already captured (the first 512 bytes, or what an
oslo inspector parsed) and returns ``(reason_code, message)`` for the first problem found, or
None. Messages name the rule and the header field, say what is wrong and what to upload
instead. VMDK rules live in :mod:`.vmdk`, VHD ones in :mod:`.vhd`.
"""

from __future__ import annotations

import struct

Problem = tuple[str, str]  # (reason code, message)

#: Magic bytes at offset 0 that name a format with certainty, checked longest first.
_MAGICS = (
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vhd"),
    (b"LUKS\xba\xbe", "luks"),
    (b"QFI\xfb", "qcow2"),
    (b"QED\x00", "qed"),
    (b"KDMV", "vmdk"),
)
_VDI_MAGIC_OFFSET = 0x40
_VDI_MAGIC = b"\x7f\x10\xda\xbe"  # 0xBEDA107F little-endian

# qcow2 header (big-endian): version u32 @4, backing offset u64 @8, crypt_method u32 @32,
# incompatible features u64 @72 (version 3 only).
_QCOW2_VERSIONS = (2, 3)
_QCOW2_DIRTY = 1 << 0
_QCOW2_CORRUPT = 1 << 1
_QCOW2_DATA_FILE = 1 << 2
_QCOW2_COMPRESSION_TYPE = 1 << 3
#: Incompatible features we accept; corrupt and data-file have their own reason codes, and
#: extended L2 (bit 4) is outside the list on purpose (policy case qcow2_extended_l2).
QCOW2_ALLOWED_INCOMPATIBLE = _QCOW2_DIRTY | _QCOW2_COMPRESSION_TYPE
_QCOW2_BIT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type",
                    4: "extended L2 entries"}  # fmt: skip

# VDI header (little-endian): image type u32 @0x4C.
_VDI_IMAGE_TYPE_OFFSET = 0x4C
_VDI_STANDALONE = (1, 2)  # dynamic ("normal"), static ("fixed")
_VDI_CHILD = {3: "undo", 4: "differencing"}

_MBR_TABLE = 446  # four 16-byte partition entries
_GPT_PROTECTIVE = 0xEE


def magic_format(head: bytes | bytearray) -> str | None:
    """The format the first bytes claim with certainty (``qcow`` for qcow2 magic, version 1)."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            if name == "qcow2" and len(head) >= 8 and struct.unpack_from(">I", head, 4)[0] == 1:
                return "qcow"
            return name
    if head[_VDI_MAGIC_OFFSET : _VDI_MAGIC_OFFSET + 4] == _VDI_MAGIC:
        return "vdi"
    return None


def qcow2_problem(header: bytes | bytearray) -> Problem | None:  # noqa: PLR0911 - one per code
    """Version, encryption, backing file, data file, corrupt bit, unknown incompatible bits."""
    version, backing = struct.unpack_from(">IQ", header, 4)
    (crypt_method,) = struct.unpack_from(">I", header, 32)
    if version not in _QCOW2_VERSIONS:
        return (
            "unsupported_version",
            f"qcow2 header field version is {version}, not 2 or 3 (rule qcow2_version)",
        )
    if crypt_method != 0:
        return (
            "encrypted",
            f"the qcow2 image is encrypted (header field crypt_method = {crypt_method}): "
            "upload it decrypted (rule qcow2_encryption)",
        )
    if backing != 0:
        return (
            "backing_file",
            "the qcow2 image names a backing file (header field backing_file_offset = "
            f"{backing}): upload a flattened image (rule qcow2_backing_file)",
        )
    if version == 2:
        return None  # version 2 headers end before the feature fields
    (incompatible,) = struct.unpack_from(">Q", header, 72)
    if incompatible & _QCOW2_DATA_FILE:
        return (
            "data_file",
            "the qcow2 image uses an external data file (incompatible_features bit 2): upload "
            "a plain image (rule qcow2_data_file)",
        )
    if incompatible & _QCOW2_CORRUPT:
        return (
            "corrupt",
            "the qcow2 image is marked corrupt (incompatible_features bit 1): repair it with "
            "qemu-img check -r all (rule qcow2_corrupt)",
        )
    unknown = incompatible & ~QCOW2_ALLOWED_INCOMPATIBLE
    if unknown:
        bits = [b for b in range(64) if unknown >> b & 1]
        named = ", ".join(f"bit {b} ({_QCOW2_BIT_NAMES.get(b, 'unknown')})" for b in bits)
        return (
            "unknown_features",
            f"the qcow2 image uses incompatible_features {named}, outside the allow-list "
            "(dirty, compression type): rewrite it with qemu-img convert -O qcow2 "
            "-o compat=1.1,extended_l2=off (rule qcow2_incompatible_features)",
        )
    return None


def vdi_problem(header: bytes | bytearray) -> Problem | None:
    """Only dynamic (1) and static (2) VDIs; undo (3) and differencing (4) ones need a parent.

    qemu-img opens a differencing VDI as if it stood alone (it ignores the parent UUID), so a
    VirtualBox snapshot would convert into a disk silently missing its parent's data.
    """
    (image_type,) = struct.unpack_from("<I", header, _VDI_IMAGE_TYPE_OFFSET)
    if image_type in _VDI_STANDALONE:
        return None
    if image_type in _VDI_CHILD:
        return (
            "backing_file",
            f"VDI header field image_type is {image_type} ({_VDI_CHILD[image_type]}): a "
            "VirtualBox snapshot whose parent disk holds the rest of the data; clone the whole "
            "disk with VBoxManage clonemedium and upload that (rule vdi_image_type)",
        )
    return (
        "unknown_features",
        f"VDI header field image_type is {image_type}, not 1 (dynamic) or 2 (static) "
        "(rule vdi_image_type)",
    )


def mbr_problem(sector: bytes | bytearray) -> Problem | None:
    """oslo.utils' MBR rules for a disk with the 55 AA signature, naming the entry at fault.

    Boot flags 0x00 or 0x80; a GPT protective entry (type 0xEE) must start at CHS 00 02 00
    and LBA 1 and be the only entry (so a hybrid MBR is refused, as oslo and Glance do by
    default); at least one entry must be used.
    """
    entries = [struct.unpack_from("<B3sB3sII", sector, _MBR_TABLE + 16 * i) for i in range(4)]
    used = []
    protective = False
    for i, (boot, start_chs, kind, _end_chs, start_lba, _sectors) in enumerate(entries):
        if boot not in (0x00, 0x80):
            return _mbr(f"MBR partition entry {i} has boot flag {boot:#04x}, not 0x00 or 0x80")
        if kind:
            used.append(i)
        if kind == _GPT_PROTECTIVE:
            protective = True
            if start_chs != b"\x00\x02\x00":
                return _mbr(
                    f"GPT protective MBR entry {i} starts at CHS {start_chs.hex(' ')}, not 00 02 00"
                )
            if start_lba != 1:
                return _mbr(f"GPT protective MBR entry {i} starts at LBA {start_lba}, not 1")
    if protective and used != [0]:
        listed = ", ".join(f"{i} (type {entries[i][2]:#04x})" for i in used)
        return _mbr(
            f"a GPT protective MBR must use entry 0 alone, this one uses entries {listed}: a "
            "hybrid MBR"
        )
    if not used:
        return _mbr("the MBR (signature 55 AA) defines no partition in its four entries")
    return None


def _mbr(detail: str) -> Problem:
    return "mbr_invalid", f"{detail} (rule mbr, field: partition table)"


def virtual_size_problem(size: int, limit: int) -> Problem | None:
    """A virtual size must be positive and at most ``max_virtual_size``."""
    if size <= 0:
        return "virtual_size_limit", "the image declares no virtual size (rule virtual_size)"
    if size > limit:
        return (
            "virtual_size_limit",
            f"virtual size {size} exceeds max_virtual_size={limit}: upload a smaller disk "
            "(rule virtual_size)",
        )
    return None
