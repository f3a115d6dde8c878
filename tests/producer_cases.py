"""The producer matrix's cases: who writes each image, how it is built, and its verdict.

Each :class:`Case` is one tool's way of laying out a disk (:mod:`producers`,
:mod:`producers_disks`), the disk format it is declared as, the verdict imageport must reach
(with the detected format and the virtual size, or the reason code) and why. ``oslo`` is what
oslo.utils' format_inspector alone concludes, used the way Glance uses it; where imageport is
stricter or looser, ``why`` says so (STRICTER / LOOSER) and gives the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import producers as vm
import producers_disks as disks
from images import MIB

SIZE = vm.SIZE
CHS_4M = 4212736  # 4 MiB rounded up to whole CHS geometry, as qemu-img and Virtual PC size it
SPEC_CHS_4M = 120 * 4 * 17 * 512  # the VHD spec's geometry for 4 MiB, rounded down
#: Expected virtual size "the file's own length" (an ISO's size depends on the xorriso version).
FILE_LENGTH = 0
Build = Callable[[Path, Path], Path]  # (work directory, raw payload) -> image


@dataclass(frozen=True)
class Case:
    """One producer's image, how it is built, and the verdict it must get."""

    name: str
    producer: str
    build: Build
    declared: str
    verdict: str  # accept | reject
    detected: str
    expect: int | str  # virtual size (or FILE_LENGTH) when accepted, reason code when refused
    oslo: str  # accept | reject: oslo.utils' inspector alone (declared format, safety checks)
    why: str
    needs: str | None = None  # an optional tool the producer is (xorriso, sgdisk)


def _convert(fmt: str, *options: str) -> Build:
    return lambda d, payload: vm.converted(d, payload, f"disk.{fmt}", fmt, *options)


def _renamed(extent: str) -> Build:
    return lambda d, payload: vm.monolithic_sparse(d, payload, "upload.vmdk", extent)


def _stream(*, footer: bool = True, **fields: int) -> Build:
    return lambda d, payload: vm.vmware_stream_optimized(
        d, payload, "exported.vmdk", footer=footer, **fields
    )


def _descriptor(subformat: str) -> Build:
    return lambda d, _: vm.qemu_descriptor(d, "disk.vmdk", subformat)


def _desc(old: bytes, new: bytes) -> Build:
    def build(d: Path, payload: Path) -> Path:
        path = vm.converted(d, payload, "disk.vmdk", "vmdk", "-o", "subformat=monolithicSparse")
        return vm.vmdk_rewrite_descriptor(path, old, new)

    return build


def _two_extents(d: Path, payload: Path) -> Path:
    path = vm.monolithic_sparse(d, payload, "disk.vmdk", "disk.vmdk")
    line = vm.vmdk_extent_line(path)
    return vm.vmdk_rewrite_descriptor(path, line, line + b"\n" + line.replace(b"disk", b"disk2"))


def _vdi(*options: str, image_type: int = 0) -> Build:
    return lambda d, payload: vm.virtualbox_vdi(
        d, payload, "disk.vdi", *options, image_type=image_type
    )


def _vhd(subformat: str, creator: bytes, *, spec: bool, original: int | None = None) -> Build:
    return lambda d, payload: vm.vhd(
        d, payload, "disk.vhd", subformat, creator, spec_geometry=spec, original_size=original
    )


def _qcow2_snapshot(d: Path, payload: Path) -> Path:
    path = vm.converted(d, payload, "disk.qcow2", "qcow2")
    vm.qemu_img("snapshot", "-c", "installed", path)
    return path


def _gpt(*extra: bytes) -> Build:
    return lambda d, payload: disks.gpt_disk(d, payload, "disk.raw", list(extra))


def _mbr(*entries: bytes) -> Build:
    return lambda d, payload: disks.mbr_disk(d, payload, "disk.raw", list(entries))


def _sgdisk(*hybrid: str) -> Build:
    return lambda d, payload: disks.sgdisk_disk(d, payload, "disk.raw", *hybrid)


def _xorriso(*options: str) -> Build:
    return lambda d, _: disks.xorriso_iso(d, "disk.iso", *options)


