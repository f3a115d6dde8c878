"""Stage ``inspect``: the stream inspector's verdict, then qemu-img's second opinion.

qemu-img only ever sees a file the inspector already accepted, always with ``-f``; its probe
(without ``-f``) must agree with the inspector too, which catches formats the inspector does
not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imageport.errors import UnsafeImage
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.inspector import Verdict, cross_check
from imageport.pipeline.qemu import qemu_format

NAME = "inspect"


def run(ctx: JobContext, services: Services) -> dict[str, Any]:
    """Refuse unsafe or mislabelled images; return the detected format and virtual size.

    Raises:
        UnsafeImage: with the reason code of the failed check.
    """
    staged = ctx.outputs["stage"]
    verdict = Verdict(**staged["verdict"])
    verdict.raise_if_rejected()
    path = Path(staged["path"])
    fmt = verdict.detected_format or ctx.request.disk_format
    info = services.qemu.info(path, fmt)
    cross_check(info, verdict, ctx.settings)
    probe = services.qemu.info(path, None)
    if probe.get("format") != qemu_format(fmt):
        raise UnsafeImage(
            f"qemu-img's own probe reads the image as {probe.get('format')}, not {fmt}",
            code="qemu_probe_mismatch",
        )
    return {"detected_format": fmt, "virtual_size": int(info["virtual-size"])}
