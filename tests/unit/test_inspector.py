"""The stream inspector's early refusals, fixed-VHD footer and single-pass scan outputs."""

from __future__ import annotations

import gzip
import subprocess

from imageport.config import Settings
from imageport.pipeline.data.scan import scan

MIB = 1024 * 1024
SETTINGS = Settings(chunk_size=64 * 1024)


def _chunks(data: bytes, size: int = 64 * 1024):
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def _qcow2(tmp_path, *extra: str) -> bytes:
    path = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), "64M"], check=True
    )
    return path.read_bytes()


def test_a_refusal_known_from_the_header_stops_reading_after_one_more_chunk(tmp_path):
    data = _qcow2(tmp_path, "-u", "-b", "/etc/passwd", "-F", "raw") + bytes(32 * MIB)
    pulled = []

    def counted():
        for chunk in _chunks(data):
            pulled.append(len(chunk))
            yield chunk

    scanned = scan(counted(), SETTINGS, declared="qcow2", extra_algo=None)

    assert scanned.complete is False
    assert scanned.verdict.reason_code == "backing_file"
    # Every header region is known by 256 KiB (VHDX's region table ends there); one more
    # chunk is read before the refusal stops the stream. Not 32 MiB.
    assert sum(pulled) <= 256 * 1024 + 64 * 1024
    assert scanned.md5 is None  # the stream was not read to its end


def test_format_mismatch_is_early_too(tmp_path):
    data = _qcow2(tmp_path) + bytes(8 * MIB)
    scanned = scan(_chunks(data), SETTINGS, declared="raw", extra_algo=None)
    assert (scanned.complete, scanned.verdict.reason_code) == (False, "format_mismatch")


def test_raw_content_declared_vhd_waits_for_the_footer(tmp_path):
    path = tmp_path / "fixed.vhd"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(path), "4M"],
        check=True,
    )
    scanned = scan(_chunks(path.read_bytes()), SETTINGS, declared="vhd", extra_algo=None)
    verdict = scanned.verdict
    assert scanned.complete is True
    assert (verdict.accepted, verdict.detected_format, verdict.subformat) == (
        True,
        "vhd",
        "fixed",
    )


def test_compressed_upload_keeps_received_hashes_and_reports_the_disk(tmp_path):
    disk = _qcow2(tmp_path)
    packed = gzip.compress(disk)
    written = bytearray()

    def sink(chunk, offset):
        written[offset : offset + len(chunk)] = chunk

    scanned = scan(_chunks(packed), SETTINGS, declared="qcow2", extra_algo=None, sink=sink)

    assert scanned.compression == "gzip"
    assert scanned.size == len(packed)
    assert scanned.disk_size == len(disk)
    assert bytes(written) == disk
    assert scanned.verdict.accepted is True


def test_empty_input_is_refused():
    scanned = scan(iter(()), SETTINGS, declared="raw", extra_algo=None)
    assert scanned.verdict.reason_code == "empty_image"
