"""Peak RSS of `imageport api` while a multi-GiB image streams through PUT /v2/images/ID/stage.

Starts the API (embedded mode, private data dir), creates an image, streams
``IMAGEPORT_BENCH_API_GIB`` GiB (default 2) of non-zero bytes to ``/stage`` with a chunked
request, samples the server's RSS (psutil, every 50 ms) before, during and after, and prints
JSON: bytes sent, seconds, throughput, baseline and peak RSS, and their difference. A flat
memory profile means the peak grows by a few chunk buffers (8 MiB each), not by the image size.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

GIB = 1024**3
CHUNK = 1024 * 1024  # bytes per request-body chunk the client sends
SAMPLE_SECONDS = 0.05  # RSS sampling period


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _body(total: int):
    block = bytes(range(1, 256)) * (CHUNK // 255 + 1)  # non-zero: no hole shortcut
    block = block[:CHUNK]
    sent = 0
    while sent < total:
        piece = block[: min(CHUNK, total - sent)]
        sent += len(piece)
        yield piece


def _start(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env["IMAGEPORT_DATA_DIR"] = str(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imageport", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("imageport api did not start")


def main() -> None:
    total = int(float(os.environ.get("IMAGEPORT_BENCH_API_GIB", "2")) * GIB)
    root = Path(tempfile.mkdtemp(prefix="imageport-bench-api-"))
    proc, url = _start(root)
    server = psutil.Process(proc.pid)
    peak = {"rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], server.memory_info().rss)
            time.sleep(SAMPLE_SECONDS)

    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            image = client.post(
                "/v2/images", json={"disk_format": "raw", "container_format": "bare"}
            ).json()
            baseline = server.memory_info().rss
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            answer = client.put(
                f"/v2/images/{image['id']}/stage",
                content=_body(total),
                headers={"Content-Type": "application/octet-stream"},
            )
            seconds = time.monotonic() - started
            stop.set()
            sampler.join()
            answer.raise_for_status()
            status = client.get(f"/v2/images/{image['id']}").json()["status"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "bytes": total,
                "seconds": round(seconds, 2),
                "mib_per_second": round(total / 2**20 / seconds, 1),
                "baseline_rss_mib": round(baseline / 2**20, 1),
                "peak_rss_mib": round(peak["rss"] / 2**20, 1),
                "growth_mib": round((peak["rss"] - baseline) / 2**20, 1),
                "image_status_after": status,
            }
        )
    )


if __name__ == "__main__":
    main()
