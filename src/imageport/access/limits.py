"""Glance's unified limits: the names, and who decides whether a request still fits.

A :class:`LimitEnforcer` is asked before an action that consumes a limited resource, with the
deltas the action adds and a callback that reads the project's current usage; it raises
:class:`~imageport.errors.OverQuota` when usage plus delta would pass a limit. Limits come from
the settings (:mod:`imageport.access.quotas`) or, with ``use_keystone_limits``, from
Keystone's registered and project limits (:mod:`imageport.access.keystone_limits`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

IMAGE_SIZE_TOTAL = "image_size_total"  # MiB of image data a project stores
IMAGE_STAGE_TOTAL = "image_stage_total"  # MiB of staged uploads a project holds
IMAGE_COUNT_TOTAL = "image_count_total"  # images a project owns
IMAGE_COUNT_UPLOADING = "image_count_uploading"  # uploads and imports a project runs at once
#: Every unified limit imageport enforces, as Glance names them.
LIMIT_NAMES = (IMAGE_SIZE_TOTAL, IMAGE_STAGE_TOTAL, IMAGE_COUNT_TOTAL, IMAGE_COUNT_UPLOADING)

#: Reads a project's current usage of the named limits: ``usage(project_id, names)``.
UsageReader = Callable[[str, Sequence[str]], Mapping[str, int]]


class LimitEnforcer(Protocol):
    """Decides whether a project may consume ``deltas`` more of its limits."""

    def enforce(self, project_id: str, deltas: Mapping[str, int], usage: UsageReader) -> None:
        """Raise OverQuota when usage plus delta passes a limit (as oslo.limit does).

        Raises:
            OverQuota: with oslo.limit's message, e.g. ``Project P is over a limit for
                [Resource image_count_total is over limit of 2 due to current usage 2 and
                delta 1]``.
        """
        ...
