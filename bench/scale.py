#!/usr/bin/env python3
"""How the cost of one import grows with virtual size: sparse qcow2, little data, to raw.

For each size in ``--virtual-gib`` (default 1 and 16; the issue's 100 with
``--virtual-gib 1,16,100``, which needs that much free scratch: space admission counts a
conversion's output at its virtual size), a qcow2 of that virtual size holding 32 MiB of data
in 4 runs spread over the disk is imported with ``imageport import --target-format raw``
(embedded mode: the command's own process is the worker, the same pipeline code). The process
tree is sampled every 10 ms: peak RSS of the worker process and of qemu-img. Prints seconds,
seconds per virtual GiB and the peaks per size; the goal is flat RSS under 200 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
DATA_RUNS = 4
RUN_BYTES = 8 * 1024 * 1024


def log(msg: str) -> None:
    print(f"scale-bench: {msg}", file=sys.stderr, flush=True)


def make_sparse_qcow2(path: Path, virtual: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual)], check=True)
    commands = []
    for i in range(DATA_RUNS):
        offset = (virtual - RUN_BYTES) * i // (DATA_RUNS - 1) // 65536 * 65536
        commands += ["-c", f"write -P {0x11 + i} {offset} {RUN_BYTES}"]
    subprocess.run(
        ["qemu-io", "-f", "qcow2", *commands, str(path)], check=True, capture_output=True
    )


class Peaks(threading.Thread):
    """Peak RSS of a process and, separately, of its qemu-img children."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.worker = 0
        self.qemu = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            try:
                self.worker = max(self.worker, self.proc.memory_info().rss)
                for child in self.proc.children(recursive=True):
                    # Under prlimit/unshare the name changes at exec; the command line says.
                    if child.cmdline()[:1] and child.cmdline()[0].endswith("qemu-img"):
                        self.qemu = max(self.qemu, child.memory_info().rss)
            except psutil.Error:
                continue


def import_once(source: Path, workdir: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env["IMAGEPORT_DATA_DIR"] = str(workdir / "data")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imageport", "import", str(source), "--disk-format", "qcow2",
         "--target-format", "raw", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    peaks = Peaks(proc.pid)
    peaks.start()
    out, _ = proc.communicate()
    seconds = time.monotonic() - started
    peaks.done.set()
    peaks.join()
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {out.decode()[:500]}")
    image = json.loads(out)
    assert image["status"] == "active", image["status"]
    return {
        "seconds": seconds,
        "worker_peak_rss_mib": peaks.worker / 2**20,
        "qemu_img_peak_rss_mib": peaks.qemu / 2**20,
        "virtual_size": image["virtual_size"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--virtual-gib", default="1,16", help="comma-separated sizes in GiB")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.virtual_gib.split(",")]
    (ROOT / "build").mkdir(exist_ok=True)
    rows = []
    for size in sizes:
        workdir = Path(tempfile.mkdtemp(prefix="imageport-scale-", dir=ROOT / "build"))
        try:
            source = workdir / f"sparse-{size}g.qcow2"
            make_sparse_qcow2(source, size * GIB)
            log(f"{size} GiB virtual, {DATA_RUNS * RUN_BYTES // 2**20} MiB data: importing")
            result = import_once(source, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows.append(
            {
                "virtual_gib": size,
                "data_mib": DATA_RUNS * RUN_BYTES // 2**20,
                "seconds": round(result["seconds"], 2),
                "seconds_per_virtual_gib": round(result["seconds"] / size, 3),
                "worker_peak_rss_mib": round(result["worker_peak_rss_mib"], 1),
                "qemu_img_peak_rss_mib": round(result["qemu_img_peak_rss_mib"], 1),
            }
        )
    peak = max(r["worker_peak_rss_mib"] for r in rows)
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "import": "sparse qcow2 to raw, file store, embedded worker",
                "sizes": rows,
                "worker_rss_flat_under_200_mib": peak < 200
                and peak - min(r["worker_peak_rss_mib"] for r in rows) < 32,
                "machine": {"cpus": os.cpu_count()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
