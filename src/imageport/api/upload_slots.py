"""Uploads in flight: their own threads, and a cap in all and per project.

An upload (``PUT /stage``, ``PUT /file``) is scanned in a thread that waits for the client
between two pieces of the body, for as long as the client takes. Run on anyio's default
thread limiter (40 threads, shared with every synchronous route and dependency), 40 slow or
idle uploads would leave none for anything else: not even ``/healthz`` would answer. So
uploads get :attr:`UploadSlots.limiter`, a limiter of their own, and the default one keeps
serving everything else.

Uploads beyond ``max_concurrent_uploads`` (all projects) or ``max_concurrent_uploads_per_project``
are refused at once rather than queued behind the limiter, where they would hold their
connection and wait without a word: 503 ``too_many_uploads`` when the server is full, 413
``too_many_uploads`` when the caller's project is (Glance answers 413 to a project over its
quota). Both carry ``Connection: close``: the body the client is sending is not read.

The counts are per API process (each process of a multi-process deployment has its own).
The per-project cap applies to callers with a project; noauth's administrator has none and
meets only the global cap. The slot is held while the body is received and scanned, not while
``PUT /file`` then waits for its import.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import anyio
from fastapi import Depends, Request

from imageport.access.identity import Identity
from imageport.api.errors import ApiError
from imageport.config import Settings

#: The ``error_code`` of a refused upload.
REFUSED_CODE = "too_many_uploads"
#: Seconds a client told the server is full should wait before trying again.
RETRY_AFTER_SECONDS = 10


class UploadSlots:
    """Counts uploads in flight (one event loop: no lock needed) and owns their threads."""

    def __init__(self, total: int | None, per_project: int | None) -> None:
        """Caps of concurrent uploads in all and per project (None: no cap).

        Args:
            total: uploads at once in this process.
            per_project: uploads at once of one project.
        """
        self.total = total
        self.per_project = per_project
        # Never waited on: hold() refuses an upload before the limiter could be full.
        self.limiter = anyio.CapacityLimiter(math.inf if total is None else total)
        self._active = 0
        self._by_project: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadSlots:
        """The caps ``max_concurrent_uploads`` and ``max_concurrent_uploads_per_project``."""
        return cls(settings.max_concurrent_uploads, settings.max_concurrent_uploads_per_project)

    @property
    def active(self) -> int:
        """Uploads in flight."""
        return self._active

    @contextmanager
    def hold(self, who: Identity) -> Iterator[None]:
        """Count one upload of ``who`` while the block runs; call from the event loop.

        Raises:
            ApiError: 503 when the server has ``total`` uploads in flight, 413 when the
                caller's project has ``per_project``.
        """
        if self.total is not None and self._active >= self.total:
            raise ApiError(
                503,
                f"the server is receiving {self._active} uploads, its limit "
                "(max_concurrent_uploads); send the data again in a moment",
                code=REFUSED_CODE,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
            )
        project = who.project_id
        if project is not None and self.per_project is not None:
            if self._by_project[project] >= self.per_project:
                raise ApiError(
                    413,
                    f"project {project} is sending {self._by_project[project]} uploads, its "
                    "limit (max_concurrent_uploads_per_project); send the data again once "
                    "one of them has finished",
                    code=REFUSED_CODE,
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
                )
            self._by_project[project] += 1
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if project is not None and self.per_project is not None:
                self._by_project[project] -= 1
                if not self._by_project[project]:
                    del self._by_project[project]  # no entry per project ever seen


async def slots_of(request: Request) -> UploadSlots:
    """The app's :class:`UploadSlots` (made by ``create_app``)."""
    # async: no thread-pool hand-off per request (see context_of in imageport.api.deps)
    slots: UploadSlots = request.app.state.upload_slots
    return slots


#: Parameter type of a route that receives an upload.
Slots = Annotated[UploadSlots, Depends(slots_of)]
