"""Header checks oslo.utils' format inspector does not make (SECURITY.md §2.3, §4 R4).

Each check reads bytes the stream inspector already captured (the first 512 bytes, or what an
oslo inspector parsed) and returns ``(reason_code, message)`` for the first problem found, or
None. Messages say what is wrong and what to upload instead.
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

_VMDK_EXTENT_ACCESS = ("rw", "rdonly", "noaccess")


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
        return "unsupported_version", f"qcow2 version {version} is not supported (only 2 and 3)"
    if crypt_method != 0:
        return "encrypted", "the qcow2 image is encrypted: upload it decrypted"
    if backing != 0:
        return "backing_file", "the qcow2 image names a backing file: upload a flattened image"
    if version == 2:
        return None  # version 2 headers end before the feature fields
    (incompatible,) = struct.unpack_from(">Q", header, 72)
    if incompatible & _QCOW2_DATA_FILE:
        return "data_file", "the qcow2 image uses an external data file: upload a plain image"
    if incompatible & _QCOW2_CORRUPT:
        return "corrupt", "the qcow2 image is marked corrupt: repair it (qemu-img check -r all)"
    unknown = incompatible & ~QCOW2_ALLOWED_INCOMPATIBLE
    if unknown:
        return (
            "unknown_features",
            f"the qcow2 image uses incompatible features {unknown:#x} that are not allowed: "
            "convert it with qemu-img convert -O qcow2 -o compat=1.1 first",
        )
    return None


def vmdk_problem(
    head: bytes | bytearray, create_type: str | None, text: str, allowed_types: tuple[str, ...]
) -> Problem | None:
    """A binary sparse header, an allowed createType and exactly one SPARSE extent, no path.

    Args:
        head: the first bytes of the image.
        create_type: the createType oslo parsed from the descriptor (lower-cased).
        text: the descriptor text oslo kept (lower-cased).
        allowed_types: ``settings.allowed_vmdk_create_types``.
    """
    if not head.startswith(b"KDMV"):
        return (
            "vmdk_subformat",
            "a VMDK descriptor file is not accepted (it can point at other files): upload a "
            "single-file monolithicSparse or streamOptimized VMDK",
        )
    if create_type not in {t.lower() for t in allowed_types}:
        return (
            "vmdk_subformat",
            f"VMDK createType {create_type!r} is not allowed; allowed: {', '.join(allowed_types)}",
        )
    extents = [
        line.split()
        for line in (raw.strip() for raw in text.splitlines())
        if line.split(" ", 1)[0] in _VMDK_EXTENT_ACCESS
    ]
    # The one extent of a single-file sparse VMDK is the file itself: type SPARSE, a bare name.
    if len(extents) != 1 or len(extents[0]) != 4 or extents[0][2] != "sparse":
        return "vmdk_extent", "the VMDK descriptor must list exactly one SPARSE extent"
    name = extents[0][3]
    if "/" in name or "\\" in name or ":" in name:
        return "vmdk_extent", f"the VMDK extent {name} names another file"
    return None


def virtual_size_problem(size: int, limit: int) -> Problem | None:
    """A virtual size must be positive and at most ``max_virtual_size``."""
    if size <= 0:
        return "virtual_size_limit", "the image declares no virtual size"
    if size > limit:
        return (
            "virtual_size_limit",
            f"virtual size {size} exceeds max_virtual_size={limit}: upload a smaller disk",
        )
    return None
