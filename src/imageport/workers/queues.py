"""Queue depth as the broker reports it (for metrics and ``imageport`` status)."""

from __future__ import annotations

from imageport.config import Settings
from imageport.workers.actors import IMPORT_QUEUE


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the import queue; None when the broker cannot tell."""
    url = settings.broker_url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis  # noqa: PLC0415 - only the Redis broker needs it

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        # dramatiq keeps a queue's message ids in the list ``dramatiq:<queue>``.
        return int(client.llen(f"dramatiq:{IMPORT_QUEUE}"))
    except redis.RedisError:
        return None
    finally:
        client.close()
