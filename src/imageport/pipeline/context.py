"""The job context stages work on, and the services they are given."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpcore
import httpx
from sqlalchemy.orm import Session

from imageport.config import Settings
from imageport.errors import JobInterrupted
from imageport.pipeline.pinning import PinnedTransport
from imageport.pipeline.qemu import Limits, QemuImg
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stagingarea import StagingArea
from imageport.pipeline.urlpolicy import Resolver, UrlPolicy, system_resolver
from imageport.records import Database, leases
from imageport.stores import Store, build_staging_store, build_stores

#: Reports bytes done and, when known, bytes total; returns False when the job must stop.
Progress = Callable[[int, int | None], bool]


@dataclass
class Services:
    """The I/O clients a worker process shares between jobs; built after fork."""

    settings: Settings
    db: Database
    stores: dict[str, Store]
    qemu: QemuImg
    http: httpx.Client
    #: Where staged data lives (a local or shared directory, and maybe an S3 bucket).
    staging: StagingArea
    #: Monotonic time after which running jobs must checkpoint and stop (set on SIGTERM).
    shutdown_at: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, db: Database | None = None) -> Services:
        """Create every client from settings (the database is migrated by the caller)."""
        return cls(
            settings=settings,
            db=db or Database(settings.resolved_database_url),
            stores=build_stores(settings),
            qemu=cls.build_qemu(settings),
            http=build_http_client(settings),
            staging=StagingArea(
                settings.resolved_staging_dir,
                build_staging_store(settings),
                chunk_size=settings.chunk_size,
            ),
        )

    @staticmethod
    def build_qemu(settings: Settings) -> QemuImg:
        """The qemu-img wrapper with the limits from settings."""
        return QemuImg(
            binary=settings.qemu_img_path,
            info_limits=Limits(
                address_space=settings.qemu_address_space_bytes,
                cpu_seconds=settings.qemu_cpu_seconds,
                timeout=settings.qemu_info_timeout_seconds,
            ),
            convert_timeout=settings.qemu_timeout_seconds,
        )

    def close(self) -> None:
        """Release connections."""
        self.http.close()
        self.db.dispose()


def build_http_client(
    settings: Settings,
    *,
    resolver: Resolver = system_resolver,
    ssl_context: ssl.SSLContext | None = None,
    network_backend: httpcore.NetworkBackend | None = None,
) -> httpx.Client:
    """The client web-download uses: SSRF-checked and address-pinned, no proxies, no decoding.

    Args:
        settings: ``web_download_*`` allow-lists, ``http_*`` timeouts and deadline.
        resolver: name resolution for the URL check (tests pass a stub).
        ssl_context: TLS trust (tests pass one trusting their own certificate).
        network_backend: where sockets come from (tests record connect targets).
    """
    transport = PinnedTransport(
        UrlPolicy.from_settings(settings),
        resolver=resolver,
        ssl_context=ssl_context,
        network_backend=network_backend,
        default_deadline=settings.http_deadline_seconds,
    )
    return httpx.Client(
        transport=transport,  # every request is vetted and pinned there, redirects included
        timeout=httpx.Timeout(
            settings.http_read_timeout, connect=settings.http_connect_timeout, pool=10.0
        ),
        follow_redirects=False,  # redirects are followed by hand so each hop is checked
        trust_env=False,  # never pick up proxies or netrc from the worker's environment
        headers={"Accept-Encoding": "identity", "User-Agent": "imageport"},
        # The client is shared by every job of a worker: keep no cookies from one to the next.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


@dataclass
class JobContext:
    """One import as the stages see it: ids, request, work directory, earlier outputs."""

    task_id: str
    image_id: str
    request: ImportRequest
    settings: Settings
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: Progress = field(default=lambda _done, _total: True)
    #: The lease owner running the job; every record the job writes is fenced by it.
    owner: str | None = None
    #: Whether an admin had asked to cancel when the job was picked up (read with the lease).
    cancel_requested: bool = False
    #: The last attempt number of each stage so far (the lease holder numbers new runs).
    attempts: dict[str, int] = field(default_factory=dict)

    def next_attempt(self, stage: str) -> int:
        """Count one more attempt at ``stage`` and return its number."""
        self.attempts[stage] = self.attempts.get(stage, 0) + 1
        return self.attempts[stage]

    def fence(self, session: Session) -> None:
        """Raise JobInterrupted(lease_lost) unless this job still holds the task's lease.

        Called inside the transaction that records a result, so a worker whose lease was
        taken over (it stalled, or its heartbeat could not reach the database) can never
        record anything for a job another worker now runs.
        """
        if self.owner is not None and not leases.holds(session, self.task_id, self.owner):
            raise JobInterrupted(JobInterrupted.LEASE_LOST)

    @property
    def work_dir(self) -> Path:
        """This task's private staging directory (relative names resolve only inside it)."""
        return self.settings.resolved_staging_dir / self.task_id

    def expires_at(self) -> datetime:
        """When a finished task may be forgotten (Glance's task_time_to_live)."""
        return datetime.now(UTC) + timedelta(hours=self.settings.task_ttl_hours)

    @property
    def scratch_dir(self) -> Path:
        """This task's private scratch directory for conversion output."""
        return self.settings.resolved_scratch_dir / self.task_id
