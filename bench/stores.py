#!/usr/bin/env python3
"""Store benchmarks, one JSON document on stdout.

* fan-out: ``imageport import`` of a qcow2 (converted to raw) into 1, 2 and 3 file stores in
  one job, alternating, median wall time; ratios against one store (target: 3 stores <= 1.2x).
  The copy stage reads the final bytes once and feeds every store from that read.
* S3 copy: peak RSS of ``imageport import`` copying raw images of two sizes to an S3 store
  (moto's server on 127.0.0.1), with 16 MiB parts and with the default 64 MiB parts, 4 in
  flight; flat means the larger image needs no more memory (target: under 200 MiB). The copy
  stage's MiB/s comes from its stage run (moto's CPU shares the machine: compare runs of one
  session, not sessions).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGEPORT = str(ROOT / ".venv/bin/imageport")
MIB = 1024 * 1024
S3_TARGET_RSS = 200 * MIB  # peak RSS of an import copying to S3 (issue 17)


def log(msg: str) -> None:
    print(f"stores-bench: {msg}", file=sys.stderr, flush=True)


def make_qcow2(path: Path, virtual: str, data_mib: int) -> Path:
    if not path.exists():
        subprocess.run(
            [str(ROOT / "scripts/make_sample.sh"), str(path), virtual, str(data_mib)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def make_raw(path: Path, size: int) -> Path:
    if not path.exists():
        with path.open("wb") as f:
            block = os.urandom(MIB)
            for i in range(size // MIB):
                f.write(block[i % 7 :] + block[: i % 7])  # non-repeating enough, fast
    return path


def import_once(env: dict[str, str], args: list[str]) -> tuple[float, int]:
    """Run one import; return wall seconds and the process's peak RSS in bytes."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", IMAGEPORT, "import", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {proc.stderr[-2000:]}")
    image = json.loads(proc.stdout)
    assert image["status"] == "active", image
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return wall, peak_kib * 1024


