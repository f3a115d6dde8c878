"""The qcow2 layout read while the file arrives: qemu-img map's answer, or no answer at all.

Every qcow2 qemu-img can make in the layouts that matter is read here through a ``read_at`` that
serves the file's bytes, and the coalesced runs must have the digest of ``qemu-img map``'s plan
(the check the conversion stage makes before it adopts an early output). Whatever the reader does
not follow must raise NotStreamable, never yield a wrong layout: backing files, compression,
extended L2 entries, external data files, reserved bits, tables past the end of the file.
"""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from imageport.errors import NotStreamable
from imageport.pipeline.data import mapped, qcow2_stream
from imageport.pipeline.data.mapped import Run
from images import MIB, qemu_info, qemu_io_qcow2


def _reader(data: bytes, asked: list[int] | None = None):
    def read_at(offset: int, length: int) -> bytes:
        if asked is not None:
            asked.append(offset + length)
        if offset + length > len(data):
            raise NotStreamable("past the end")
        return data[offset : offset + length]

    return read_at


def _qemu_digest(path) -> str | None:
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    virtual = qemu_info(path, "qcow2")["virtual-size"]
    runs = mapped.plan(json.loads(out), virtual, path.stat().st_size)
    return None if runs is None else mapped.layout_digest(runs)


LAYOUTS = {
    "data and holes": (64 * MIB, ["write -P 0x55 0 3M", "write -P 0xaa 40M 5M"], ()),
    "512-byte clusters": (
        8 * MIB,
        ["write -P 1 0 100k", "write -P 2 3M 1537k"],
        ("cluster_size=512",),
    ),
    "2 MiB clusters": (32 * MIB, ["write -P 3 1M 3M", "write -P 4 20M 64k"], ("cluster_size=2M",)),
    "partial last cluster": (10 * MIB + 512, ["write -P 8 0 64k", "write -P 9 10M 512"], ()),
    "zero clusters": (16 * MIB, ["write -P 1 0 4M", "write -z 1M 1M", "write -P 0 6M 2M"], ()),
    "host order reversed": (16 * MIB, [f"write -P {i} {i}M 512k" for i in range(15, 0, -1)], ()),
    "compat 0.10": (8 * MIB, ["write -P 4 1M 2M"], ("compat=0.10",)),
    "more than one L2 table": (1200 * MIB, ["write -P 5 0 1M", "write -P 6 1100M 1M"], ()),
    "empty": (8 * MIB, [], ()),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_layout_is_qemu_img_maps(name, tmp_path):
    size, writes, options = LAYOUTS[name]
    path = qemu_io_qcow2(tmp_path / "disk.qcow2", size, writes, options)

    runs = list(qcow2_stream.guest_runs(_reader(path.read_bytes()), 1 << 40))

    assert sum(r.length for r in runs) == size
    assert mapped.layout_digest(runs) == _qemu_digest(path)


def test_data_is_known_before_the_file_ends(tmp_path):
    # Written in guest order (as qemu-img convert writes): a reader following the upload can
    # start on the first data range long before the last byte arrives.
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as handle:
        handle.truncate(64 * MIB)
        for at in (0, 20 * MIB, 40 * MIB):
            handle.seek(at)
            handle.write(bytes([7]) * (4 * MIB))
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(path)], check=True)
    asked: list[int] = []
    reader = qcow2_stream.guest_runs(_reader(path.read_bytes(), asked), 1 << 40)

    first_data = next(r for r in reader if r.offset is not None)

    assert max(asked) < path.stat().st_size // 4
    assert first_data.offset + first_data.length < path.stat().st_size // 2


@pytest.mark.parametrize(
    ("options", "make"),
    [
        (("extended_l2=on",), None),
        ((), "compressed"),
        ((), "backing"),
        ((), "data_file"),
    ],
)
def test_layouts_it_does_not_follow_are_refused(options, make, tmp_path):
    path = tmp_path / "disk.qcow2"
    if make == "compressed":
        plain = qemu_io_qcow2(tmp_path / "plain.qcow2", 8 * MIB, ["write -P 3 0 1M"])
        subprocess.run(
            ["qemu-img", "convert", "-c", "-O", "qcow2", str(plain), str(path)], check=True
        )
    elif make == "backing":
        base = qemu_io_qcow2(tmp_path / "base.qcow2", 8 * MIB, ["write -P 3 0 1M"])
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
            check=True,
        )
    elif make == "data_file":
        options = (f"data_file={tmp_path / 'data.raw'}",)
        qemu_io_qcow2(path, 8 * MIB, (), options)
    else:
        qemu_io_qcow2(path, 8 * MIB, ["write -P 3 0 1M"], options)

    with pytest.raises(NotStreamable):
        list(qcow2_stream.guest_runs(_reader(path.read_bytes()), 1 << 40))


def _patched(path, offset, fmt, value) -> bytes:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def _first_l2_entry(data: bytes) -> int:
    """Where the first L2 table's first entry is (the disk's first cluster)."""
    l1_offset = struct.unpack_from(">Q", data, 40)[0]
    return struct.unpack_from(">Q", data, l1_offset)[0] & qcow2_stream.OFFSET_MASK


@pytest.mark.parametrize(
    "damage",
    [
        "l1 past the end",
        "l1 too short",
        "reserved bit in l2",
        "misaligned data cluster",
        "huge virtual size",
        "tiny clusters",
        "encrypted",
        "not qcow2",
    ],
)
def test_hostile_headers_and_tables_are_refused(damage, tmp_path):
    path = qemu_io_qcow2(tmp_path / "disk.qcow2", 8 * MIB, ["write -P 3 0 1M"])
    data = path.read_bytes()
    table = _first_l2_entry(data)
    patches = {
        "l1 past the end": (40, ">Q", 1 << 40),
        "l1 too short": (36, ">I", 0),
        "reserved bit in l2": (table, ">Q", struct.unpack_from(">Q", data, table)[0] | 2),
        "misaligned data cluster": (table, ">Q", struct.unpack_from(">Q", data, table)[0] + 512),
        "huge virtual size": (24, ">Q", 1 << 62),
        "tiny clusters": (20, ">I", 8),
        "encrypted": (32, ">I", 1),
        "not qcow2": (0, ">I", 0x514649FC),
    }
    offset, fmt, value = patches[damage]
    data = _patched(path, offset, fmt, value)

    with pytest.raises(NotStreamable):
        list(qcow2_stream.guest_runs(_reader(data), 1 << 40))


def test_coalesce_merges_what_continues_and_caps_data():
    runs = [Run(0, 10, None), Run(10, 5, None), Run(15, 4, 100), Run(19, 4, 104), Run(23, 4, 300)]

    assert list(mapped.coalesce(runs)) == [
        Run(0, 15, None),
        Run(15, 8, 100),
        Run(23, 4, 300),
    ]
    assert list(mapped.coalesce(runs, max_data=6))[1:3] == [Run(15, 4, 100), Run(19, 4, 104)]
    # Split or merged, one layout has one digest.
    assert mapped.layout_digest(runs) == mapped.layout_digest(mapped.coalesce(runs))
