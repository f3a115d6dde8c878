"""``imageport inspect``: the stage, verify and inspect checks on a local file, storing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imageport.config import Settings
from imageport.errors import HashMismatch, PermanentError, UnsafeImage
from imageport.pipeline.hashing import parse_hash_spec, same_digest
from imageport.pipeline.inspector import Verdict, cross_check
from imageport.pipeline.qemu import QemuImg, qemu_format
from imageport.pipeline.sources import file_chunks
from imageport.pipeline.staging import scan


def check_file(
    path: Path,
    settings: Settings,
    qemu: QemuImg,
    *,
    disk_format: str | None = None,
    checksum: str | None = None,
    hash_spec: str | None = None,
) -> dict[str, Any]:
    """Return ``{"verdict", "detected_format", "virtual_size", "reason_code", "message"}``."""
    algo, expected = parse_hash_spec(hash_spec) if hash_spec else (None, None)
    buffer = bytearray(settings.chunk_size)
    scanned = scan(file_chunks(path, buffer), settings, declared=disk_format, extra_algo=algo)
    verdict = Verdict(**scanned["verdict"])
    result = {
        "verdict": "accept",
        "detected_format": verdict.detected_format,
        "virtual_size": None,
        "reason_code": None,
        "message": "",
        "size": scanned["size"],
        "checksum": scanned["md5"],
        "os_hash_algo": scanned["hash_algo"],
        "os_hash_value": scanned["hash_value"],
    }
    try:
        _check_digests(scanned, checksum, algo, expected)
        result["virtual_size"] = _check_format(path, verdict, settings, qemu)
    except PermanentError as exc:
        result.update(verdict="reject", reason_code=exc.code, message=exc.message)
    return result


def _check_digests(
    scanned: dict[str, Any], checksum: str | None, algo: str | None, expected: str | None
) -> None:
    if checksum is not None and not same_digest(checksum, scanned["md5"]):
        raise HashMismatch(f"MD5 is {scanned['md5']}, not {checksum}")
    if algo is not None and expected is not None:
        actual = scanned["hash_value"] if algo == scanned["hash_algo"] else None
        actual = actual or scanned["extra_hash"]["value"]
        if not same_digest(expected, actual):
            raise HashMismatch(f"{algo} is {actual}, not {expected}")


def _check_format(path: Path, verdict: Verdict, settings: Settings, qemu: QemuImg) -> int:
    verdict.raise_if_rejected()
    fmt = verdict.detected_format or "raw"
    info = qemu.info(path, fmt)
    cross_check(info, verdict, settings)
    probe = qemu.info(path, None)
    if probe.get("format") != qemu_format(fmt):
        raise UnsafeImage(
            f"qemu-img's probe reads {probe.get('format')}, not {fmt}",
            code="qemu_probe_mismatch",
        )
    return int(info["virtual-size"])
