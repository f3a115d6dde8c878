"""The VMDK rules (:mod:`imageport.pipeline.safety.vmdk`) and the other named header rules.

The VMware stream layout is written in Python by :mod:`producers` (no qemu-img needed): the
header says GD_AT_END and the footer at the end carries the real grain directory offset. Every
refusal must name its rule and the field that broke it.
"""

from __future__ import annotations

import struct

import pytest

import producers
from imageport.config import Settings
from imageport.pipeline.safety import headers, vhd, vmdk
from imageport.pipeline.safety.inspector import StreamInspector, Verdict
from images import MIB, make_raw

ALLOWED = ("monolithicSparse", "streamOptimized")
SETTINGS = Settings()


def _descriptor(extent: str, *, create_type: str = "streamOptimized", extra: str = "") -> str:
    return (
        f'# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=fffffffe\n'
        f'parentCID=ffffffff\ncreateType="{create_type}"\n{extra}\n# Extent description\n'
        f'{extent}\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "14"\n'
    )


def _inspect(data: bytes, chunk: int, declared: str | None = "vmdk") -> Verdict:
    inspector = StreamInspector(declared, SETTINGS)
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        early = inspector.feed(view[start : start + chunk])
        if early is not None:
            return early
    return inspector.verdict()


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> bytes:
    """A 2 MiB disk in VMware's stream layout: GD_AT_END, footer, EOS marker."""
    root = tmp_path_factory.mktemp("stream")
    raw = make_raw(root / "disk.raw", virtual=2 * MIB, data=300 * 1024, seed=3)
    return producers.vmware_stream_optimized(root, raw, "exported.vmdk").read_bytes()


def _with_footer(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, len(out) - 1024 + offset, value)
    return bytes(out)


@pytest.mark.parametrize("chunk", [509, 4096, 65536, 8 * MIB])
def test_a_vmware_stream_footer_that_repeats_the_header_is_accepted(stream, chunk):
    assert struct.unpack_from("<Q", stream, 56)[0] == vmdk.GD_AT_END
    verdict = _inspect(stream, chunk)
    assert (verdict.accepted, verdict.detected_format, verdict.virtual_size) == (
        True,
        "vmdk",
        2 * MIB,
    ), verdict.message
    # Undeclared, the content alone must still be vmdk (it was "raw" before #15).
    assert _inspect(stream, chunk, declared=None).detected_format == "vmdk"


@pytest.mark.parametrize(
    ("field", "offset", "fmt", "value"),
    [
        ("version", 4, "<I", 1),
        ("flags", 8, "<I", 0x10001),
        ("capacity", 12, "<Q", 8192),
        ("grainSize", 20, "<Q", 256),
        ("descriptorSize", 36, "<Q", 7),
        ("overHead", 64, "<Q", 99),
        ("compressAlgorithm", 77, "<H", 0),
    ],
)
def test_a_footer_field_that_disagrees_is_refused_by_name(stream, field, offset, fmt, value):
    verdict = _inspect(_with_footer(stream, offset, fmt, value), 65536)
    assert verdict.reason_code == "vmdk_structure"
    assert f"disagrees with the header: {field} " in verdict.message
    assert verdict.message.endswith("(rule vmdk_footer)")


@pytest.mark.parametrize("gd", [0, 1, 1 << 40, vmdk.GD_AT_END])
def test_a_footer_grain_directory_outside_the_data_is_refused(stream, gd):
    verdict = _inspect(_with_footer(stream, 56, "<Q", gd), 65536)
    assert verdict.reason_code == "vmdk_structure"
    assert "gdOffset" in verdict.message
    assert "(rule vmdk_footer)" in verdict.message


def test_a_ragged_length_is_refused_because_qemu_would_read_another_footer(stream):
    verdict = _inspect(stream + b"\0" * 100, 65536)
    assert (verdict.reason_code, "file length" in verdict.message) == ("vmdk_structure", True)


