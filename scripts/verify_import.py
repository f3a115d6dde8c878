"""Check an imported image record against the bytes it points at.

Usage: verify_import.py RECORD.json [--source SOURCE] [--target-format FORMAT]

RECORD.json is what `imageport import ... --json` printed. For every `file://` location the
stored file is checked independently of imageport: `size` against the file length,
`virtual_size` against `qemu-img info` of the stored file (and of SOURCE when given),
`checksum` against md5sum and `os_hash_value` against the `<algo>sum` tool (hashlib when
coreutils has none). Exits 1 on any mismatch, 2 on unusable input.
"""
# ruff: noqa: T201, INP001

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COREUTILS_SUMS = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512"}
CHUNK = 8 << 20


def qemu_virtual_size(path: Path, fmt: str | None) -> int:
    """Return qemu-img's virtual size for path (format given explicitly when known)."""
    cmd = ["qemu-img", "info", "--output=json"]
    if fmt:
        cmd += ["-f", fmt]
    out = subprocess.run([*cmd, str(path)], check=True, capture_output=True, text=True).stdout
    return int(json.loads(out)["virtual-size"])


def start_digest(algo: str, path: Path) -> subprocess.Popen[str] | None:
    """Start `<algo>sum path` in the background, or return None when there is no such tool."""
    tool = f"{algo}sum"
    if algo not in COREUTILS_SUMS or shutil.which(tool) is None:
        return None
    return subprocess.Popen([tool, "--", str(path)], stdout=subprocess.PIPE, text=True)


def finish_digest(proc: subprocess.Popen[str] | None, algo: str, path: Path) -> str:
    """Collect the digest started by start_digest, or compute it with hashlib."""
    if proc is None:
        h = hashlib.new(algo)
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{algo}sum failed on {path}")
    return out.split()[0]


class Checker:
    """Collects comparison results and prints one line per check."""

    def __init__(self) -> None:
        self.failures = 0

    def same(self, what: str, recorded: object, actual: object) -> None:
        """Compare one recorded value with the value measured on disk."""
        ok = recorded == actual
        self.failures += not ok
        mark = "ok  " if ok else "FAIL"
        detail = f"{recorded}" if ok else f"record {recorded!r} != actual {actual!r}"
        print(f"  {mark} {what}: {detail}")

    def want(self, what: str, recorded: object, expected: object) -> None:
        """Check that a recorded value is the expected one."""
        ok = recorded == expected
        self.failures += not ok
        detail = f"{recorded}" if ok else f"record {recorded!r}, expected {expected!r}"
        print(f"  {'ok  ' if ok else 'FAIL'} {what}: {detail}")


def verify_location(check: Checker, image: dict[str, Any], url: str) -> None:
    """Check one file:// location of image."""
    path = Path(unquote(urlsplit(url).path))
    print(f"location {url}")
    if not path.is_file():
        check.want("stored file exists", str(path), "an existing file")
        return
    algo = str(image.get("os_hash_algo") or "sha512")
    md5_proc = start_digest("md5", path)
    multi_proc = start_digest(algo, path)
    check.same("size == file length", image.get("size"), path.stat().st_size)
    fmt = image.get("disk_format")
    check.same(
        f"virtual_size == qemu-img info -f {fmt}",
        image.get("virtual_size"),
        qemu_virtual_size(path, fmt if isinstance(fmt, str) else None),
    )
    check.same("checksum == md5sum", image.get("checksum"), finish_digest(md5_proc, "md5", path))
    check.same(
        f"os_hash_value == {algo}sum",
        image.get("os_hash_value"),
        finish_digest(multi_proc, algo, path),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the checks; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path, help="JSON printed by `imageport import --json`")
    parser.add_argument("--source", type=Path, help="the imported file, for its virtual size")
    parser.add_argument("--target-format", help="expected disk_format of the stored image")
    args = parser.parse_args(argv)

    try:
        image = json.loads(args.record.read_text())
    except (OSError, ValueError) as exc:
        print(f"verify_import: cannot read {args.record}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(image, dict):
        print(f"verify_import: {args.record} is not a JSON object", file=sys.stderr)
        return 2

    check = Checker()
    print(f"image {image.get('id')} ({image.get('name')})")
    check.want("status", image.get("status"), "active")
    if args.target_format:
        check.want("disk_format", image.get("disk_format"), args.target_format)
    if args.source:
        check.same(
            "virtual_size == qemu-img info of the source",
            image.get("virtual_size"),
            qemu_virtual_size(args.source, None),
        )
    urls = [str(loc.get("url", "")) for loc in image.get("locations") or []]
    file_urls = [u for u in urls if u.startswith("file://")]
    if not file_urls:
        check.want("file:// locations", urls, "at least one")
    for url in file_urls:
        verify_location(check, image, url)

    if check.failures:
        print(f"verify_import: {check.failures} mismatch(es)", file=sys.stderr)
        return 1
    print("verify_import: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
