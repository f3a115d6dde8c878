"""/readyz's broker check on each broker: it really talks to Redis or RabbitMQ, briefly.

``imageport worker`` and ``imageport api`` both answer /readyz from ``health.readiness``
(test_workers.py checks the worker group's endpoint on both brokers while they answer). Here:
a broker that answers is ``ok``; one that is down, silent or refuses the login is
``unreachable`` within the probe's timeout, and the API's /readyz says 503.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from services_support import free_port

from imageport.api.app import create_app
from imageport.config import Settings
from imageport.health import BROKER_PROBE_TIMEOUT, readiness

#: Seconds a failing check may take beyond the probe timeout (interpreter, loaded CI box).
SLACK = 1.5


def _url(kind: str, port: int) -> str:
    if kind == "redis":
        return f"redis://127.0.0.1:{port}/0"
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def _broker_check(tmp_path, url: str) -> tuple[str, float]:
    settings = Settings(data_dir=tmp_path / "data", broker_url=url)
    started = time.monotonic()
    check = readiness(settings).checks["broker"]
    return check, time.monotonic() - started


def _kind(broker_url: str) -> str:
    return "redis" if broker_url.startswith("redis") else "rabbitmq"


def test_a_broker_that_answers_is_ready(tmp_path, broker_url):
    assert _broker_check(tmp_path, broker_url)[0] == "ok"


def test_a_stopped_broker_is_not_ready(tmp_path, broker_url):
    check, elapsed = _broker_check(tmp_path, _url(_kind(broker_url), free_port()))
    assert check.startswith("unreachable: ")
    assert elapsed < BROKER_PROBE_TIMEOUT + SLACK


def test_a_silent_broker_is_not_ready_within_the_timeout(tmp_path, broker_url):
    # A port that takes connections (the kernel's backlog) and never answers: a hung broker.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = _url(_kind(broker_url), silent.getsockname()[1])
        check, elapsed = _broker_check(tmp_path, url)
    assert check.startswith("unreachable: ")
    assert elapsed < BROKER_PROBE_TIMEOUT + SLACK


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
def test_a_refused_amqp_login_is_not_ready(tmp_path, broker_url):
    wrong = broker_url.replace("guest:guest@", "guest:not-the-password@", 1)
    assert wrong != broker_url
    check, _ = _broker_check(tmp_path, wrong)
    assert check.startswith("unreachable: ")


def _api_readyz(tmp_path, broker_url: str) -> httpx.Response:
    """GET /readyz of an ``imageport api`` app in this process (start-up and shutdown run)."""
    app = create_app(Settings(data_dir=tmp_path / "data", broker_url=broker_url))

    async def get() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                return await http.get("/readyz")

    return asyncio.run(get())


def test_the_api_readyz_follows_the_broker(tmp_path, broker_url):
    up = _api_readyz(tmp_path, broker_url)
    assert (up.status_code, up.json()["checks"]["broker"]) == (200, "ok")
    down = _api_readyz(tmp_path, _url(_kind(broker_url), free_port()))
    assert down.status_code == 503
    assert down.json()["status"] == "unavailable"
    assert down.json()["checks"]["broker"].startswith("unreachable: ")