def test_broken_markers_are_refused(stream):
    bad_marker = _with_footer(stream, -512 + 12, "<I", 2)
    assert "footer marker" in _inspect(bad_marker, 65536).message
    bad_eos = bytearray(stream)
    bad_eos[-1] = 1
    assert "end-of-stream" in _inspect(bytes(bad_eos), 65536).message


@pytest.mark.parametrize(
    "extent",
    [
        'RW 4096 SPARSE "My Disk (1).vmdk"',
        'RDONLY 4096 SPARSE "generated-stream.vmdk"',
        'rw 4096 sparse "a=b; c.vmdk"',
        'RW 4096 SPARSE "Disque système.vmdk"',
        'RW 4096 SPARSE "disk:1.vmdk"',
        'NOACCESS 4096 SPARSE ""',
    ],
)
def test_one_sparse_extent_is_the_file_itself_whatever_its_name(extent):
    assert vmdk.descriptor_problem(_descriptor(extent), ALLOWED) is None


@pytest.mark.parametrize(
    ("extent", "code", "words"),
    [
        ('RW 4096 FLAT "/etc/passwd" 0', "vmdk_extent", "type FLAT"),
        ('RW 4096 VMFS "disk-flat.vmdk"', "vmdk_extent", "type VMFS"),
        ("RW 4096 ZERO", "vmdk_extent", "type ZERO"),
        ('RW 4096 SPARSE "vms/disk.vmdk"', "vmdk_extent", "file name"),
        ('RW 4096 SPARSE "C:\\vms\\disk.vmdk"', "vmdk_extent", "file name"),
        ("RW 4096 SPARSE disk.vmdk", "vmdk_extent", "does not read"),
        ('RW 4096 SPARSE "a.vmdk"\nRW 4096 SPARSE "b.vmdk"', "vmdk_extent", "2 extents"),
        ("", "vmdk_extent", "0 extents"),
        ('RW 4096 SPARSE "a.vmdk"\nwhat is this', "vmdk_structure", "line"),
    ],
)
def test_anything_but_one_sparse_extent_is_refused(extent, code, words):
    problem = vmdk.descriptor_problem(_descriptor(extent), ALLOWED)
    assert problem is not None
    assert (problem[0], words in problem[1], "(rule " in problem[1]) == (code, True, True)


@pytest.mark.parametrize(
    ("create_type", "extra"),
    [
        ("twoGbMaxExtentSparse", ""),
        ("monolithicFlat", ""),
        ("streamOptimized", 'createType="vmfs"'),
    ],
)
def test_create_type_must_be_one_allowed_single_file_type(create_type, extra):
    text = _descriptor('RW 4096 SPARSE "a.vmdk"', create_type=create_type, extra=extra)
    code, message = vmdk.descriptor_problem(text, ALLOWED) or ("", "")
    assert (code, "createType" in message, "(rule vmdk_create_type)" in message) == (
        "vmdk_subformat",
        True,
        True,
    )


def test_a_parent_named_anywhere_is_a_backing_file():
    text = _descriptor('RW 4096 SPARSE "a.vmdk"', extra='parentFileNameHint="../base.vmdk"')
    assert vmdk.descriptor_problem(text, ALLOWED) == (
        "backing_file",
        "the VMDK descriptor field parentFileNameHint names '../base.vmdk': this is a snapshot "
        "delta whose parent holds the rest of the disk; consolidate the snapshots and upload "
        "the whole disk (rule vmdk_parent)",
    )
    hidden = _descriptor('RW 4096 SPARSE "a.vmdk"', extra="# parentFileNameHint")
    assert vmdk.descriptor_problem(hidden, ALLOWED)[0] == "backing_file"  # type: ignore[index]


def test_descriptors_decode_as_utf8_then_latin1():
    assert vmdk.decode_descriptor("système".encode() + b"\0junk") == "système"
    assert vmdk.decode_descriptor("système".encode("latin-1")) == "système"


def _header(version: int = 3, desc_offset: int = 1) -> bytes:
    return struct.pack("<4sIIQQQQ", b"KDMV", version, 3, 4096, 128, desc_offset, 20).ljust(512)


