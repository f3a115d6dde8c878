#!/usr/bin/env python3
"""The image API on a large catalog: list and show latency with 100,000 image records.

A fresh PostgreSQL database gets ``--images`` records (default 100,000; 20 projects, mixed
visibility, 5 properties and 3 tags each) by COPY; ``imageport api`` (noauth: an admin sees
every image) serves it. For each request kind — the default page, a property filter, a tag
filter, a visibility filter, a sort by name, a marker page 90% deep, and one image by id —
``--requests`` requests at concurrency 1 and then 16 (threads, one keep-alive client each);
p50/p99 latency per kind and concurrency. Every one of these page queries is served by an
index (tests/integration/test_catalog_indexes.py checks the plans). About 3 minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import make_url
from workers import ROOT, drop_database, fresh_database

from imageport.records import Database

PROJECTS = [f"project-{i:02d}" for i in range(20)]
VISIBILITIES = ("public", "private", "shared", "community", "private", "shared")
DISTROS = ("ubuntu", "debian", "fedora", "centos", "rocky")
TAGS = ("gold", "silver", "bronze", "tested", "nightly", "lts")


def log(msg: str) -> None:
    print(f"catalog-bench: {msg}", file=sys.stderr, flush=True)


def conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def fill(url: str, count: int) -> None:
    """COPY ``count`` images with their properties and tags."""
    rng = random.Random(16)  # noqa: S311 - test data, not secrets
    start = datetime(2026, 1, 1, tzinfo=UTC)
    images, props, tags = io.StringIO(), io.StringIO(), io.StringIO()
    for i in range(count):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        created = (start + timedelta(seconds=i * 7)).isoformat()
        images.write(
            f"{image_id}\timage-{i % 997}\tactive\t{VISIBILITIES[i % len(VISIBILITIES)]}\t"
            f"f\tf\t{PROJECTS[i % len(PROJECTS)]}\t{1 << 30}\t{1 << 32}\tqcow2\tbare\t0\t0\t"
            f"{created}\t{created}\n"
        )
        for name, value in (
            ("os_distro", DISTROS[i % len(DISTROS)]),
            ("os_version", str(20 + i % 5)),
            ("hw_disk_bus", "virtio"),
            ("architecture", "x86_64"),
            ("build", str(i)),
        ):
            props.write(f"{image_id}\t{name}\t{value}\n")
        for tag in {TAGS[i % 6], TAGS[(i // 6) % 6], "catalog"}:
            tags.write(f"{image_id}\t{tag}\n")
    with psycopg.connect(conninfo(url)) as conn:
        with conn.cursor() as cur:
            columns = (
                "id, name, status, visibility, protected, os_hidden, owner, size, virtual_size, "
                "disk_format, container_format, min_disk, min_ram, created_at, updated_at"
            )
            for table, cols, data in (
                ("images", columns, images),
                ("image_properties", "image_id, name, value", props),
                ("image_tags", "image_id, value", tags),
            ):
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    copy.write(data.getvalue())
        conn.commit()
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def deep_marker(url: str, count: int) -> str:
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute(
            "SELECT id FROM images ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            (int(count * 0.9),),
        ).fetchone()
    assert row is not None
    return str(row[0])


def start_api(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = 20000 + os.getpid() % 10000
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env.update(IMAGEPORT_DATA_DIR=str(workdir), IMAGEPORT_DATABASE_URL=url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imageport", "api", "--port", str(port)],
        env=env,
        stdout=(workdir / "api.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("imageport api did not start")


def measure(base: str, paths: list[str], concurrency: int) -> list[float]:
    """Latencies of GET ``paths`` spread over ``concurrency`` threads."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(share: list[str]) -> None:
        mine = []
        with httpx.Client(base_url=base, timeout=60) as client:
            for path in share:
                started = time.perf_counter()
                answer = client.get(path)
                mine.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise SystemExit(f"{path}: {answer.status_code} {answer.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=run, args=(paths[i::concurrency],)) for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=160, help="per kind and concurrency")
    args = p.parse_args(argv)
    pg_server = os.environ.get(
        "IMAGEPORT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    db_url, db_name = fresh_database(pg_server)
    (ROOT / "build").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="imageport-catalog-", dir=ROOT / "build"))
    results: dict[str, object] = {"benchmark": "catalog", "images": args.images}
    proc = None
    try:
        database = Database(db_url)
        database.upgrade()
        database.dispose()
        started = time.monotonic()
        fill(db_url, args.images)
        log(f"{args.images} images recorded in {time.monotonic() - started:.0f}s")
        marker = deep_marker(db_url, args.images)
        proc, base = start_api(db_url, workdir)
        with httpx.Client(base_url=base) as client:
            ids = [i["id"] for i in client.get("/v2/images?limit=1000").json()["images"]]
        kinds = {
            "default_page": ["/v2/images"],
            "filter_property": ["/v2/images?os_distro=fedora"],
            "filter_tag": ["/v2/images?tag=gold"],
            "filter_visibility": ["/v2/images?visibility=public"],
            "sort_name": ["/v2/images?sort_key=name&sort_dir=asc"],
            "marker_90_percent_deep": [f"/v2/images?marker={marker}"],
            "show_one": [f"/v2/images/{i}" for i in ids],
        }
        table: dict[str, dict[str, dict[str, float]]] = {}
        for kind, pool in kinds.items():
            table[kind] = {}
            for concurrency in (1, 16):
                paths = [pool[i % len(pool)] for i in range(args.requests)]
                measure(base, paths[:8], concurrency)  # warm the caches and the pool
                began = time.monotonic()
                latencies = measure(base, paths, concurrency)
                seconds = time.monotonic() - began
                table[kind][f"c{concurrency}"] = {
                    "p50_ms": pct(latencies, 50),
                    "p99_ms": pct(latencies, 99),
                    "mean_ms": round(statistics.mean(latencies) * 1000, 1),
                    "requests_per_second": round(len(latencies) / seconds, 1),
                }
            log(f"{kind}: {table[kind]}")
        results["latency"] = table
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        drop_database(pg_server, db_name)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    results["machine"] = {"cpus": os.cpu_count()}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
