"""Run ``imageport api`` as a subprocess on 127.0.0.1 for the API tests."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

START_TIMEOUT = 60.0  # seconds for the server to answer /healthz

#: What an authenticating proxy adds in front of an API with auth_strategy trusted-proxy.
CONFIRMED = {"X-Identity-Status": "Confirmed"}
#: Asks for errors in Glance's JSON shape (without it the API answers text or HTML, as Glance
#: does).
JSON_ERRORS = {"Accept": "application/json"}
#: The only Content-Type PUT /file and PUT /stage accept, as in Glance (none at all is a 415).
OCTETS = {"Content-Type": "application/octet-stream"}
#: An administrator, as a trusted proxy confirms one.
TRUSTED_ADMIN = {**CONFIRMED, "X-Project-Id": "admin-project", "X-Roles": "admin,member,reader"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiServer:
    """One ``imageport api`` process and its base URL."""

    def __init__(self, data_dir: Path, **settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
        env["IMAGEPORT_DATA_DIR"] = str(data_dir)
        env["IMAGEPORT_PROGRESS_INTERVAL_SECONDS"] = "0.05"
        env["IMAGEPORT_MAX_ATTEMPTS"] = "1"
        for key, value in settings.items():
            env[f"IMAGEPORT_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        self.log = (data_dir.parent / f"api-{self.port}.log").open("wb")
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imageport", "api", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"imageport api exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("imageport api did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextlib.contextmanager
def api_server(data_dir: Path, **settings):
    server = ApiServer(data_dir, **settings)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def file_server(root: Path):
    """Serve ``root`` over HTTP on 127.0.0.1; yield the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def wait_status(client: httpx.Client, image_id: str, wanted: str, timeout: float = 60.0) -> dict:
    """Poll the image until its status is ``wanted`` (or fail with the last record)."""
    deadline = time.monotonic() + timeout
    image: dict = {}
    while time.monotonic() < deadline:
        image = client.get(f"/v2/images/{image_id}").json()
        if image["status"] == wanted:
            return image
        if (
            image.get("os_glance_failed_import")
            and image["status"] == "queued"
            and wanted != "queued"
        ):
            break
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} is not {wanted}: {image}")


def api_client(base_url: str, headers: dict[str, str] | None = None, **options) -> httpx.Client:
    """An httpx client of the API that asks for JSON errors; ``headers`` come on top."""
    return httpx.Client(base_url=base_url, headers={**JSON_ERRORS, **(headers or {})}, **options)
