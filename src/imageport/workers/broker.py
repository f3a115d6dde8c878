"""Build the dramatiq broker explicitly from settings, in this one module.

Nothing here touches dramatiq's global broker: actors are declared against the broker object
that :func:`build_broker` returns, so tests, the embedded mode and real workers each get exactly
the broker they asked for. dramatiq's ``TimeLimit`` (10 minutes by default) and ``Retries``
middleware are left out: imports take longer than that, and the runner decides retries itself
(transient errors only, with backoff).
"""

from __future__ import annotations

from typing import Any

from dramatiq import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Middleware,
    Pipelines,
    ShutdownNotifications,
)

from imageport.config import Settings
from imageport.errors import ConfigurationError


def _middleware() -> list[Middleware]:
    return [AgeLimit(), ShutdownNotifications(), Callbacks(), Pipelines()]


def build_broker(settings: Settings) -> Broker:
    """The broker named by ``broker_url``: ``memory://``, ``redis://…`` or ``amqp://…``.

    Raises:
        ConfigurationError: for any other URL scheme.
    """
    url = settings.broker_url
    if url.startswith("memory://"):
        broker = StubBroker(middleware=_middleware())
        broker.emit_after("process_boot")
        return broker
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415 - optional backend

        return RedisBroker(url=url, middleware=_middleware())  # type: ignore[no-untyped-call]
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415 - optional backend

        return RabbitmqBroker(url=url, middleware=_middleware())
    raise ConfigurationError(
        f"broker_url {url!r} is not supported: use memory://, redis://host:port/db or amqp://"
    )


def amqp_connection(url: str, timeout: float) -> Any:  # noqa: ANN401 - pika is untyped
    """A blocking pika connection to ``url``: one attempt, the whole set-up within ``timeout``.

    For the short looks outside the broker (readiness, queue depth): TCP connect, TLS, the
    AMQP handshake and the login must all be done in ``timeout`` seconds, or it gives up.

    Raises:
        ConnectionError: the broker cannot be reached, does not answer in time or refuses the
            login; the message names pika's exception (which has no single root: a handshake
            timeout is not an ``AMQPError``).
    """
    import pika  # noqa: PLC0415 - only the RabbitMQ broker needs it
    import pika.adapters.utils.connection_workflow as workflow  # noqa: PLC0415
    import pika.exceptions  # noqa: PLC0415

    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.connection_attempts = 1
    params.retry_delay = 0
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, workflow.AMQPConnectorException, OSError) as exc:
        raise ConnectionError(type(exc).__name__) from exc
