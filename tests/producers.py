"""Disk images laid out the way real tools write them (VMware, VirtualBox, Hyper-V, builders).

qemu-img writes most of them; where a tool writes something qemu-img does not (VMware's
stream-optimized footer, a descriptor naming the file it was created as, a VirtualBox banner,
a Hyper-V creator and geometry, a hybrid MBR), the bytes are written or patched here with
``struct``, following the format specifications (VMDK 5.0, VHD 1.0, VDI as in qemu's vdi.c,
UEFI GPT, ISO 9660). Every builder takes the work directory and the raw payload (the disk's
content, :func:`payload`) and returns the image it wrote.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

from images import MIB, make_raw

SIZE = 4 * MIB  # virtual size of every image: big enough for real layouts, quick to convert
SECTOR = 512
GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF


def payload(workdir: Path) -> Path:
    """The raw disk every image holds: 4 MiB, data in three places, holes between them."""
    return make_raw(workdir / "payload.raw", virtual=SIZE, data=768 * 1024, seed=15)


def qemu_img(*args: str | Path) -> None:
    """Run qemu-img, failing the test with its message if it fails."""
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def converted(workdir: Path, src: Path, name: str, fmt: str, *options: str) -> Path:
    """``qemu-img convert -f raw -O FMT [-o ...|-c]`` of the payload."""
    dst = workdir / name
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, src, dst)
    return dst


# VMware


def vmdk_rewrite_descriptor(path: Path, old: bytes, new: bytes) -> Path:
    """Replace text in the embedded descriptor of a sparse VMDK, in place (its size is fixed)."""
    data = bytearray(path.read_bytes())
    desc_sector, desc_sectors = struct.unpack_from("<QQ", data, 28)
    start, length = desc_sector * SECTOR, desc_sectors * SECTOR
    text = bytes(data[start : start + length]).split(b"\0", 1)[0]
    assert old in text, (old, text)
    text = text.replace(old, new)
    assert len(text) < length
    data[start : start + length] = text.ljust(length, b"\0")
    path.write_bytes(data)
    return path


def vmdk_extent_line(path: Path) -> bytes:
    """The extent line qemu-img wrote into a sparse VMDK's descriptor."""
    data = path.read_bytes()
    text = data[SECTOR : 21 * SECTOR].split(b"\0", 1)[0]
    return next(line for line in text.splitlines() if line.startswith(b"RW "))


def monolithic_sparse(workdir: Path, src: Path, name: str, extent_name: str) -> Path:
    """VMware Workstation: monolithicSparse whose extent names the file it was created as."""
    path = converted(workdir, src, name, "vmdk", "-o", "subformat=monolithicSparse")
    line = vmdk_extent_line(path)
    new = b" ".join(line.split(b" ")[:3]) + b' "' + extent_name.encode() + b'"'
    vmdk_rewrite_descriptor(path, line, new)
    return vmdk_rewrite_descriptor(path, b"version=1\n", b'version=1\nencoding="UTF-8"\n')


def _vmdk_header(capacity: int, desc_sectors: int, gd_offset: int, overhead: int) -> bytes:
    # KDMV, version 3, flags: valid newline test (bit 0), compressed grains (16), markers (17).
    header = struct.pack(
        "<4sIIQQQQIQQQB4sH", b"KDMV", 3, 0x30001, capacity, 128, 1, desc_sectors, 512, 0,
        gd_offset, overhead, 0, b"\n \r\n", 1,
    )  # fmt: skip
    return header.ljust(SECTOR, b"\0")


def _marker(value: int, kind: int) -> bytes:
    return struct.pack("<QII", value, 0, kind).ljust(SECTOR, b"\0")


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % SECTOR)


