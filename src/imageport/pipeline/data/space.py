"""Space admission: a step starts only where its bytes fit, else the job is handed back.

Before the stage step writes the source into staging, and before the convert step writes its
output into scratch, the worker compares what the step will write, plus a safety margin
(``space_margin_ratio`` of it and ``space_margin_bytes``), with the file system's free space.
When it does not fit, :class:`SpaceWait` is raised: the job is not failed but handed back
(``pipeline.failures.wait_for_space``), pending and marked ``waiting_for_space``, to be
offered to a worker again after ``space_retry_seconds`` — another host may have room, or
this one may have freed some. After ``space_wait_seconds`` of this, the job fails with
``no_space`` and a message naming the size it needed.

What a step will write is counted at its upper bound: the source's length for staging (the
``Content-Length`` or the file size), the image's virtual size for a conversion (a raw
output allocates at most that, however sparse; compressed qcow2 clusters can expand to it).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from imageport.config import Settings
from imageport.errors import NoSpace

#: Where free space is read from; tests put a fake here (the default reads statvfs).
FreeSpace = Callable[[Path], int]


class SpaceWait(NoSpace):
    """The step does not fit here now: hand the job back instead of failing it."""

    code = "waiting_for_space"

    def __init__(self, message: str, *, needed: int, where: Path) -> None:
        super().__init__(message)
        self.needed = needed
        self.where = where


def free_bytes(where: Path) -> int:
    """Bytes an unprivileged writer may still use on ``where``'s file system."""
    return shutil.disk_usage(where).free


def required(size: int, settings: Settings) -> int:
    """``size`` plus the safety margin from settings."""
    return size + math.ceil(size * settings.space_margin_ratio) + settings.space_margin_bytes


def admit(
    where: Path,
    size: int | None,
    settings: Settings,
    step: str,
    *,
    free: FreeSpace = free_bytes,
) -> None:
    """Return when ``size`` bytes (plus the margin) fit in ``where``; unknown sizes pass.

    Raises:
        SpaceWait: they do not fit now.
    """
    if size is None:
        return
    needed = required(size, settings)
    available = free(where)
    if needed > available:
        raise SpaceWait(
            f"{step} needs {_human(needed)} ({size} bytes plus the margin) in {where}, which "
            f"has {_human(available)} free: free space there, or give it more room",
            needed=needed,
            where=where,
        )


def check_space(where: Path, needed: int | None) -> None:
    """Fail with NoSpace when ``needed`` bytes (if known) do not fit where they would land.

    For writers that cannot hand their job back (an API upload in progress).
    """
    free = free_bytes(where)
    if needed is not None and needed > free:
        raise NoSpace(
            f"staging has {free} bytes free but the source is {needed} bytes: "
            f"free space in {where} or move staging_dir"
        )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable; keeps the type checker content