@pytest.mark.parametrize(
    ("header", "code", "words"),
    [
        (_header(version=4), "vmdk_structure", "field version is 4"),
        (_header(desc_offset=0), "vmdk_subformat", "descriptorOffset is 0"),
        (_header(desc_offset=2), "vmdk_structure", "descriptorOffset is sector 2"),
    ],
)
def test_header_problems_name_the_field(header, code, words):
    problem = vmdk.header_problem(header)
    assert problem is not None
    assert (problem[0], words in problem[1], "(rule " in problem[1]) == (code, True, True)


def _mbr(*entries: tuple[int, bytes, int, int]) -> bytes:
    table = b"".join(
        struct.pack("<B3sB3sII", boot, chs, kind, b"\xfe\xff\xff", lba, 100)
        for boot, chs, kind, lba in entries
    )
    return bytes(446) + table.ljust(64, b"\0") + b"\x55\xaa"


@pytest.mark.parametrize(
    ("sector", "words"),
    [
        (_mbr((0x7F, b"\0\2\0", 0x83, 1)), "entry 0 has boot flag 0x7f"),
        (_mbr((0, b"\0\1\0", 0xEE, 1)), "starts at CHS 00 01 00"),
        (_mbr((0, b"\0\2\0", 0xEE, 2)), "starts at LBA 2"),
        (_mbr((0, b"\0\2\0", 0xEE, 1), (0x80, b"\0\2\0", 0x0C, 2048)), "entries 0 (type 0xee), 1"),
        (_mbr(), "defines no partition"),
    ],
)
def test_mbr_rules_name_the_entry(sector, words):
    problem = headers.mbr_problem(sector)
    assert problem is not None
    assert (problem[0], words in problem[1]) == ("mbr_invalid", True), problem
    assert problem[1].endswith("(rule mbr, field: partition table)")


def test_a_plain_protective_mbr_and_a_classic_mbr_pass():
    assert headers.mbr_problem(_mbr((0, b"\0\2\0", 0xEE, 1))) is None
    assert headers.mbr_problem(_mbr((0x80, b"\x20\x21\0", 0x07, 2048))) is None


@pytest.mark.parametrize(
    ("image_type", "code"),
    [(1, None), (2, None), (3, "backing_file"), (4, "backing_file"), (9, "unknown_features")],
)
def test_vdi_image_types(image_type, code):
    header = bytearray(512)
    struct.pack_into("<I", header, 0x4C, image_type)
    problem = headers.vdi_problem(header)
    assert (problem[0] if problem else None) == code
    assert problem is None or "(rule vdi_image_type)" in problem[1]


def _vhd_footer(creator: bytes, current: int, geometry: tuple[int, int, int]) -> bytes:
    footer = bytearray(512)
    footer[:8] = vhd.COOKIE
    footer[28:32] = creator
    struct.pack_into(">QQHBBI", footer, 40, current // 2, current, *geometry, vhd.DISK_FIXED)
    struct.pack_into(">I", footer, 64, vhd.checksum(footer))
    return bytes(footer)


@pytest.mark.parametrize(
    ("creator", "geometry", "size"),
    [
        (b"win ", (120, 4, 17), 4 * MIB),  # Hyper-V: current_size
        (b"d2v ", (120, 4, 17), 4 * MIB),
        (b"qem2", (65535, 16, 255), 4 * MIB),
        (b"vbox", (120, 4, 17), 120 * 4 * 17 * 512),  # qemu sizes it by geometry
        (b"vpc ", (121, 4, 17), 121 * 4 * 17 * 512),
        (b"vpc ", (65535, 16, 255), 4 * MIB),  # maximum geometry means current_size
    ],
)
def test_vhd_virtual_size_follows_qemus_rule(creator, geometry, size):
    footer = vhd.parse_footer(_vhd_footer(creator, 4 * MIB, geometry))
    assert footer is not None
    assert footer.virtual_size == size
