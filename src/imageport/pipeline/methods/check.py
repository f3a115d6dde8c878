"""``imageport inspect``: the stage, verify and inspect checks on a local file, storing nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from imageport.config import Settings
from imageport.errors import HashMismatch, PermanentError
from imageport.pipeline.data.decompression import MAGIC_LENGTH, detect
from imageport.pipeline.data.extents import data_runs
from imageport.pipeline.data.hashing import parse_hash_spec, same_digest
from imageport.pipeline.data.scan import ScanResult, scan
from imageport.pipeline.data.sources import file_chunks
from imageport.pipeline.safety.inspector import Verdict
from imageport.pipeline.safety.qemu import QemuImg
from imageport.pipeline.safety.second_opinion import ProbeMismatch, second_opinion


def check_file(
    path: Path,
    settings: Settings,
    qemu: QemuImg,
    *,
    disk_format: str | None = None,
    checksum: str | None = None,
    hash_spec: str | None = None,
) -> dict[str, Any]:
    """Return ``{"verdict", "detected_format", "virtual_size", "reason_code", "message", ...}``.

    A compressed file is checked as the disk it decompresses to (``compression`` names the
    layer found), written to a private temporary directory so that qemu-img can see it too.
    """
    algo, expected = parse_hash_spec(hash_spec) if hash_spec else (None, None)
    buffer = bytearray(settings.chunk_size)
    result: dict[str, Any] = {
        "verdict": "reject",
        "detected_format": None,
        "virtual_size": None,
        "reason_code": None,
        "message": "",
        "size": None,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "compression": None,
    }
    with tempfile.TemporaryDirectory(prefix="imageport-inspect-") as scratch:
        disk = Path(scratch) / "disk"
        try:
            scanned = _scan(path, settings, buffer, disk, disk_format, algo)
        except PermanentError as exc:  # a broken or nested compression, a cap
            result.update(reason_code=exc.code, message=exc.message)
            return result
        verdict = scanned.verdict
        result["detected_format"] = verdict.detected_format
        if not scanned.complete:  # refused from its first bytes
            result.update(reason_code=verdict.reason_code, message=verdict.message)
            return result
        return _judge(
            result,
            scanned,
            verdict,
            disk if scanned.compression else path,
            qemu,
            settings,
            (checksum, algo, expected),
        )


def _scan(
    path: Path,
    settings: Settings,
    buffer: bytearray,
    disk: Path,
    disk_format: str | None,
    algo: str | None,
) -> ScanResult:
    """Scan ``path``; a compressed file's disk is written (sparse) to ``disk`` for qemu-img."""
    with path.open("rb") as probe:
        compressed = detect(probe.read(MAGIC_LENGTH)) is not None
    if not compressed:
        return scan(file_chunks(path, buffer), settings, declared=disk_format, extra_algo=algo)
    with disk.open("wb") as out:

        def sink(chunk: memoryview, offset: int) -> None:
            for start, end in data_runs(chunk):
                out.seek(offset + start)
                out.write(chunk[start:end])

        scanned = scan(
            file_chunks(path, buffer), settings, declared=disk_format, extra_algo=algo, sink=sink
        )
        out.truncate(scanned.disk_size or 0)
    return scanned


def _judge(
    result: dict[str, Any],
    scanned: ScanResult,
    verdict: Verdict,
    disk: Path,
    qemu: QemuImg,
    settings: Settings,
    declared: tuple[str | None, str | None, str | None],
) -> dict[str, Any]:
    result.update(
        size=scanned.size,
        checksum=scanned.md5,
        os_hash_algo=scanned.hash_algo,
        os_hash_value=scanned.hash_value,
        compression=scanned.compression,
    )
    try:
        _check_digests(scanned, *declared)
        result["virtual_size"] = second_opinion(qemu, disk, verdict, settings)
    except ProbeMismatch as exc:
        result.update(reason_code=exc.code, message=exc.message, detected_format=exc.probed)
        return result
    except PermanentError as exc:
        result.update(reason_code=exc.code, message=exc.message)
        return result
    result["verdict"] = "accept"
    return result


def _check_digests(
    scanned: ScanResult, checksum: str | None, algo: str | None, expected: str | None
) -> None:
    if checksum is not None and not same_digest(checksum, scanned.md5 or ""):
        raise HashMismatch(f"MD5 is {scanned.md5}, not {checksum}: check the file")
    if algo is not None and expected is not None:
        actual = scanned.digest(algo) or ""
        if not same_digest(expected, actual):
            raise HashMismatch(f"{algo} is {actual}, not {expected}: check the file")
