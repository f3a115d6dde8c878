#!/usr/bin/env python3
"""Headline benchmark: import a qcow2 as raw, against the floor of doing the same by hand.

The source is a 4 GiB (virtual) qcow2 holding 1 GiB of random data, built once by
scripts/make_sample.sh under the work directory and reused. Each round runs, in this order:

* the floor: the least work any importer must do for the same result --
  copy the source into a staging file with ``os.copy_file_range``; hash the staged file with
  MD5 and SHA-512 (one thread per hash over the same reused buffer); ``qemu-img convert
  -f qcow2 -O raw -t none -m 16 -W`` into the output file; hash the output the same way.
  By default (``--floor-hash sparse``) holes found with SEEK_DATA/SEEK_HOLE are hashed from a
  reused buffer of zeros instead of being read, as imageport does; ``--floor-hash read`` reads
  every byte (on the 2-core VMs that costs ~3x more on a 4 GiB output with 1 GiB of data);
* imageport: ``imageport import SRC --disk-format qcow2 --target-format raw --json`` in a
  fresh ``IMAGEPORT_DATA_DIR``; it must exit 0 with an active image whose checksum equals the
  floor's output MD5.

Both run in fresh temporary directories under the work directory (the source's file system);
nothing is dropped from the page cache: the source is read once before the first round so both
start from the same warm source, and each round's own files are new. Wall time is measured
with ``time.perf_counter`` around each. One JSON document goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKE_SAMPLE = REPO / "scripts" / "make_sample.sh"
CHUNK = 8 << 20
COPY_CHUNK = 1 << 30
TARGET_RATIO = 1.2
FLOOR_CONVERT = ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-t", "none", "-m", "16", "-W"]


def log(msg: str) -> None:
    print(f"headline: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--keep", action="store_true", help="keep each round's temporary dirs")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "build" / "bench",
        help="where the sample and the temporary dirs live (default build/bench)",
    )
    p.add_argument(
        "--imageport-cmd",
        default=str(REPO / ".venv" / "bin" / "imageport"),
        help="command that runs imageport (shell-quoted; default .venv/bin/imageport)",
    )
    p.add_argument("--floor-only", action="store_true", help="measure only the floor")
    p.add_argument(
        "--floor-hash",
        choices=["sparse", "read"],
        default="sparse",
        help="floor hashing: 'sparse' hashes holes from a zero buffer without reading them "
        "(what imageport does, the default); 'read' reads every byte through the page cache",
    )
    p.add_argument("--virtual-size", default="4G", help="sample virtual size (default 4G)")
    p.add_argument("--data-mib", type=int, default=1024, help="sample data MiB (default 1024)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


# --- source ---------------------------------------------------------------------------------


def qemu_json(*args: str) -> object:
    out = subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def make_source(work_dir: Path, virtual_size: str, data_mib: int) -> tuple[Path, dict[str, int]]:
    src = work_dir / f"source-{virtual_size}-{data_mib}M.qcow2"
    subprocess.run(
        [str(MAKE_SAMPLE), str(src), virtual_size, str(data_mib)],
        check=True,
        stdout=sys.stderr,
    )
    info = qemu_json("info", "-f", "qcow2", "--output=json", str(src))
    extents = qemu_json("map", "-f", "qcow2", "--output=json", str(src))
    assert isinstance(info, dict)
    assert isinstance(extents, list)
    return src, {
        "virtual_size": int(info["virtual-size"]),
        "data_bytes": sum(int(e["length"]) for e in extents if e["data"]),
        "file_bytes": src.stat().st_size,
    }


def warm(path: Path) -> None:
    """Read path once so every variant starts from the same (cached) source."""
    buf = bytearray(CHUNK)
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass


# --- floor ----------------------------------------------------------------------------------


def copy_file(src: Path, dst: Path) -> int:
    copied = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while n := os.copy_file_range(fin.fileno(), fout.fileno(), COPY_CHUNK):
            copied += n
    return copied


def extents(fd: int, size: int) -> list[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of a file, from SEEK_DATA/SEEK_HOLE."""
    runs: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            data = size
        if data > pos:
            runs.append((pos, data - pos, False))
        if data >= size:
            break
        end = os.lseek(fd, data, os.SEEK_HOLE)
        runs.append((data, end - data, True))
        pos = end
    return runs


def hash_file(
    path: Path, pool: concurrent.futures.ThreadPoolExecutor, *, sparse: bool
) -> tuple[str, str]:
    """MD5 on this thread, SHA-512 on the pool's thread, over the same reused buffer.

    With sparse, holes are not read: they are hashed from a reused buffer of zeros.
    """
    md5 = hashlib.md5(usedforsecurity=False)
    sha512 = hashlib.sha512()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    zeros = memoryview(bytes(CHUNK))

    def both(chunk: memoryview) -> None:
        other = pool.submit(sha512.update, chunk)
        md5.update(chunk)
        other.result()

    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        runs = extents(f.fileno(), size) if sparse else [(0, size, True)]
        for offset, length, is_data in runs:
            left = length
            if is_data:
                f.seek(offset)
            while left:
                n = min(left, CHUNK)
                if is_data:
                    n = f.readinto(view[:n])
                    if not n:
                        raise OSError(f"{path} shrank while hashing")
                    both(view[:n])
                else:
                    both(zeros[:n])
                left -= n
    return md5.hexdigest(), sha512.hexdigest()


