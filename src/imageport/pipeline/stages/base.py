"""The stage contract: what the runner calls on every stage of a job."""

from __future__ import annotations

from typing import Protocol

from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data.staging_area import Tick
from imageport.pipeline.outputs import StageOutput


class Stage(Protocol):
    """One step of a job, run by :mod:`imageport.pipeline.runner`.

    A stage is idempotent: run twice, it leaves the same result. It reads the outputs of the
    stages before it from ``ctx`` and returns its own, which the runner records.
    """

    @property
    def name(self) -> str:
        """The stage's name as recorded on its runs (``stage``, ``verify``, …)."""
        ...

    @property
    def output_type(self) -> type[StageOutput]:
        """The class of the output :meth:`run` returns (read back from JSON on resume)."""
        ...

    def run(self, ctx: JobContext, services: Services) -> StageOutput:
        """Do the stage's work and return its output."""
        ...

    def still_valid(self, ctx: JobContext, services: Services) -> bool | None:
        """Whether the stage's recorded output is still intact (None: it has no files)."""
        ...

    def restore(self, ctx: JobContext, services: Services, tick: Tick) -> bool:
        """Fetch the files the next stage reads when this host lacks them.

        Returns False when the stage has nothing of its own to restore (the runner then asks
        the stage before it).

        Raises:
            StagingLost: neither this host nor remote staging has them.
        """
        ...


class BaseStage:
    """Defaults for a stage without files of its own (``verify``, ``inspect``)."""

    def still_valid(self, ctx: JobContext, services: Services) -> bool | None:  # noqa: ARG002
        """No files of its own: as good as the stage before it."""
        return None

    def restore(self, ctx: JobContext, services: Services, tick: Tick) -> bool:  # noqa: ARG002
        """Nothing of its own to fetch."""
        return False