def write_config(path: Path, stores: dict[str, dict[str, str]], default: str) -> Path:
    lines = [f'default_store = "{default}"']
    for store_id, conf in stores.items():
        lines.append(f"[stores.{store_id}]")
        lines += [f'{k} = "{v}"' for k, v in conf.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def base_env(data_dir: Path, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env.update(IMAGEPORT_DATA_DIR=str(data_dir), IMAGEPORT_CONFIG=str(config))
    return env


def fan_out(work: Path, rounds: int) -> dict[str, object]:
    src = make_qcow2(work / "fanout.qcow2", "2G", 512)
    times: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for r in range(rounds):
        for count in (1, 2, 3):
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                root = Path(tmp)
                stores = {f"s{i}": {"kind": "file", "path": str(root / f"s{i}")} for i in range(3)}
                config = write_config(root / "c.toml", stores, "s0")
                chosen = [a for i in range(count) for a in ("--store", f"s{i}")]
                args = [str(src), "--disk-format", "qcow2", "--target-format", "raw", *chosen]
                wall, _ = import_once(base_env(root / "data", config), args)
                times[count].append(wall)
                log(f"round {r + 1}: {count} store(s) {wall:.2f}s")
    medians = {n: statistics.median(v) for n, v in times.items()}
    return {
        "source": "qcow2, 2 GiB virtual, 512 MiB data, converted to raw",
        "median_s": {f"{n}_stores": round(m, 3) for n, m in medians.items()},
        "ratio_2_over_1": round(medians[2] / medians[1], 3),
        "ratio_3_over_1": round(medians[3] / medians[1], 3),
        "target_ratio_3_over_1": 1.2,
        "glance_reference": "stores written one after another: about 1.7x for two",
    }


def stage_seconds(data_dir: Path, stage: str) -> float:
    """How long ``stage`` of the one import recorded in ``data_dir``'s database took."""
    with sqlite3.connect(data_dir / "imageport.db") as db:
        started, finished = db.execute(
            "SELECT started_at, finished_at FROM stage_runs WHERE stage = ? AND status = 'done'",
            (stage,),
        ).fetchone()
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def s3_copy_once(work: Path, endpoint: str, size_mib: int, part_mib: int) -> dict[str, float]:
    """Import one raw image of ``size_mib`` into the S3 store; peak RSS and copy speed."""
    src = make_raw(work / f"s3-{size_mib}.raw", size_mib * MIB)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp)
        stores = {
            "s3": {
                "kind": "s3",
                "bucket": "bench",
                "endpoint_url": endpoint,
                "region": "us-east-1",
                "access_key": "bench",
                "secret_key": "bench",
            }
        }
        config = write_config(root / "c.toml", stores, "s3")
        env = base_env(root / "data", config)
        env["IMAGEPORT_S3_PART_SIZE"] = str(part_mib * MIB)
        wall, peak = import_once(env, [str(src), "--disk-format", "raw"])
        copy_s = stage_seconds(root / "data", "copy")
    log(
        f"S3 {size_mib} MiB, {part_mib} MiB parts: {wall:.1f}s, copy {size_mib / copy_s:.1f} "
        f"MiB/s, peak RSS {peak / MIB:.0f} MiB"
    )
    return {"peak_rss": peak, "copy_s": copy_s, "wall_s": wall}


def s3_copy(
    work: Path, sizes_mib: list[int], parts_mib: list[int], rounds: int
) -> dict[str, object]:
    import logging  # noqa: PLC0415

    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - a dev dependency

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    runs: dict[tuple[int, int], list[dict[str, float]]] = {}
    try:
        import boto3  # noqa: PLC0415

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106 - moto accepts any credentials
        )
        client.create_bucket(Bucket="bench")
        for _ in range(rounds):
            for part in parts_mib:
                for size in sizes_mib:
                    runs.setdefault((part, size), []).append(
                        s3_copy_once(work, endpoint, size, part)
                    )
    finally:
        server.stop()
    small, large = min(sizes_mib), max(sizes_mib)
    by_parts: dict[str, object] = {}
    for part in parts_mib:
        peak = {s: max(r["peak_rss"] for r in runs[part, s]) for s in sizes_mib}
        copy_s = {s: statistics.median(r["copy_s"] for r in runs[part, s]) for s in sizes_mib}
        by_parts[f"{part}_mib_parts"] = {
            "peak_rss_mib": {f"{s}_mib_image": round(p / MIB, 1) for s, p in peak.items()},
            "copy_mib_s": {f"{s}_mib_image": round(s / t, 1) for s, t in copy_s.items()},
            "growth_large_over_small": round(peak[large] / peak[small], 3),
            "flat": peak[large] <= peak[small] * 1.15,
            "under_target": max(peak.values()) < S3_TARGET_RSS,
        }
    return {
        "max_concurrency": 4,
        "rounds": rounds,
        "target_peak_rss_mib": S3_TARGET_RSS // MIB,
        **by_parts,
        "note": "moto keeps objects in its own process (the bench's); its memory is not counted",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["fan-out", "s3"], help="run one of the two benchmarks")
    p.add_argument("--s3-sizes", default="256,2048", help="MiB sizes for the S3 copy test")
    p.add_argument("--s3-parts", default="16,64", help="MiB part sizes for the S3 copy test")
    p.add_argument("--s3-rounds", type=int, default=1, help="S3 imports per size and part size")
    args = p.parse_args(argv)
    work = ROOT / "build" / "bench-stores"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"benchmark": "stores"}
    if args.only in (None, "fan-out"):
        log("fan-out to 1, 2, 3 file stores")
        result["fan_out"] = fan_out(work, args.rounds)
    if args.only in (None, "s3"):
        log("S3 copy memory and speed")
        result["s3_copy"] = s3_copy(
            work,
            [int(s) for s in args.s3_sizes.split(",")],
            [int(s) for s in args.s3_parts.split(",")],
            args.s3_rounds,
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
