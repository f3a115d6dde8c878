"""Readiness and liveness checks shared by ``imageport worker`` and ``imageport api``.

Ready means every dependency a job needs answers: the database (``SELECT 1``), the broker
(Redis ``PING``; for RabbitMQ an AMQP connection opened and closed, with pika as dramatiq's
RabbitMQ broker uses it; nothing to check for the in-process broker) and the staging
directory (writable; with an ``s3://`` staging_url, the bucket answers too). Live means the
process is serving and its workers are alive.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from sqlalchemy import create_engine, text

from imageport.config import Settings
from imageport.workers.broker import amqp_connection

#: Seconds the broker check may take to connect and answer: the shipped readiness probes
#: give the whole of /readyz (database, broker, staging) 5 s.
BROKER_PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Health:
    """The outcome of the readiness checks: ``ok`` and one message per failed check."""

    ok: bool
    checks: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON body of a health endpoint."""
        return {"status": "ok" if self.ok else "unavailable", "checks": self.checks}


def readiness(settings: Settings) -> Health:
    """Check the database, the broker and the staging directory."""
    checks = {
        "database": _check_database(settings),
        "broker": _check_broker(settings),
        "staging": _check_staging(settings),
    }
    return Health(ok=all(v == "ok" for v in checks.values()), checks=checks)


def _check_database(settings: Settings) -> str:
    engine = create_engine(settings.resolved_database_url, pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
        return f"unreachable: {type(exc).__name__}"
    finally:
        engine.dispose()
    return "ok"


def _check_broker(settings: Settings) -> str:
    url = settings.broker_url
    if url.startswith("memory://"):
        return "ok"
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis  # noqa: PLC0415 - only the Redis broker needs it

        client = redis.Redis.from_url(
            url, socket_timeout=BROKER_PROBE_TIMEOUT, socket_connect_timeout=BROKER_PROBE_TIMEOUT
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            return f"unreachable: {type(exc).__name__}"
        finally:
            client.close()
        return "ok"
    return _check_amqp(url)  # amqp:// or amqps://: build_broker refuses any other scheme


def _check_amqp(url: str) -> str:
    """Open and close one AMQP connection (handshake and login included), or say why not."""
    try:
        amqp_connection(url, BROKER_PROBE_TIMEOUT).close()
    except ConnectionError as exc:
        return f"unreachable: {exc}"
    return "ok"


def _check_staging(settings: Settings) -> str:
    staging = settings.resolved_staging_dir
    try:
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=staging, prefix=".health-"):
            pass
    except OSError as exc:
        return f"not writable: {os.strerror(exc.errno or 0)}"
    if settings.remote_staging is not None:
        return _check_remote_staging(settings)
    return "ok"


#: A key no object ever has (the nil UUID): a HEAD of it proves endpoint, bucket and credentials.
_PROBE_KEY = "00000000-0000-0000-0000-000000000000.health"


def _check_remote_staging(settings: Settings) -> str:
    from imageport.errors import PipelineError  # noqa: PLC0415 - keeps this module light
    from imageport.stores import build_staging_store  # noqa: PLC0415 - imports boto3

    store = build_staging_store(settings)
    assert store is not None  # noqa: S101 - called only with an s3:// staging_url
    try:
        store.exists(store.url_for(_PROBE_KEY))
    except PipelineError as exc:
        return f"remote staging unreachable: {exc}"
    return "ok"