_PARENT = b'parentCID=6c2f4a1e\nparentFileNameHint="Windows 10 x64.vmdk"\n'
_HYBRID = disks.mbr_entry(0x00, 0x0C, 2048, 2048)  # FAT32 LBA copy of the EFI partition
_ISOHYBRID = disks.mbr_entry(0x80, 0x17, 0, 2048, chs=b"\0\1\0")  # isohybrid's layout
_NTFS_BOOT = disks.mbr_entry(0x80, 0x07, 2048, 4096)
_LINUX = disks.mbr_entry(0x00, 0x83, 6144, 2048)
_EFI_GPT = "28732ac11ff8d211ba4b00a0c93ec93b"  # EFI System Partition type, as xorriso takes it
_UBUNTU_STYLE = ("-partition_offset", "16", "--mbr-force-bootable", "-append_partition", "2",
                 _EFI_GPT, "efi.img", "-appended_part_as_gpt")  # fmt: skip
_DEBIAN_STYLE = ("-partition_offset", "16", "--mbr-force-bootable", "-append_partition", "2",
                 "0xef", "efi.img")  # fmt: skip


# fmt: off
CASES = [
    # VMware
    Case(
        "vmware_monolithic_sparse_renamed", "VMware Workstation",
        _renamed("My Disk (1).vmdk"), "vmdk", "accept", "vmdk", SIZE, "accept",
        "Issue #15: the embedded descriptor names the file the disk was created as, quoted, "
        "with spaces and parentheses; the one SPARSE extent of a monolithicSparse file is the "
        "file itself (qemu opens the file, not the name).",
    ),
    Case(
        "vmware_monolithic_sparse_utf8_name", "VMware Workstation (non-English)",
        _renamed("Disque système.vmdk"), "vmdk", "accept", "vmdk", SIZE, "reject",
        'VMware writes encoding="UTF-8" and the name in UTF-8. LOOSER than oslo, which decodes '
        "the descriptor as ASCII and then reports 'No descriptor found': we decode UTF-8 "
        "(Latin-1 as fallback) and apply the same grammar; the name is never opened.",
    ),
    Case(
        "vmware_stream_optimized_footer", "VMware ovftool / ESXi export / OVA",
        _stream(), "vmdk", "accept", "vmdk", SIZE, "accept",
        "Issue #15: gdOffset = GD_AT_END in the header, grains and tables behind markers, then "
        "footer marker, footer (the header with the real gdOffset) and EOS marker. A footer "
        "that repeats the header is legal; it was refused as raw before (the streaming decision"
        " counted a VMDK still waiting for its footer as no match).",
    ),
    Case(
        "vmware_stream_optimized_no_footer", "VirtualBox OVA export, older ovftool",
        _stream(footer=False), "vmdk", "accept", "vmdk", SIZE, "accept",
        "Same marker layout with the real gdOffset in the header and only an EOS marker at the "
        "end.",
    ),
    Case(
        "qemu_stream_optimized", "qemu-img",
        _convert("vmdk", "-o", "subformat=streamOptimized"),
        "vmdk", "accept", "vmdk", SIZE, "accept",
        "qemu-img's own streamOptimized (grain directory in the header area, no footer).",
    ),
    Case(
        "vmware_stream_footer_capacity", "crafted (footer edited)",
        _stream(capacity=2 * SIZE // 512), "vmdk", "reject", "vmdk", "vmdk_structure", "accept",
        "STRICTER than oslo, which compares only signature, version and descriptor: qemu uses "
        "the footer's capacity, so the size the inspector vetted is not the size qemu converts "
        "(rule vmdk_footer, field capacity).",
    ),
    Case(
        "vmware_stream_footer_grain_size", "crafted (footer edited)",
        _stream(grainSize=256), "vmdk", "reject", "vmdk", "vmdk_structure", "accept",
        "STRICTER than oslo: a footer with another grain size describes another disk layout "
        "than the header (rule vmdk_footer, field grainSize).",
    ),
    Case(
        "vmware_stream_footer_gd_outside", "crafted (footer edited)",
        _stream(gdOffset=1 << 40), "vmdk", "reject", "vmdk", "vmdk_structure", "accept",
        "STRICTER than oslo: the footer's grain directory must lie inside the file, before the "
        "footer (rule vmdk_footer, field gdOffset).",
    ),
    Case(
        "vmware_stream_footer_version", "crafted (footer edited)",
        _stream(version=1), "vmdk", "reject", "vmdk", "vmdk_structure", "reject",
        "Footer and header versions differ: another header than the one vetted (oslo refuses it "
        "too; rule vmdk_footer, field version).",
    ),
    Case(
        "vmware_split_descriptor", "VMware Workstation (split disk)",
        _descriptor("twoGbMaxExtentSparse"), "vmdk", "reject", "vmdk", "vmdk_subformat", "reject",
        "twoGbMaxExtentSparse: the uploaded descriptor names -s001.vmdk... files that would be "
        "opened beside it. Policy: single-file create types only (rule vmdk_descriptor_file, "
        "field createType).",
    ),
    Case(
        "vmware_split_extent", "VMware Workstation (split disk)",
        lambda d, _: vm.vmware_split_extent(d, "split.vmdk"),
        "vmdk", "reject", "vmdk", "vmdk_subformat", "reject",
        "One -s001.vmdk extent uploaded alone: VMware writes it without an embedded descriptor "
        "(descriptorOffset 0); it is a fragment of a disk (rule vmdk_embedded_descriptor; oslo:"
        " 'Wrong descriptor location').",
    ),
    Case(
        "qemu_split_extent", "qemu-img (split disk)",
        lambda d, _: vm.qemu_split_extent(d, "split.vmdk"),
        "vmdk", "reject", "vmdk", "vmdk_subformat", "reject",
        "qemu-img writes split extents with an empty embedded descriptor (rule "
        "vmdk_embedded_descriptor; oslo: 'No descriptor found').",
    ),
    Case(
        "vmware_monolithic_flat_descriptor", "VMware Workstation (preallocated)",
        _descriptor("monolithicFlat"), "vmdk", "reject", "vmdk", "vmdk_subformat", "reject",
        "monolithicFlat: a text descriptor whose FLAT extent is another file (CVE-2022-47951 "
        "shape).",
    ),
    Case(
        "esxi_flat_extent_declared_vmdk", "VMware ESXi (datastore copy of disk-flat.vmdk)",
        lambda _, payload: payload, "vmdk", "reject", "raw", "format_mismatch", "reject",
        "The -flat.vmdk of an ESXi disk is raw data; the message says to declare "
        "disk_format=raw (rule declared_format).",
    ),
    Case(
        "vmware_snapshot_delta", "VMware Workstation (snapshot)",
        _desc(b"parentCID=ffffffff\n", _PARENT), "vmdk", "reject", "vmdk", "backing_file", "accept",
        "STRICTER than oslo (key=value lines pass its grammar): qemu opens parentFileNameHint "
        "as a backing file, resolved beside the upload; refused before qemu sees it (rule "
        "vmdk_parent).",
    ),
    Case(
        "vmware_two_sparse_extents", "crafted (descriptor edited)",
        _two_extents, "vmdk", "reject", "vmdk", "vmdk_extent", "accept",
        "STRICTER than oslo (no '/' in the lines): a single-file VMDK has exactly one extent, "
        "itself (rule vmdk_extent, field extent lines).",
    ),
    Case(
        "vmware_extent_in_directory", "crafted (descriptor edited)",
        _renamed("vms/disk.vmdk"), "vmdk", "reject", "vmdk", "vmdk_extent", "reject",
        "A directory in the extent name never comes from a tool (they write bare names); oslo "
        "refuses '/' too (rule vmdk_extent, field file name).",
    ),
    # VirtualBox
    Case(
        "virtualbox_vdi_dynamic", "VirtualBox",
        _vdi(), "vdi", "accept", "vdi", SIZE, "accept",
        "Dynamic VDI (image_type 1) with VirtualBox's banner and 1 MiB blocks, as VirtualBox "
        "creates disks by default.",
    ),
    Case(
        "virtualbox_vdi_static", "VirtualBox (fixed size)",
        _vdi("-o", "static=on"), "vdi", "accept", "vdi", SIZE, "accept",
        "Static (preallocated, image_type 2) VDI: every block allocated, same header.",
    ),
    Case(
        "virtualbox_vdi_differencing", "VirtualBox (snapshot)",
        _vdi(image_type=4), "vdi", "reject", "vdi", "backing_file", "accept",
        "STRICTER than oslo (null check): image_type 4 is a snapshot of a parent disk; qemu 7.2"
        " opens it as if standalone and converts a disk silently missing the parent's data "
        "(rule vdi_image_type).",
    ),
    Case(
        "virtualbox_vhd_fixed", "VirtualBox",
        _vhd("fixed", b"vbox", spec=True), "vhd", "accept", "vhd", SPEC_CHS_4M, "reject",
        "Exact current_size with the spec's CHS geometry. qemu sizes 'vbox' disks by geometry "
        "(4177920, 16 KiB under current_size) and so does its conversion; the inspector uses "
        "qemu's rule. oslo sees raw (no header at offset 0): a fixed VHD mismatch.",
    ),
    # Hyper-V and Virtual PC
    Case(
        "hyperv_vhdx_dynamic", "Hyper-V",
        _convert("vhdx", "-o", "subformat=dynamic"), "vhdx", "accept", "vhdx", SIZE, "accept",
        "Dynamic VHDX: two headers, region table, 1 MiB log region, metadata region, BAT.",
    ),
    Case(
        "hyperv_vhdx_fixed", "Hyper-V (fixed size)",
        _convert("vhdx", "-o", "subformat=fixed"), "vhdx", "accept", "vhdx", SIZE, "accept",
        "Fixed VHDX: the same headers, log and metadata regions, every block allocated.",
    ),
    Case(
        "hyperv_avhdx_differencing", "Hyper-V (checkpoint .avhdx)",
        lambda d, payload: vm.vhdx_with_parent(d, payload, "disk.vhdx"),
        "vhdx", "reject", "vhdx", "backing_file", "accept",
        "STRICTER than oslo (null check): HasParent set in File Parameters, a checkpoint whose "
        "parent holds the rest of the disk. qemu 7.2 refuses it with a bare 'Invalid argument'; "
        "we name the field before qemu runs (rule vhdx_parent).",
    ),
    Case(
        "hyperv_vhd_fixed", "Hyper-V",
        _vhd("fixed", b"win ", spec=True), "vhd", "accept", "vhd", SIZE, "reject",
        "Creator 'win ': qemu uses current_size. Fixed VHD = raw + footer at EOF; oslo calls it"
        " raw (mismatch), we read the footer.",
    ),
    Case(
        "hyperv_vhd_dynamic", "Hyper-V",
        _vhd("dynamic", b"win ", spec=True), "vhd", "accept", "vhd", SIZE, "accept",
        "Dynamic VHD, creator 'win ', exact current_size with the spec's geometry.",
    ),
    Case(
        "hyperv_vhd_resized", "Hyper-V (disk expanded)",
        _vhd("dynamic", b"win ", spec=True, original=2 * MIB),
        "vhd", "accept", "vhd", SIZE, "accept",
        "Expanded after creation: original_size keeps 2 MiB. oslo reports original_size (2 "
        "MiB); qemu and our inspector use current_size.",
    ),
    Case(
        "virtual_pc_vhd_dynamic", "Virtual PC",
        _vhd("dynamic", b"vpc ", spec=False), "vhd", "accept", "vhd", CHS_4M, "accept",
        "Creator 'vpc ': the size is a whole CHS geometry, which qemu uses.",
    ),
    Case(
        "virtual_server_vhd_fixed", "Virtual Server 2005",
        _vhd("fixed", b"vs  ", spec=False), "vhd", "accept", "vhd", CHS_4M, "reject",
        "Creator 'vs  ' (sized by geometry), fixed: the footer is only at EOF, so oslo sees raw "
        "content and refuses the declaration; we read the footer.",
    ),
    Case(
        "disk2vhd_vhd_dynamic", "Sysinternals Disk2vhd",
        _vhd("dynamic", b"d2v ", spec=True), "vhd", "accept", "vhd", SIZE, "accept",
        "Creator 'd2v ' (a physical disk captured by Disk2vhd): qemu uses current_size.",
    ),
    Case(
        "qemu_vhd_dynamic_force_size", "qemu-img (force_size)",
        _vhd("dynamic", b"qem2", spec=False), "vhd", "accept", "vhd", CHS_4M, "accept",
        "Creator 'qem2' (qemu-img with force_size) and a whole-geometry size: current_size.",
    ),
    # qcow2 as cloud image builders ship it
    Case(
        "qcow2_v2", "qemu-img -o compat=0.10 (older builders)",
        _convert("qcow2", "-o", "compat=0.10"), "qcow2", "accept", "qcow2", SIZE, "accept",
        "qcow2 version 2 (compat=0.10): the header ends before the feature fields; allowed.",
    ),
    Case(
        "qcow2_v3", "qemu-img (default)",
        _convert("qcow2"), "qcow2", "accept", "qcow2", SIZE, "accept",
        "qcow2 version 3 (compat=1.1), no incompatible feature bit set.",
    ),
    Case(
        "qcow2_compressed_zlib", "virt-sparsify / convert -c (cloud images)",
        _convert("qcow2", "-c"), "qcow2", "accept", "qcow2", SIZE, "accept",
        "zlib-compressed clusters, as distributions ship cloud images.",
    ),
    Case(
        "qcow2_compressed_zstd", "convert -c -o compression_type=zstd",
        _convert("qcow2", "-c", "-o", "compression_type=zstd"),
        "qcow2", "accept", "qcow2", SIZE, "accept",
        "zstd compression type: incompatible bit 3, on the allow-list (as in oslo).",
    ),
    Case(
        "qcow2_lazy_refcounts", "qemu-img -o lazy_refcounts=on",
        _convert("qcow2", "-o", "lazy_refcounts=on"), "qcow2", "accept", "qcow2", SIZE, "accept",
        "Lazy refcounts is a compatible feature bit: nothing a reader must understand.",
    ),
    Case(
        "qcow2_internal_snapshot", "qemu-img snapshot -c",
        _qcow2_snapshot, "qcow2", "accept", "qcow2", SIZE, "accept",
        "An internal snapshot (snapshot table in the header); the active layer is converted.",
    ),
    Case(
        "qcow2_extended_l2", "qemu-img -o extended_l2=on",
        _convert("qcow2", "-o", "extended_l2=on"),
        "qcow2", "reject", "qcow2", "unknown_features", "reject",
        "Policy (corpus case qcow2_extended_l2): incompatible bit 4 is outside the allow-list, "
        "as in oslo (rule qcow2_incompatible_features, field incompatible_features bit 4).",
    ),
    # ISO and raw disks
    Case(
        "iso9660", "mkisofs-style (Python)",
        lambda d, _: disks.iso9660(d, "disk.iso"), "iso", "accept", "iso", 1 * MIB, "accept",
        "Plain ISO 9660 (PVD at 32 KiB); qemu reads it as raw, the size is the volume's.",
    ),
    Case(
        "iso_isohybrid_mbr", "syslinux isohybrid (Python)",
        lambda d, _: disks.hybrid_iso(d, "disk.iso", [_ISOHYBRID]),
        "iso", "accept", "iso", 1 * MIB, "accept",
        "Bootable hybrid ISO: an MBR in the system area. iso+gpt is the one allowed double "
        "match (as iso), as Glance does; oslo's detect_file_format alone says 'Multiple "
        "formats'.",
    ),
    Case(
        "iso_hybrid_gpt", "grub-mkrescue / xorriso GPT layout (Python)",
        lambda d, _: disks.gpt_disk(d, disks.iso9660(d, "plain.iso"), "disk.iso"),
        "iso", "accept", "iso", 1 * MIB, "accept",
        "Protective MBR, GPT and ISO 9660 in one image (UEFI-bootable installer media); iso "
        "wins, as in Glance.",
    ),
    Case(
        "xorriso_iso_gpt_efi", "xorriso (Ubuntu-style)",
        _xorriso(*_UBUNTU_STYLE), "iso", "accept", "iso", FILE_LENGTH, "accept",
        "xorriso with an appended EFI partition in a GPT (protective MBR plus a bootable dummy "
        "entry).",
        needs="xorriso",
    ),
    Case(
        "xorriso_iso_mbr_efi", "xorriso (Debian-style)",
        _xorriso(*_DEBIAN_STYLE), "iso", "accept", "iso", FILE_LENGTH, "accept",
        "xorriso with an MBR listing the ISO and an EFI partition (no GPT): iso+gpt is iso.",
        needs="xorriso",
    ),
    Case(
        "gpt_disk", "UEFI installer / image builder (Python)",
        _gpt(), "raw", "accept", "raw", SIZE, "accept",
        "Whole-disk GPT: protective MBR, primary and backup GPT; declared and converted as raw.",
    ),
    Case(
        "gpt_disk_sgdisk", "gdisk / sgdisk",
        _sgdisk(), "raw", "accept", "raw", SIZE, "accept",
        "sgdisk's own protective MBR and GPT (EFI and Linux partitions).",
        needs="sgdisk",
    ),
    Case(
        "mbr_disk", "fdisk / Windows (MBR)",
        _mbr(_NTFS_BOOT, _LINUX), "raw", "accept", "raw", SIZE, "accept",
        "Classic MBR disk: a bootable NTFS partition and a Linux one; raw content with 55 AA.",
    ),
    Case(
        "gpt_hybrid_mbr", "Boot Camp / gdisk hybrid MBR (Python)",
        _gpt(_HYBRID), "raw", "reject", "raw", "mbr_invalid", "reject",
        "Policy, as oslo and Glance (strict default; Glance's gpt_safety_checks_nonfatal=mbr "
        "relaxes it): a protective MBR must stand alone (rule mbr, field partition table).",
    ),
    Case(
        "gpt_hybrid_mbr_sgdisk", "gdisk -h (hybrid MBR)",
        _sgdisk("-h", "2"), "raw", "reject", "raw", "mbr_invalid", "reject",
        "The same hybrid MBR, written by sgdisk -h 2 (policy, as above).",
        needs="sgdisk",
    ),
]
# fmt: on
