"""Stage ``inspect``: the stream inspector's verdict, then qemu-img's second opinion.

The checks themselves live in :mod:`imageport.pipeline.safety`: the inspector's verdict was
reached while the bytes were staged, and :mod:`~imageport.pipeline.safety.second_opinion` asks
qemu-img, which only ever sees a file the inspector accepted.
"""

from __future__ import annotations

from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.outputs import InspectedOutput, StagedOutput
from imageport.pipeline.safety.second_opinion import second_opinion
from imageport.pipeline.stages.base import BaseStage


class Inspection(BaseStage):
    """The ``inspect`` stage."""

    name = "inspect"
    output_type = InspectedOutput

    def run(self, ctx: JobContext, services: Services) -> InspectedOutput:
        """Refuse unsafe or mislabelled images; return the detected format and virtual size.

        Raises:
            UnsafeImage: with the reason code of the failed check.
        """
        verdict = ctx.output(StagedOutput).verdict
        verdict.raise_if_rejected()
        virtual_size = second_opinion(services.qemu, ctx.staged_path, verdict, ctx.settings)
        return InspectedOutput(detected_format=verdict.detected_format, virtual_size=virtual_size)


STAGE = Inspection()
