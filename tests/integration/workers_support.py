"""Helpers for tests that run `imageport worker` processes against Redis and PostgreSQL."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

IMAGEPORT = [sys.executable, "-m", "imageport"]


def submit(env: dict[str, str], source: object, *extra: str, owner: str | None = None) -> dict:
    """What `imageport import SOURCE --no-wait` does, in-process (saves a CLI start per job)."""
    from imageport.config import Settings  # noqa: PLC0415
    from imageport.pipeline.context import Services  # noqa: PLC0415
    from imageport.pipeline.methods.submit import submit_import  # noqa: PLC0415
    from imageport.pipeline.request import ImportRequest  # noqa: PLC0415
    from imageport.workers.actors import declare_actors  # noqa: PLC0415
    from imageport.workers.broker import build_broker  # noqa: PLC0415

    options = dict(zip(extra[::2], extra[1::2], strict=True))
    settings = Settings(
        data_dir=Path(env["IMAGEPORT_DATA_DIR"]),
        database_url=env["IMAGEPORT_DATABASE_URL"],
        broker_url=env["IMAGEPORT_BROKER_URL"],
    )
    services = Services.from_settings(settings)
    broker = build_broker(settings)
    try:
        url = str(source).startswith("http")
        request = ImportRequest(
            method="web-download" if url else "local-file",
            source=str(source),
            disk_format=options.get("--disk-format", "qcow2"),
            target_format=options.get("--target-format"),
            checksum=options.get("--checksum"),
        )
        submitted = submit_import(services, request, owner=owner)
        declare_actors(broker, lambda: services).enqueue_import(submitted.task_id)
        return {"image_id": submitted.image_id, "task_id": submitted.task_id}
    finally:
        broker.close()
        services.close()


class Worker:
    """An `imageport worker` process group started for a test."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [*IMAGEPORT, "worker", *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: kill -9 reaches every worker process
        )

    def kill9(self) -> None:
        """Kill the supervisor and every worker process at once, as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM the supervisor (it forwards to its workers) and wait for its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def worker_pids(self) -> list[int]:
        """The worker processes of the group (not the supervisor's helpers)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = []
        for pid in map(int, children.split()):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
        return pids

    def kill9_supervisor(self) -> None:
        """SIGKILL the supervisor alone; its worker processes get no signal from us."""
        self.proc.kill()
        self.proc.wait(10)

    def process_cpus(self) -> list[set[int]]:
        """The CPUs each worker process (not the supervisor's helpers) may run on."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        result = []
        for pid in map(int, children.split()):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    result.append(set(os.sched_getaffinity(pid)))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
        return result

    def stop(self) -> None:
        """Clean up, whatever state the process is in (its workers too, even orphaned)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group outlives a dead leader
        self.proc.wait(10)
        if not self._out.closed:
            self._out.close()


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an imageport command."""
    proc = subprocess.run(
        [*IMAGEPORT, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"imageport {args} exited {proc.returncode}: {proc.stderr}")
    return proc


def cli_json(env: dict[str, str], *args: str) -> dict:
    """Run an imageport command that prints JSON."""
    return json.loads(cli(env, *args, "--json").stdout)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` at ``rate`` bytes per second, so a download lasts long enough to act."""

    body = b""
    rate = 1024 * 1024

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        step = max(1, self.rate // 20)
        try:
            for start in range(0, len(self.body), step):
                self.wfile.write(self.body[start : start + step])
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start ``handler`` on 127.0.0.1 in a thread; returns the server and its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
