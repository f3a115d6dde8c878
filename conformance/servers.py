"""The two servers under comparison and the file server web-download fetches from.

* :func:`start_glance`: Glance 33.0.0 from ``.venv-glance`` under uWSGI, SQLite, two file
  stores (``store1`` the default, ``store2``), staging and tasks stores, the import methods
  glance-direct, web-download and copy-image, and Glance's ``context`` filter without
  keystonemiddleware: identity comes from the ``X-*`` headers and only with
  ``X-Identity-Status: Confirmed`` (the same contract as imageport's ``trusted-proxy``).
* :func:`start_imageport`: ``imageport api`` from this venv with ``auth_strategy =
  trusted-proxy``, the same two stores and the in-process worker (``memory://``).
* :class:`FileServer`: a threaded HTTP server on 127.0.0.1 serving the images web-download
  imports.

Everything listens on 127.0.0.1 only and lives in one temporary directory.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

HOST = "127.0.0.1"
#: Seconds a server may take to answer its first request.
START_TIMEOUT = 120.0


class HarnessError(RuntimeError):
    """The harness itself failed (a server did not start, a set-up step failed)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server process: its base URL, its log, and how to stop it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    start_seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 15 s) and wait for it."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for an error message."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise HarnessError(
                f"{server.name} exited with {server.process.returncode} while starting; "
                f"log {server.log}:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(server.url + path, timeout=5)
        except httpx.HTTPError:
            time.sleep(0.3)
            continue
        if response.status_code < 500:
            return
        time.sleep(0.3)
    server.stop()
    raise HarnessError(
        f"{server.name} did not answer {path} within {START_TIMEOUT:.0f} s; "
        f"log {server.log}:\n{server.log_tail()}"
    )


# --- Glance ------------------------------------------------------------------------------

#: Glance's own paste pipeline with one flavor added, ``trusted``: the ``context`` filter
#: (glance.api.middleware.context.ContextMiddleware: identity from X-Project-Id, X-Roles,
#: X-User-Id…, 401 unless X-Identity-Status is Confirmed) without keystonemiddleware's
#: ``authtoken`` in front of it. Everything else is as Glance 33.0.0 ships it.
GLANCE_PASTE = """\
[composite:glance-api-trusted]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
trusted = cors http_proxy_to_wsgi versionnegotiation osprofiler context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {workdir}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""

#: glance-api.conf. Policy: Glance 33's defaults (oslo.policy's enforce_new_defaults = True),
#: nothing overridden. web-download: Glance refuses loopback addresses unless the host is in
#: allowed_hosts, so 127.0.0.1 is listed, and only the file server's port is allowed.
GLANCE_CONF = """\
[DEFAULT]
bind_host = {host}
bind_port = {port}
enabled_backends = store1:file, store2:file
enabled_import_methods = [glance-direct, web-download, copy-image]
worker_self_reference_url = http://{host}:{port}
log_file = {workdir}/glance-api.log
debug = false
use_stderr = false

[database]
# A writer waits up to 30 s for another's lock instead of failing at once.
connection = sqlite:///{workdir}/glance.sqlite?timeout=30

[glance_store]
default_backend = store1

[store1]
filesystem_store_datadir = {workdir}/store1/

[store2]
filesystem_store_datadir = {workdir}/store2/

[os_glance_staging_store]
filesystem_store_datadir = {workdir}/staging/

[os_glance_tasks_store]
filesystem_store_datadir = {workdir}/tasks/

[paste_deploy]
config_file = {workdir}/glance-api-paste.ini
flavor = trusted

[import_filtering_opts]
allowed_schemes = [http,https]
allowed_hosts = [{host}]
allowed_ports = [{file_port}]

[oslo_concurrency]
lock_path = {workdir}/locks

[wsgi]
task_pool_threads = 4
"""


def start_glance(venv: Path, workdir: Path, file_port: int) -> Server:
    """Configure Glance in ``workdir``, migrate its database and start it under uWSGI.

    Raises:
        HarnessError: Glance is not installed in ``venv`` or did not start.
    """
    uwsgi, manage = venv / "bin" / "uwsgi", venv / "bin" / "glance-manage"
    if not uwsgi.is_file() or not manage.is_file():
        raise HarnessError(f"{venv} has no uwsgi or glance-manage: run scripts/conformance.sh")
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("store1", "store2", "staging", "tasks", "locks"):
        (workdir / sub).mkdir(exist_ok=True)
    port = free_port()
    values = {"host": HOST, "port": port, "workdir": workdir, "file_port": file_port}
    conf = workdir / "glance-api.conf"
    conf.write_text(GLANCE_CONF.format(**values))
    (workdir / "glance-api-paste.ini").write_text(GLANCE_PASTE.format(**values))
    # The image schema's extra properties, as every packaged Glance installs them.
    shutil.copy(Path(__file__).with_name("schema-image.json"), workdir / "schema-image.json")
    env = {**os.environ, "OS_GLANCE_CONFIG_DIR": str(workdir)}
    env.pop("PYTHONPATH", None)
    manage_log = workdir / "glance-manage.log"
    with manage_log.open("wb") as out:
        done = subprocess.run(
            [str(manage), "--config-file", str(conf), "db_sync"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=300,
        )
    if done.returncode != 0:
        tail = "\n".join(manage_log.read_text(errors="replace").splitlines()[-30:])
        raise HarnessError(f"glance-manage db_sync failed ({done.returncode}):\n{tail}")
    log = workdir / "uwsgi.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(uwsgi),
                "--http-socket",
                f"{HOST}:{port}",
                "--virtualenv",
                str(venv),
                "--module",
                "glance.wsgi.api:application",
                "--master",
                "--die-on-term",  # SIGTERM stops uWSGI (its default is to reload)
                "--need-app",
                "--lazy-apps",
                "--enable-threads",  # Glance runs imports in a thread pool of the worker
                "--processes",
                "1",
                "--threads",
                "4",
                "--buffer-size",
                "65535",
                # Glance's sample uwsgi.ini: chunked request bodies are passed through.
                "--http-auto-chunked",
                "--http-chunked-input",
                "--http-raw-body",
                # uWSGI's HTTP socket does not keep connections alive: say so to clients.
                "--add-header",
                "Connection: close",
                "--disable-logging",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("glance", f"http://{HOST}:{port}", process, log, workdir)
    _wait_ready(server, "/versions")
    server.start_seconds = time.monotonic() - began
    return server


# --- imageport ---------------------------------------------------------------------------


def start_imageport(workdir: Path, file_port: int) -> Server:
    """Start ``imageport api`` (this venv) with trusted-proxy identity and two file stores.

    Raises:
        HarnessError: the server did not start.
    """
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stores = {
        "store1": {"kind": "file", "path": str(workdir / "store1")},
        "store2": {"kind": "file", "path": str(workdir / "store2")},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env.update(
        {
            "IMAGEPORT_AUTH_STRATEGY": "trusted-proxy",
            "IMAGEPORT_DATA_DIR": str(workdir / "data"),
            "IMAGEPORT_BROKER_URL": "memory://",
            "IMAGEPORT_STORES": json.dumps(stores),
            "IMAGEPORT_DEFAULT_STORE": "store1",
            "IMAGEPORT_WEB_DOWNLOAD_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8"]),
            "IMAGEPORT_WEB_DOWNLOAD_PORTS": json.dumps([file_port]),
            "IMAGEPORT_LOG_LEVEL": "warning",
        }
    )
    imageport = Path(sys.executable).with_name("imageport")
    log = workdir / "imageport-api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(imageport), "api", "--host", HOST, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("imageport", f"http://{HOST}:{port}", process, log, workdir)
    _wait_ready(server, "/healthz")
    server.start_seconds = time.monotonic() - began
    return server


# --- the file server web-download reads --------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        """No access log on stderr."""


class FileServer:
    """Serves one directory over HTTP on 127.0.0.1 from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    """A temporary directory for both servers, removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="imageport-conformance-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
