"""Raw disks with partition tables, and ISO 9660 images, as installers and builders write them.

Everything is written in Python (UEFI 2.x GPT, MBR, ECMA-119), so the matrix runs where no
partitioning or ISO tool is installed; :func:`sgdisk_disk` and :func:`xorriso_iso` add the
real tools' output where they are (tests skip those cases otherwise).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

SECTOR = 512
ISO_SECTOR = 2048
_LINUX_FS = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
_EFI_SYSTEM = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")


def mbr_entry(boot: int, kind: int, start: int, sectors: int, chs: bytes = b"\0\2\0") -> bytes:
    """One 16-byte MBR partition entry (end CHS 0xFEFFFF: "beyond CHS", as tools write)."""
    return struct.pack("<B3sB3sII", boot, chs, kind, b"\xfe\xff\xff", start, sectors)


def write_mbr(path: Path, entries: list[bytes]) -> None:
    """Write the partition table and 55 AA of sector 0 (boot code bytes left as they are)."""
    with path.open("r+b") as f:
        f.seek(446)
        f.write(b"".join(entries).ljust(64, b"\0") + b"\x55\xaa")


def mbr_disk(workdir: Path, src: Path, name: str, entries: list[bytes]) -> Path:
    """The payload with an MBR partition table, as fdisk/sfdisk or Windows write one."""
    path = workdir / name
    shutil.copyfile(src, path)
    write_mbr(path, entries)
    return path


def gpt_disk(workdir: Path, src: Path, name: str, extra: list[bytes] | None = None) -> Path:
    """The payload with a protective MBR, primary and backup GPT (CRC32s right), 2 partitions.

    ``extra`` MBR entries after the protective one make a hybrid MBR (Boot Camp, gdisk -h).
    """
    path = workdir / name
    shutil.copyfile(src, path)
    last = path.stat().st_size // SECTOR - 1
    table = bytearray(128 * 128)
    parts = ((_EFI_SYSTEM, 2048, 4095, "EFI System"), (_LINUX_FS, 4096, last - 34, "root"))
    for i, (kind, first, end, label) in enumerate(parts):
        entry = kind.bytes_le + uuid.UUID(int=i + 1).bytes_le + struct.pack("<QQQ", first, end, 0)
        table[128 * i : 128 * (i + 1)] = entry + label.encode("utf-16-le").ljust(72, b"\0")

    def header(mine: int, other: int, entries_at: int) -> bytes:
        fields = struct.pack(
            "<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, mine, other, 34, last - 33,
            uuid.UUID(int=0xC0FFEE).bytes_le, entries_at, 128, 128, zlib.crc32(table),
        )  # fmt: skip
        crc = zlib.crc32(fields)
        return (fields[:16] + struct.pack("<I", crc) + fields[20:]).ljust(SECTOR, b"\0")

    with path.open("r+b") as f:
        f.seek(SECTOR)
        f.write(header(1, last, 2) + table)
        f.seek((last - 32) * SECTOR)
        f.write(table + header(last, 1, last - 32))
    protective = mbr_entry(0x00, 0xEE, 1, min(last, 0xFFFFFFFF))
    write_mbr(path, [protective, *(extra or [])])
    return path


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _record(extent: int, size: int, flags: int, ident: bytes) -> bytes:
    length = 33 + len(ident) + (len(ident) + 1) % 2
    fields = _both32(extent) + _both32(size) + bytes([124, 1, 1, 0, 0, 0, 0, flags, 0, 0])
    return (bytes([length, 0]) + fields + _both16(1) + bytes([len(ident)]) + ident).ljust(
        length, b"\0"
    )


def iso9660(workdir: Path, name: str, sectors: int = 512) -> Path:
    """An ECMA-119 image: system area, PVD at 32 KiB, terminator, path tables, one file."""
    image = bytearray(sectors * ISO_SECTOR)

    def put(sector: int, data: bytes) -> None:
        image[sector * ISO_SECTOR : sector * ISO_SECTOR + len(data)] = data

    text = b"imageport producer matrix\n"
    root = _record(20, ISO_SECTOR, 2, b"\0") + _record(20, ISO_SECTOR, 2, b"\1")
    put(20, root + _record(21, len(text), 0, b"README.TXT;1"))
    put(21, text)
    put(18, struct.pack("<BBIH", 1, 0, 20, 1))
    put(19, struct.pack(">BBIH", 1, 0, 20, 1))
    pvd = bytearray(ISO_SECTOR)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[8:72] = b"LINUX".ljust(32) + b"PRODUCERS".ljust(32)
    pvd[80:88] = _both32(sectors)
    pvd[120:136] = _both16(1) + _both16(1) + _both16(ISO_SECTOR) + _both32(10)
    pvd[140:144] = struct.pack("<I", 18)
    pvd[148:152] = struct.pack(">I", 19)
    pvd[156:190] = _record(20, ISO_SECTOR, 2, b"\0")
    pvd[190:813] = b" " * 623
    pvd[813:881] = (b"2024010100000000\0" * 2) + (b"0" * 16 + b"\0") * 2
    pvd[881] = 1
    put(16, pvd)
    put(17, b"\xffCD001\x01")
    path = workdir / name
    path.write_bytes(image)
    return path


def hybrid_iso(workdir: Path, name: str, entries: list[bytes]) -> Path:
    """An ISO whose system area starts with an MBR, as isohybrid and xorriso write it."""
    path = iso9660(workdir, name)
    write_mbr(path, entries)
    return path


def sgdisk_disk(workdir: Path, src: Path, name: str, *hybrid: str) -> Path:
    """A GPT disk written by sgdisk (gdisk) over the payload; ``hybrid``: e.g. ``-h 2``."""
    path = workdir / name
    shutil.copyfile(src, path)
    subprocess.run(
        ["sgdisk", "-o", "-n", "1:2048:+1M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300",
         *hybrid, str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def xorriso_iso(workdir: Path, name: str, *options: str) -> Path:
    """An ISO 9660 image written by xorriso's mkisofs mode (what distributions use)."""
    tree = workdir / "iso-tree"
    tree.mkdir(exist_ok=True)
    (tree / "README.TXT").write_text("imageport producer matrix\n")
    (workdir / "efi.img").write_bytes(bytes(512 * 1024))
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-o", str(workdir / name), "-V", "PRODUCERS", "-J", "-R",
         *options, str(tree)],
        check=True, capture_output=True, cwd=workdir,
    )  # fmt: skip
    return workdir / name


def has_tool(name: str) -> bool:
    """Whether an optional producer tool (xorriso, sgdisk) is installed."""
    return shutil.which(name) is not None