def vmware_stream_optimized(
    workdir: Path, src: Path, name: str, *, footer: bool = True, **footer_fields: int
) -> Path:
    """streamOptimized as ovftool / ESXi export / OVA write it (VMDK 5.0 spec, section 4).

    Header with gdOffset = GD_AT_END, descriptor, deflate-compressed grains each behind a
    grain marker, grain tables behind GT markers, the grain directory behind a GD marker,
    then a footer marker, the footer (the header with the real gdOffset) and an end-of-stream
    marker. Without ``footer`` the header carries the real gdOffset (older tools, VirtualBox).
    ``footer_fields`` overwrite fields of the footer copy, by offset name (tests of the rule).
    """
    raw = src.read_bytes()
    capacity, grain_sectors, per_table = len(raw) // SECTOR, 128, 512
    grains = capacity // grain_sectors
    tables = -(-grains // per_table)
    desc = (
        '# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=fffffffe\nparentCID=ffffffff\n'
        'isNativeSnapshot="no"\ncreateType="streamOptimized"\n\n# Extent description\n'
        f'RDONLY {capacity} SPARSE "{name.removesuffix(".vmdk")}-disk1.vmdk"\n\n'
        '# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\n'
        'ddb.geometry.cylinders = "8"\nddb.geometry.heads = "16"\nddb.geometry.sectors = "63"\n'
        'ddb.longContentID = "8f8d4b3bd1b1cbe0dc2b1a0cfffffffe"\nddb.toolsInstallType = "4"\n'
        'ddb.toolsVersion = "12352"\nddb.virtualHWVersion = "14"\n'
    ).encode()
    desc_sectors = len(_padded(desc)) // SECTOR
    overhead = 1 + desc_sectors
    out = bytearray(_vmdk_header(capacity, desc_sectors, GD_AT_END, overhead) + _padded(desc))
    entries = [0] * (tables * per_table)
    grain_bytes = grain_sectors * SECTOR
    for index in range(grains):
        data = raw[index * grain_bytes : (index + 1) * grain_bytes]
        if data.count(0) == len(data):
            continue  # never written: no grain, a zero table entry
        packed = zlib.compress(data)
        entries[index] = len(out) // SECTOR
        out += _padded(struct.pack("<QI", index * grain_sectors, len(packed)) + packed)
    directory = []
    for table in range(tables):
        out += _marker(4, 1)  # GT marker: 4 sectors of table follow
        directory.append(len(out) // SECTOR)
        out += struct.pack(f"<{per_table}I", *entries[table * per_table : (table + 1) * per_table])
    out += _marker(len(_padded(bytes(4 * tables))) // SECTOR, 2)  # GD marker
    gd_offset = len(out) // SECTOR
    out += _padded(struct.pack(f"<{tables}I", *directory))
    if footer:
        copy = bytearray(_vmdk_header(capacity, desc_sectors, gd_offset, overhead))
        for field, value in footer_fields.items():
            offset, fmt = _HEADER_FIELDS[field]
            struct.pack_into(fmt, copy, offset, value)
        out += _marker(1, 3) + copy
    else:
        struct.pack_into("<Q", out, 56, gd_offset)
    out += _marker(0, 0)  # end of stream
    path = workdir / name
    path.write_bytes(out)
    return path


#: Offsets and struct formats of the sparse header fields a test may change.
_HEADER_FIELDS = {
    "version": (4, "<I"),
    "flags": (8, "<I"),
    "capacity": (12, "<Q"),
    "grainSize": (20, "<Q"),
    "gdOffset": (56, "<Q"),
}


def vmware_split_extent(workdir: Path, name: str) -> Path:
    """One ``-s001.vmdk`` extent of a VMware twoGbMaxExtentSparse disk: no embedded descriptor.

    VMware writes descriptorOffset = descriptorSize = 0 in these (qemu-img writes an empty
    embedded descriptor instead, see :func:`qemu_split_extent`).
    """
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", workdir / name, SIZE)
    extent = workdir / f"{name.removesuffix('.vmdk')}-s001.vmdk"
    data = bytearray(extent.read_bytes())
    struct.pack_into("<QQ", data, 28, 0, 0)
    out = workdir / f"vmware-{extent.name}"
    out.write_bytes(data)
    return out


def qemu_split_extent(workdir: Path, name: str) -> Path:
    """The first extent file of a twoGbMaxExtentSparse disk written by qemu-img."""
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", workdir / name, SIZE)
    return workdir / f"{name.removesuffix('.vmdk')}-s001.vmdk"


def qemu_descriptor(workdir: Path, name: str, subformat: str) -> Path:
    """The text descriptor of a multi-file VMDK (twoGbMaxExtentSparse, monolithicFlat)."""
    qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat}", workdir / name, SIZE)
    return workdir / name


# VirtualBox, Hyper-V, Virtual PC


def virtualbox_vdi(workdir: Path, src: Path, name: str, *options: str, image_type: int = 0) -> Path:
    """A VDI with VirtualBox's banner (the text qemu-img writes names qemu instead)."""
    path = converted(workdir, src, name, "vdi", *options)
    data = bytearray(path.read_bytes())
    data[:64] = b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0")
    if image_type:
        struct.pack_into("<I", data, 0x4C, image_type)  # 4: differencing (a snapshot)
    path.write_bytes(data)
    return path


def _vhd_checksum(footer: bytearray) -> None:
    footer[64:68] = bytes(4)
    struct.pack_into(">I", footer, 64, ~sum(footer) & 0xFFFFFFFF)


def vhd(
    workdir: Path,
    src: Path,
    name: str,
    subformat: str,
    creator: bytes,
    *,
    spec_geometry: bool,
    original_size: int | None = None,
) -> Path:
    """A VHD as ``creator`` writes it; ``spec_geometry``: exact current_size, CHS by the spec.

    Hyper-V ("win "), Disk2vhd ("d2v ") and VirtualBox ("vbox") store the exact size and the
    geometry the VHD specification derives from it; Virtual PC ("vpc ") and Virtual Server
    ("vs  ") chose sizes that are whole geometries (qemu-img without force_size does too).
    """
    force = "on" if spec_geometry else "off"
    path = converted(workdir, src, name, "vpc", "-o", f"subformat={subformat},force_size={force}")
    data = bytearray(path.read_bytes())
    for at in (0, len(data) - SECTOR) if subformat == "dynamic" else (len(data) - SECTOR,):
        footer = bytearray(data[at : at + SECTOR])
        footer[28:32] = creator
        if spec_geometry:
            struct.pack_into(">HBB", footer, 56, *_spec_geometry(SIZE // SECTOR))
        if original_size is not None:  # a disk resized after creation keeps its original size
            struct.pack_into(">Q", footer, 40, original_size)
        _vhd_checksum(footer)
        data[at : at + SECTOR] = footer
    path.write_bytes(data)
    return path


def _spec_geometry(sectors: int) -> tuple[int, int, int]:
    """CHS from a sector count, as the VHD specification (appendix) computes it."""
    per_track = 17
    heads_cylinders = sectors // per_track
    heads = max((heads_cylinders + 1023) // 1024, 4)
    if heads_cylinders >= heads * 1024 or heads > 16:
        per_track, heads = 31, 16
        heads_cylinders = sectors // per_track
    if heads_cylinders >= heads * 1024:
        per_track, heads = 63, 16
        heads_cylinders = sectors // per_track
    return heads_cylinders // heads, heads, per_track


def vhdx_with_parent(workdir: Path, src: Path, name: str) -> Path:
    """A Hyper-V differencing VHDX (.avhdx): File Parameters has HasParent (bit 1) set."""
    path = converted(workdir, src, name, "vhdx", "-o", "subformat=dynamic")
    data = bytearray(path.read_bytes())
    region_count = struct.unpack_from("<I", data, 192 * 1024 + 8)[0]
    for i in range(region_count):
        entry = 192 * 1024 + 16 + 32 * i
        if data[entry : entry + 4] == bytes.fromhex("06a27c8b"):  # metadata region GUID
            metadata = struct.unpack_from("<Q", data, entry + 16)[0]
    count = struct.unpack_from("<H", data, metadata + 10)[0]
    for i in range(count):
        entry = metadata + 32 + 32 * i
        if data[entry : entry + 4] == bytes.fromhex("3767a1ca"):  # File Parameters GUID
            item = metadata + struct.unpack_from("<I", data, entry + 16)[0]
            data[item + 4] |= 0x02
    path.write_bytes(data)
    return path
