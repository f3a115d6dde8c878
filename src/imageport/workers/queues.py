"""What waits and what runs: the broker's queue depth and each project's imports.

Read by ``imageport queue`` and by the worker group's ``/metrics`` at scrape time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imageport.config import Settings
from imageport.records import Task, TaskStatus
from imageport.workers.actors import IMPORT_QUEUE
from imageport.workers.broker import amqp_connection
from imageport.workers.fairshare import AT_CAPACITY

#: The error code of a pending task handed back for lack of space (``pipeline.data.space``).
WAITING_FOR_SPACE = "waiting_for_space"


@dataclass
class ProjectQueue:
    """One project's imports now: queued (of which waiting for capacity or space), running."""

    project: str
    queued: int = 0
    running: int = 0
    waiting_for_capacity: int = 0
    waiting_for_space: int = 0

    def as_dict(self) -> dict[str, int | str]:
        """JSON-ready."""
        return asdict(self)


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the import queue; None when the broker cannot tell."""
    return _depth(settings, (IMPORT_QUEUE,))


def queued_messages(settings: Settings) -> int | None:
    """Messages not yet taken by a worker: the import queue and its delay queue.

    (Messages a worker prefetched or holds until their delay ends are not counted.)
    """
    return _depth(settings, (IMPORT_QUEUE, f"{IMPORT_QUEUE}.DQ"))


def _depth(settings: Settings, queues: tuple[str, ...]) -> int | None:
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_depth(url, queues)
    if url.startswith(("amqp://", "amqps://")):
        return _amqp_depth(url, queues)
    return None


def _redis_depth(url: str, queues: tuple[str, ...]) -> int | None:
    import redis  # noqa: PLC0415 - only the Redis broker needs it

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        # dramatiq keeps a queue's message ids in the list ``dramatiq:<queue>``.
        return sum(int(client.llen(f"dramatiq:{queue}")) for queue in queues)
    except redis.RedisError:
        return None
    finally:
        client.close()


def _amqp_depth(url: str, queues: tuple[str, ...]) -> int | None:
    import pika.exceptions  # noqa: PLC0415 - only the RabbitMQ broker needs it

    try:
        connection = amqp_connection(url, timeout=2)
    except ConnectionError:
        return None
    try:
        total = 0
        for queue in queues:
            try:
                # A passive declare reads the queue's ready messages without creating it.
                frame = connection.channel().queue_declare(queue=queue, passive=True)
                total += int(frame.method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # no such queue yet: nothing was ever queued there
    except (pika.exceptions.AMQPError, OSError):
        return None
    else:
        return total
    finally:
        if connection.is_open:
            connection.close()


def project_queues(session: Session) -> list[ProjectQueue]:
    """Queued and running imports by project (owner; ``""`` for tasks without one)."""
    rows = session.execute(
        select(Task.owner, Task.status, Task.error_code, func.count())
        .where(Task.status.in_([TaskStatus.PENDING.value, TaskStatus.PROCESSING.value]))
        .group_by(Task.owner, Task.status, Task.error_code)
    )
    projects: dict[str, ProjectQueue] = {}
    for owner, status, code, count in rows:
        entry = projects.setdefault(owner or "", ProjectQueue(project=owner or ""))
        if status == TaskStatus.PROCESSING:
            entry.running += count
            continue
        entry.queued += count
        if code == AT_CAPACITY:
            entry.waiting_for_capacity += count
        elif code == WAITING_FOR_SPACE:
            entry.waiting_for_space += count
    return sorted(projects.values(), key=lambda p: p.project)