def run_floor(
    src: Path, tmp: Path, pool: concurrent.futures.ThreadPoolExecutor, *, sparse: bool
) -> dict:
    staged = tmp / "staged"
    out = tmp / "out.raw"
    t0 = time.perf_counter()
    copy_file(src, staged)
    t1 = time.perf_counter()
    hash_file(staged, pool, sparse=sparse)
    t2 = time.perf_counter()
    subprocess.run([*FLOOR_CONVERT, str(staged), str(out)], check=True)
    t3 = time.perf_counter()
    md5, sha512 = hash_file(out, pool, sparse=sparse)
    t4 = time.perf_counter()
    phases = {
        "copy_s": t1 - t0,
        "hash_staged_s": t2 - t1,
        "convert_s": t3 - t2,
        "hash_output_s": t4 - t3,
    }
    return {"seconds": t4 - t0, "phases": phases, "md5": md5, "sha512": sha512}


# --- imageport ------------------------------------------------------------------------------


def run_imageport(cmd: list[str], src: Path, tmp: Path, floor: dict) -> float:
    env = dict(os.environ, IMAGEPORT_DATA_DIR=str(tmp / "data"))
    argv = [*cmd, "import", str(src), "--disk-format", "qcow2", "--target-format", "raw"]
    argv.append("--json")
    stderr_path = tmp / "imageport.stderr"
    with stderr_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=err, check=False)
        seconds = time.perf_counter() - t0
    problems = []
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}")
    try:
        image = json.loads(proc.stdout)
    except ValueError:
        image = {}
        problems.append(f"stdout is not JSON: {proc.stdout[:200]!r}")
    if image.get("status") != "active":
        problems.append(f"status {image.get('status')!r}, expected 'active'")
    if image.get("checksum") != floor["md5"]:
        problems.append(f"checksum {image.get('checksum')!r} != floor MD5 {floor['md5']}")
    if image.get("os_hash_algo") == "sha512" and image.get("os_hash_value") != floor["sha512"]:
        problems.append("os_hash_value differs from the floor's SHA-512")
    if problems:
        tail = stderr_path.read_bytes()[-4000:].decode(errors="replace")
        log(f"imageport stderr (tail):\n{tail}")
        raise SystemExit(f"headline: imageport run failed: {'; '.join(problems)}")
    return seconds


# --- main -----------------------------------------------------------------------------------


def qemu_img_version() -> str:
    out = subprocess.run(["qemu-img", "--version"], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()[0]


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = shlex.split(args.imageport_cmd)
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)

    log(f"source: {args.virtual_size} virtual, {args.data_mib} MiB data in {work_dir}")
    src, source = make_source(work_dir, args.virtual_size, args.data_mib)
    warm(src)

    rounds = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        for i in range(1, args.rounds + 1):
            row: dict[str, object] = {}
            tmp = Path(tempfile.mkdtemp(prefix=f"round{i}-floor-", dir=work_dir))
            try:
                floor = run_floor(src, tmp, pool, sparse=args.floor_hash == "sparse")
            finally:
                if not args.keep:
                    shutil.rmtree(tmp, ignore_errors=True)
            row["floor_s"] = round(floor["seconds"], 3)
            log(f"round {i}: floor {floor['seconds']:.2f}s {floor['phases']}")
            if not args.floor_only:
                tmp = Path(tempfile.mkdtemp(prefix=f"round{i}-imageport-", dir=work_dir))
                try:
                    seconds = run_imageport(cmd, src, tmp, floor)
                finally:
                    if not args.keep:
                        shutil.rmtree(tmp, ignore_errors=True)
                row["imageport_s"] = round(seconds, 3)
                row["ratio"] = round(seconds / floor["seconds"], 3)
                log(f"round {i}: imageport {seconds:.2f}s, ratio {row['ratio']}")
            row["floor_phases_s"] = {k: round(v, 3) for k, v in floor["phases"].items()}
            rounds.append(row)

    result: dict[str, object] = {
        "benchmark": "headline_import_qcow2_to_raw",
        "source": source,
        "rounds": rounds,
        "floor_median_s": median([r["floor_s"] for r in rounds]),
    }
    if args.floor_only:
        result.update(imageport_median_s=None, ratio_median=None, meets_target=None)
    else:
        ratio = median([r["ratio"] for r in rounds])
        result.update(
            imageport_median_s=median([r["imageport_s"] for r in rounds]),
            ratio_median=ratio,
            meets_target=ratio <= TARGET_RATIO,
        )
    result["target_ratio"] = TARGET_RATIO
    result["floor_hash"] = args.floor_hash
    result["cache"] = (
        "nothing dropped; source read once before round 1, so floor and imageport both start "
        "from a warm source; each run writes new files in a fresh temp dir on the same fs"
    )
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "qemu_img": qemu_img_version(),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
