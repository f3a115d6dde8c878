"""The guest layout of a plain qcow2, read while the file is still arriving.

A qcow2 written by ``qemu-img convert`` or by a guest lays its tables out before the data they
point to, so a reader that follows the upload can tell, long before the last byte arrives,
where each guest range lies in the file. :func:`guest_runs` walks the header, the L1 table and
each L2 table through a ``read_at`` callback that blocks until the bytes it asks for are staged,
and yields the guest's runs (data at a file offset, or zeros) in guest order.

It reads hostile bytes, so it is deliberately narrow: only a qcow2 with no backing file, no
encryption, no external data file, no compressed cluster, no extended L2 entries and nothing in
a reserved bit is followed; anything else raises :class:`NotStreamable` and the image is
converted the ordinary way once it is staged. Its answer is never trusted on its own either:
the conversion stage compares it with ``qemu-img map`` of the complete, inspected file (see
:func:`imageport.pipeline.data.mapped.layout_digest`) and throws the early output away unless
the two agree range for range.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from imageport.errors import NotStreamable
from imageport.pipeline.data.mapped import Run

MAGIC = b"QFI\xfb"
V2_HEADER = 72  # bytes of a version 2 header; version 3 adds fields up to header_length
V3_HEADER = 104
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21  # the range qemu accepts
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55: a table's or a cluster's host offset
L1_RESERVED = 0x7F00_0000_0000_01FF  # L1 bits that must be zero
L2_COMPRESSED = 1 << 62
L2_RESERVED = 0x3F00_0000_0000_01FE  # standard L2 bits 1-8 and 56-61 must be zero
L2_ZERO = 1  # version 3: the cluster reads as zeros
DIRTY = 1  # the only incompatible feature followed: refcounts may be stale, the map is not
MAX_L1_BYTES = 32 * 1024**2  # an L1 table larger than this is not followed


ReadAt = Callable[[int, int], bytes]


def guest_runs(read_at: ReadAt, max_virtual: int) -> Iterator[Run]:
    """Yield the guest's runs, in order, as the tables they come from arrive.

    Args:
        read_at: ``read_at(offset, length)`` returns exactly ``length`` bytes of the file at
            ``offset``, waiting until they are there; it raises when they never will be.
        max_virtual: the largest virtual size followed (the pipeline's cap).

    Raises:
        NotStreamable: the header or a table uses something this reader does not follow.
    """
    version, cluster_bits, size, l1_size, l1_offset = _header(read_at)
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS or not 0 < size <= max_virtual:
        raise NotStreamable("cluster size or virtual size out of range")
    cluster = 1 << cluster_bits
    per_l2 = cluster // 8
    span = cluster * per_l2  # guest bytes one L1 entry covers
    needed = -(-size // span)
    if l1_size < needed or needed * 8 > MAX_L1_BYTES or l1_offset % cluster:
        raise NotStreamable("an L1 table that does not cover the disk")
    l1 = struct.unpack(f">{needed}Q", read_at(l1_offset, needed * 8))
    for index, entry in enumerate(l1):
        start = index * span
        length = min(span, size - start)
        if entry & L1_RESERVED:
            raise NotStreamable("reserved bits set in an L1 entry")
        table = entry & OFFSET_MASK
        if not table:
            yield Run(start, length, None)  # no L2 table: unallocated, reads as zeros
            continue
        if table % cluster:
            raise NotStreamable("a misaligned L2 table")
        yield from _l2_runs(read_at, table, start, length, cluster, version)


def _header(read_at: ReadAt) -> tuple[int, int, int, int, int]:
    """Version, cluster bits, virtual size, L1 entries and L1 offset of a followed header."""
    head = read_at(0, V2_HEADER)
    if head[:4] != MAGIC:
        raise NotStreamable("not a qcow2 file")
    (version, backing, _, cluster_bits, size, crypt, l1_size, l1_offset) = struct.unpack(
        ">IQIIQIIQ", head[4:48]
    )
    if version not in (2, 3) or backing or crypt:
        raise NotStreamable("a backing file, encryption or an unknown version")
    if version == 3:
        incompatible, _, _, _, header_length = struct.unpack(
            ">QQQII", read_at(0, V3_HEADER)[72:V3_HEADER]
        )
        # External data file, compression type, extended L2, corrupt: not followed.
        if incompatible & ~DIRTY or header_length < V3_HEADER:
            raise NotStreamable("incompatible features")
    return version, cluster_bits, size, l1_size, l1_offset


def _l2_runs(
    read_at: ReadAt, table: int, start: int, length: int, cluster: int, version: int
) -> Iterator[Run]:
    count = -(-length // cluster)
    entries = struct.unpack(f">{count}Q", read_at(table, count * 8))
    for i, entry in enumerate(entries):
        if entry & (L2_COMPRESSED | L2_RESERVED) or (version == 2 and entry & L2_ZERO):
            raise NotStreamable("a compressed cluster or reserved bits in an L2 entry")
        guest = start + i * cluster
        piece = min(cluster, start + length - guest)
        offset = entry & OFFSET_MASK
        if entry & L2_ZERO or not offset:
            yield Run(guest, piece, None)  # a zero cluster, or unallocated
        elif offset % cluster:
            raise NotStreamable("a misaligned data cluster")
        else:
            yield Run(guest, piece, offset)
