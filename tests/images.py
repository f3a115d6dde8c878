"""Small real disk images for tests, made with qemu-img."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

MIB = 1024 * 1024


def make_raw(path: Path, *, virtual: int = 16 * MIB, data: int = 3 * MIB, seed: int = 1) -> Path:
    """A sparse raw disk with ``data`` random bytes spread over three regions."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    with path.open("wb") as f:
        f.truncate(virtual)
        piece = data // 3
        for offset in (0, virtual // 2, virtual - piece):
            f.seek(offset)
            f.write(rng.randbytes(piece))
    return path


def make_qcow2(path: Path, *, virtual: int = 16 * MIB, data: int = 3 * MIB, seed: int = 1) -> Path:
    """A qcow2 holding the same content as :func:`make_raw`."""
    raw = path.with_suffix(".src.raw")
    make_raw(raw, virtual=virtual, data=data, seed=seed)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    raw.unlink()
    return path


def qemu_info(path: Path, fmt: str) -> dict:
    """qemu-img's own view of a file."""
    out = subprocess.run(
        ["qemu-img", "info", "-f", fmt, "--output=json", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def file_digests(path: Path) -> tuple[str, str]:
    """MD5 and SHA-512 of a file, as md5sum/sha512sum print them."""
    md5 = subprocess.run(["md5sum", str(path)], check=True, capture_output=True, text=True)
    sha = subprocess.run(["sha512sum", str(path)], check=True, capture_output=True, text=True)
    return md5.stdout.split()[0], sha.stdout.split()[0]


def leftover_files(root: Path) -> list[Path]:
    """Every file under ``root`` (used to prove nothing was left behind)."""
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def stored_path(url: str) -> Path:
    """The path behind a ``file://`` location."""
    assert url.startswith("file://")
    return Path(url.removeprefix("file://"))


__all__ = ["MIB", "file_digests", "leftover_files", "make_qcow2", "make_raw", "qemu_info"]


def qemu_io_qcow2(path: Path, size: int, writes=(), options=()) -> Path:
    """A qcow2 of ``size`` bytes made by qemu-io ``writes`` (e.g. ``write -P 7 0 1M``).

    ``options`` go to ``qemu-img create -o`` (e.g. ``cluster_size=512``, ``compat=0.10``).
    """
    create = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if options:
        create += ["-o", ",".join(options)]
    subprocess.run([*create, str(path), str(size)], check=True)
    if writes:
        args = [a for w in writes for a in ("-c", w)]
        subprocess.run(
            ["qemu-io", "-f", "qcow2", *args, str(path)], check=True, stdout=subprocess.DEVNULL
        )
    return path


def raw_reference(src: Path, out: Path, fmt: str = "qcow2") -> Path:
    """What ``qemu-img convert -O raw`` makes of ``src``: the bytes every raw import must store."""
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(src), str(out)], check=True)
    return out
