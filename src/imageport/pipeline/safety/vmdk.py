"""VMDK rules: the hosted sparse header, its embedded descriptor and the stream footer.

Only single-file VMDKs are accepted: a ``KDMV`` sparse header whose embedded descriptor has an
allowed ``createType`` (monolithicSparse, streamOptimized) and exactly one ``SPARSE`` extent.
qemu opens such a file as one sparse extent, the file itself, whatever name the extent line
gives: tools write the name the disk was created under (``"My Disk (1).vmdk"``, quoted, with
spaces) and every staged upload is renamed, so the name is not compared with anything. What
would name *another* file is refused: more extents, FLAT/VMFS/ZERO extents, a directory in the
name, a parent disk (``parentFileNameHint``) and multi-file create types.

A streamOptimized file written by VMware tools (ovftool, ESXi export, OVA) says "grain
directory at the end" (``gdOffset`` = GD_AT_END) and ends with a footer marker, a copy of the
header carrying the real ``gdOffset``, and an end-of-stream marker. qemu then uses the footer's
copy instead of the header, so the copy must agree with the header the inspector vetted.

Every problem is ``(reason_code, message)``; the message names the rule and the field.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, fields

Problem = tuple[str, str]  # (reason code, message)

SECTOR = 512
GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF
#: Footer marker, footer (header copy) and end-of-stream marker: the last three sectors.
FOOTER_TAIL = 3 * SECTOR
_MARKER_EOS = 0
_MARKER_FOOTER = 3
_MAGIC = b"KDMV"
_VERSIONS = (1, 2, 3)
# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT,
# rgdOffset, gdOffset, overHead, uncleanShutdown, 4 newline-detection bytes, compressAlgorithm
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
_MARKER = struct.Struct("<QII")  # value (sectors or LBA), size (0: metadata), type
_ACCESS = ("rw", "rdonly", "noaccess")
# qemu's own reading of an extent line: ACCESS SECTORS TYPE ["FILE" [OFFSET]].
_EXTENT = re.compile(r'(\S+)\s+(\d+)\s+(\S+)(?:\s+"([^"\r\n]{0,511})"(?:\s+(\d+))?)?')


@dataclass(frozen=True)
class SparseHeader:
    """The fields of a hosted sparse extent header (VMDK spec names in the messages)."""

    version: int
    flags: int
    capacity: int  # sectors
    grainSize: int  # noqa: N815 - the spec's names, as operators read them in messages
    descriptorOffset: int  # noqa: N815
    descriptorSize: int  # noqa: N815
    numGTEsPerGT: int  # noqa: N815
    rgdOffset: int  # noqa: N815
    gdOffset: int  # noqa: N815
    overHead: int  # noqa: N815
    compressAlgorithm: int  # noqa: N815

    @property
    def virtual_size(self) -> int:
        """The disk size in bytes."""
        return self.capacity * SECTOR


#: Header fields the footer's copy must repeat (gdOffset is the one it may change).
_FOOTER_FIELDS = tuple(f.name for f in fields(SparseHeader) if f.name != "gdOffset")


def parse_header(data: bytes | bytearray) -> SparseHeader | None:
    """The sparse header at the start of ``data``, or None without the ``KDMV`` magic."""
    if len(data) < _HEADER.size or not data.startswith(_MAGIC):
        return None
    (_, version, flags, capacity, grain, desc_offset, desc_size, gtes, rgd, gd, overhead, _, _,
     compress) = _HEADER.unpack_from(data, 0)  # fmt: skip
    return SparseHeader(
        version=version,
        flags=flags,
        capacity=capacity,
        grainSize=grain,
        descriptorOffset=desc_offset,
        descriptorSize=desc_size,
        numGTEsPerGT=gtes,
        rgdOffset=rgd,
        gdOffset=gd,
        overHead=overhead,
        compressAlgorithm=compress,
    )


def header_problem(head: bytes | bytearray) -> Problem | None:
    """What is wrong with a ``KDMV`` header: version, or no embedded descriptor at sector 1."""
    header = parse_header(head)
    if header is None:
        return "truncated", "the file ends inside its VMDK header (rule vmdk_header)"
    if header.version not in _VERSIONS:
        return (
            "vmdk_structure",
            f"VMDK header field version is {header.version}, not 1, 2 or 3 (rule vmdk_header)",
        )
    if header.descriptorOffset == 0:
        # VMware writes the extents of a split (twoGbMaxExtentSparse) disk, and snapshot
        # deltas of one, without an embedded descriptor: the disk is described elsewhere.
        return (
            "vmdk_subformat",
            "VMDK header field descriptorOffset is 0 (no embedded descriptor): this file is one "
            "extent of a multi-file VMDK (twoGbMaxExtentSparse or a snapshot); convert the "
            "whole disk with qemu-img convert -O vmdk -o subformat=streamOptimized "
            "(rule vmdk_embedded_descriptor)",
        )
    if header.descriptorOffset != 1:
        return (
            "vmdk_structure",
            f"VMDK header field descriptorOffset is sector {header.descriptorOffset}, not 1: "
            "the descriptor the inspector reads is not the one qemu reads "
            "(rule vmdk_descriptor_offset)",
        )
    return None


def decode_descriptor(data: bytes | bytearray) -> str:
    """The embedded descriptor as text: up to the first NUL, UTF-8 or else Latin-1.

    VMware writes ``encoding="UTF-8"`` and the extent name in it ("Disque système.vmdk");
    older versions wrote windows-1252. Keywords are ASCII either way, and the name is never
    used, so no byte sequence needs to be refused for its encoding alone.
    """
    text = bytes(data).split(b"\x00", 1)[0]
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return text.decode("latin-1")


def descriptor_problem(text: str, allowed_types: tuple[str, ...]) -> Problem | None:
    """The embedded descriptor: grammar, createType, no parent, one SPARSE extent in this file.

    Args:
        text: the decoded descriptor (:func:`decode_descriptor`).
        allowed_types: ``settings.allowed_vmdk_create_types``.
    """
    if not text.strip():
        return (
            "vmdk_subformat",
            "the embedded VMDK descriptor is empty (no createType): this file is one extent of "
            "a multi-file VMDK; convert the whole disk with qemu-img convert -O vmdk -o "
            "subformat=streamOptimized (rule vmdk_embedded_descriptor)",
        )
    if "parentfilenamehint" in text.lower():
        # qemu looks for this key anywhere in the text and opens the file it names as the
        # backing disk of a snapshot delta.
        hint = re.search(r'parentFileNameHint\s*=\s*"([^"]*)"', text, re.IGNORECASE)
        named = repr(hint.group(1)[:100]) if hint else "a file"  # file text: keep it short
        return (
            "backing_file",
            f"the VMDK descriptor field parentFileNameHint names {named}: this is a snapshot "
            "delta whose parent holds the rest of the disk; consolidate the snapshots and "
            "upload the whole disk (rule vmdk_parent)",
        )
    extents: list[tuple[int, str]] = []
    for number, line in _lines(text):
        key = line.split("=", 1)[0]
        if "=" in line and " " not in key:  # oslo's grammar, in oslo's order
            continue
        if line.split(" ", 1)[0].lower() in _ACCESS:
            extents.append((number, line))
        else:
            return (
                "vmdk_structure",
                f"VMDK descriptor line {number} is neither a comment, a ddb entry, a "
                f"key=value field nor an extent: {line[:80]!r} (rule vmdk_descriptor)",
            )
    found = create_types(text)
    if len(found) != 1 or found[0].lower() not in {t.lower() for t in allowed_types}:
        shown = ", ".join(f'"{t[:64]}"' for t in found) or "missing"
        return (
            "vmdk_subformat",
            f"VMDK descriptor field createType is {shown}; accepted: "
            f"{', '.join(allowed_types)} (single-file layouts): convert with qemu-img convert "
            "-O vmdk -o subformat=streamOptimized (rule vmdk_create_type)",
        )
    return _extent_problem(extents)


def create_types(text: str) -> list[str]:
    """Every ``createType`` value of a descriptor, as written (quotes removed)."""
    found = []
    for _, line in _lines(text):
        key, equals, value = line.partition("=")
        if equals and " " not in key and key.strip().lower() == "createtype":
            found.append(value.strip().strip('"'))
    return found


def _lines(text: str) -> list[tuple[int, str]]:
    """Numbered descriptor lines that are neither blank, comments nor ``ddb`` entries."""
    stripped = ((n, raw.strip()) for n, raw in enumerate(text.split("\n"), start=1))
    return [(n, s) for n, s in stripped if s and not s.startswith("#") and s[:3].lower() != "ddb"]


def _extent_problem(extents: list[tuple[int, str]]) -> Problem | None:
    if len(extents) != 1:
        return (
            "vmdk_extent",
            f"the VMDK descriptor lists {len(extents)} extents; a single-file VMDK has exactly "
            "one, the file itself (rule vmdk_extent, field: extent lines)",
        )
    number, line = extents[0]
    match = _EXTENT.fullmatch(line)
    if match is None:
        return (
            "vmdk_extent",
            f'VMDK extent line {number} does not read ACCESS SECTORS TYPE "FILE": '
            f"{line[:80]!r} (rule vmdk_extent)",
        )
    kind, name = match.group(3), match.group(4)
    if kind.upper() != "SPARSE":
        return (
            "vmdk_extent",
            f"VMDK extent line {number} has type {kind[:16]}, not SPARSE: the data would come "
            f"from {(name or 'nowhere')[:100]!r}, not from this file (rule vmdk_extent, "
            "field: type)",
        )
    if name is None or "/" in name or "\\" in name:
        # The name itself is never opened (the extent of a sparse file is the file itself),
        # but tools write a bare file name: a directory part only appears in crafted files.
        named = "no file" if name is None else f"{name[:100]!r}, a path, not a file name"
        return (
            "vmdk_extent",
            f"VMDK extent line {number} names {named} (rule vmdk_extent, field: file name)",
        )
    return None


def footer_problem(header: SparseHeader, tail: bytes | bytearray, total: int) -> Problem | None:
    """The stream footer of a file whose header says GD_AT_END (None when it does not).

    Args:
        header: the header at the start of the file.
        tail: the last :data:`FOOTER_TAIL` bytes of the file.
        total: the file length in bytes.
    """
    if header.gdOffset != GD_AT_END:
        return None
    problem = _marker_problem(tail, total)
    if problem is not None:
        return _footer(problem)
    footer = parse_header(tail[SECTOR : 2 * SECTOR])
    if footer is None:
        return _footer("VMDK footer disagrees with the header: magic is not KDMV")
    for name in _FOOTER_FIELDS:
        mine, theirs = getattr(footer, name), getattr(header, name)
        if mine != theirs:
            shown = (f"{mine:#x}", f"{theirs:#x}") if name == "flags" else (mine, theirs)
            return _footer(
                f"VMDK footer disagrees with the header: {name} {shown[0]} (footer) != "
                f"{shown[1]} (header)"
            )
    last = (total - FOOTER_TAIL) // SECTOR  # the footer marker's sector
    if not header.descriptorOffset < footer.gdOffset < last:
        return _footer(
            f"VMDK footer is invalid: gdOffset {footer.gdOffset:#x} points outside the file's "
            f"data (sectors {header.descriptorOffset + 1} to {last - 1})"
        )
    return None


def _marker_problem(tail: bytes | bytearray, total: int) -> str | None:
    """The footer marker and the end-of-stream marker around the footer."""
    if total % SECTOR or total < SECTOR + FOOTER_TAIL or len(tail) != FOOTER_TAIL:
        # qemu reads the footer at (length rounded up to a sector) - 1536: with a ragged
        # length that is not where the inspector looked.
        return (
            f"VMDK footer is missing: the file length {total} is not a whole number of "
            "sectors holding a header and the three footer sectors"
        )
    _, size, kind = _MARKER.unpack_from(tail, 0)
    if size != 0 or kind != _MARKER_FOOTER or any(tail[_MARKER.size : SECTOR]):
        return (
            f"VMDK footer marker is invalid: size {size} and type {kind}, not 0 and 3 "
            f"(MARKER_FOOTER) with zero padding, at byte {total - FOOTER_TAIL}"
        )
    value, size, kind = _MARKER.unpack_from(tail, 2 * SECTOR)
    if value or size or kind != _MARKER_EOS or any(tail[2 * SECTOR + _MARKER.size :]):
        return "VMDK end-of-stream marker is invalid: the last sector is not all zeros"
    return None


def _footer(message: str) -> Problem:
    # qemu replaces the header with the footer's copy: a footer that does not repeat the
    # header means the image qemu opens is not the one the inspector vetted.
    return "vmdk_structure", f"{message} (rule vmdk_footer)"
