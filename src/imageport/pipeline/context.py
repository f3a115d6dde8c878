"""The job context stages work on, and the services they are given."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import TypeVar

import httpcore
import httpx
from sqlalchemy.orm import Session

from imageport.config import Settings
from imageport.errors import JobInterrupted
from imageport.pipeline.data.staging_area import StagingArea
from imageport.pipeline.observer import JobObserver, NullObserver
from imageport.pipeline.outputs import StageOutput
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.safety.pinning import PinnedTransport
from imageport.pipeline.safety.qemu import Limits, QemuImg
from imageport.pipeline.safety.urlpolicy import Resolver, UrlPolicy, system_resolver
from imageport.records import Database, leases
from imageport.stores import Store, build_staging_store, build_stores

#: Reports bytes done and, when known, bytes total. Raises
#: :class:`~imageport.errors.JobInterrupted` when the job must stop (cancel, shutdown, a lost
#: lease, a stall); every loop of a stage calls it, so the stop reaches the stage at once.
Progress = Callable[[int, int | None], None]

#: The names of a job's files in its private directories.
STAGED_NAME = "source"  # the staged source, in the task's staging directory
CONVERTED_NAME = "converted"  # the conversion output, in the task's scratch directory

OutputT = TypeVar("OutputT", bound=StageOutput)


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
    #: Told about every job, stage, retry and takeover (worker processes count them).
    observer: JobObserver = field(default_factory=NullObserver)

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
    #: The outputs of the stages finished so far, by stage name.
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    progress: Progress = field(default=lambda _done, _total: None)
    #: The lease owner running the job; every record the job writes is fenced by it.
    owner: str | None = None
    #: Whether an admin had asked to cancel when the job was picked up (read with the lease).
    cancel_requested: bool = False
    #: The last attempt number of each stage so far (the lease holder numbers new runs).
    attempts: dict[str, int] = field(default_factory=dict)

    def output(self, kind: type[OutputT]) -> OutputT:
        """The recorded output of the stage that produces ``kind``.

        Raises:
            LookupError: that stage has not finished (a bug in the stage order).
        """
        found = self.maybe_output(kind)
        if found is None:
            raise LookupError(f"stage {kind.STAGE} has no {kind.__name__} for this job")
        return found

    def maybe_output(self, kind: type[OutputT]) -> OutputT | None:
        """The recorded output of the stage that produces ``kind``, or None."""
        found = self.outputs.get(kind.STAGE)
        return found if isinstance(found, kind) else None

    @property
    def target_store_ids(self) -> list[str]:
        """The stores this job writes to: the request's, else the default store."""
        return list(self.request.stores) or [self.settings.default_store]

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

    @property
    def staged_path(self) -> Path:
        """The staged file (its directory may be on another host than the one recorded)."""
        return self.work_dir / STAGED_NAME

    @property
    def converted_path(self) -> Path:
        """The conversion output, in this host's scratch directory."""
        return self.scratch_dir / CONVERTED_NAME
