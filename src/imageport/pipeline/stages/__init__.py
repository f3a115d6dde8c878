"""The stages of a job, one module each, behind the :class:`~.base.Stage` protocol.

An import walks :data:`IMPORT_STAGES` — stage, verify, inspect, convert, copy, activate; a
copy-image task walks :data:`COPY_IMAGE_STAGES` — copy (replication: one existing location to
new stores) and activate (registration: add the new locations).
"""

from __future__ import annotations

from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import (
    activation,
    conversion,
    copying,
    inspection,
    registration,
    replication,
    staging,
    verification,
)
from imageport.pipeline.stages.base import BaseStage, Stage

#: The stages of an import, in order.
IMPORT_STAGES: tuple[Stage, ...] = (
    staging.STAGE,
    verification.STAGE,
    inspection.STAGE,
    conversion.STAGE,
    copying.STAGE,
    activation.STAGE,
)
#: The stages of a copy-image task, in order.
COPY_IMAGE_STAGES: tuple[Stage, ...] = (replication.STAGE, registration.STAGE)
#: The stage names of an import, in order.
STAGE_NAMES = tuple(s.name for s in IMPORT_STAGES)


def stages_for(request: ImportRequest) -> tuple[Stage, ...]:
    """The stages an import method walks through."""
    return COPY_IMAGE_STAGES if request.method == "copy-image" else IMPORT_STAGES


def stage_names(request: ImportRequest) -> list[str]:
    """The names of the stages an import method walks through, in order."""
    return [s.name for s in stages_for(request)]


__all__ = [
    "COPY_IMAGE_STAGES",
    "IMPORT_STAGES",
    "STAGE_NAMES",
    "BaseStage",
    "Stage",
    "stage_names",
    "stages_for",
]
