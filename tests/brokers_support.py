"""RabbitMQ for the tests: the machine's server, or a throwaway ``rabbitmq-server`` node.

A throwaway node is a second, non-conflicting node beside any system one: its own node name,
AMQP port, distribution port, database and log directories, and an erlang cookie in its own
HOME. It keeps its database between :meth:`RabbitServer.stop` and :meth:`RabbitServer.start`,
so durable queues and persistent messages survive a restart, as on a real deployment. It
starts in about 5 s on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's, without the su wrapper
#: Queues dramatiq declares for imageport's actors (the queue, its delay and dead-letter queues).
IMPORT_QUEUES = ("imports", "imports.DQ", "imports.XQ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rabbitmq_binary() -> str | None:
    """The rabbitmq-server start script, if installed."""
    if Path(RABBITMQ_SERVER).is_file():
        return RABBITMQ_SERVER
    return shutil.which("rabbitmq-server")


def amqp_answers(url: str, timeout: float = 3) -> bool:
    """Whether an AMQP server accepts a connection at ``url``."""
    import pika  # noqa: PLC0415
    import pika.exceptions  # noqa: PLC0415

    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


def purge_queues(url: str) -> None:
    """Delete imageport's queues, so a test starts with none of another test's messages."""
    import pika  # noqa: PLC0415

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in IMPORT_QUEUES:
            channel.queue_delete(queue=queue)
    finally:
        connection.close()


class RabbitServer:
    """A private rabbitmq-server node on free ports (restartable, data kept until close)."""

    def __init__(self) -> None:
        self.binary = rabbitmq_binary()
        self.port = free_port()
        self.dist_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="imageport-rabbit-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        empty = self.root / "none"
        empty.touch()
        return {
            "PATH": "/usr/sbin:/usr/bin:/bin",
            "HOME": str(self.root),  # the node's erlang cookie is created here
            "RABBITMQ_NODENAME": f"imageport-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(empty),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
        }

    def start(self, timeout: float = 60) -> None:
        assert self.binary
        self.proc = subprocess.Popen(
            [self.binary],
            env=self._env(),
            stdout=(self.root / "out.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches beam and its helpers
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited; see {self.root}/out.log")
            if amqp_answers(self.url, timeout=1):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rabbitmq-server did not answer within {timeout}s")

    def stop(self) -> None:
        """Kill the node at once (as a crash would); its database stays for the next start."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
