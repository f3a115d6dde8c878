"""Stage ``convert``: qemu-img convert to the target format, then inspect the output.

The output is inspected twice: its header by our own checks, then by ``qemu-img info -f``; it
must be the target format with no backing or data file. (qcow2 sources are opened with their
backing chain cut, see :func:`imageport.pipeline.qemu.source_name`.)

The output goes to the task's scratch directory. When the target store is a file store on the
same file system, the copy stage later moves that file into the store by rename, so conversion
writes the final bytes exactly once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from imageport.errors import ConversionFailed, NoSpace
from imageport.pipeline import staging, stagingarea
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.headers import magic_format, qcow2_problem
from imageport.pipeline.inspector import HEAD_SIZE
from imageport.pipeline.qemu import qemu_format
from imageport.pipeline.stagingarea import Tick

NAME = "convert"
CONVERTED_NAME = "converted"


def run(ctx: JobContext, services: Services) -> dict[str, Any]:
    """Convert when the target format differs; ``skipped`` when there is nothing to do."""
    source_format = ctx.outputs["inspect"]["detected_format"]
    target_format = ctx.request.final_format
    if target_format == source_format:
        return {"skipped": True, "converted": False, "format": source_format}
    staged = staging.staged_path(ctx)
    ctx.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = converted_path(ctx)
    # A raw output holds at least the source's data; qcow2's own overhead is small.
    needed = ctx.outputs["stage"].get("disk_size") or ctx.outputs["stage"]["size"]
    free = shutil.disk_usage(ctx.scratch_dir).free
    if needed > free:
        raise NoSpace(
            f"scratch has {free} bytes free, about {needed} are needed to convert: "
            f"free space in {ctx.scratch_dir} or move scratch_dir"
        )
    total = int(ctx.outputs["inspect"]["virtual_size"])

    def on_progress(percent: float) -> bool:
        return ctx.progress(int(total * percent / 100), total)

    services.qemu.convert(staged, source_format, out, target_format, on_progress)
    _check_head(out, target_format)  # our own eyes first, then qemu-img's
    info = services.qemu.info(out, target_format)
    _check_output(info, target_format)
    ctx.progress(total, total)
    # Remote staging: a job taken over on another host copies from this, not from scratch.
    url = services.staging.publish(
        f"{ctx.task_id}.{stagingarea.CONVERTED}", out, lambda: ctx.progress(total, total)
    )
    return {
        "converted": True,
        "staged_url": url,
        "path": str(out),
        "format": target_format,
        "size": out.stat().st_size,
        "virtual_size": int(info["virtual-size"]),
    }


def converted_path(ctx: JobContext) -> Path:
    """The conversion output of a job, in this host's scratch directory."""
    return ctx.scratch_dir / CONVERTED_NAME


def still_valid(ctx: JobContext, services: Services, output: dict[str, Any]) -> bool:
    """Reuse a finished conversion only while its output (or, unconverted, the staged file)."""
    if not output.get("converted"):
        return staging.still_valid(ctx, services, ctx.outputs.get("stage", {}))
    return services.staging.available(output.get("staged_url"), converted_path(ctx), output["size"])


def restore(ctx: JobContext, services: Services, output: dict[str, Any], tick: Tick) -> None:
    """Fetch what the copy stage reads (the output, or the staged file) if this host lacks it.

    Raises:
        StagingLost: neither this host nor remote staging has it.
    """
    if not output.get("converted"):
        staging.restore(ctx, services, ctx.outputs["stage"], tick)
        return
    services.staging.restore(output.get("staged_url"), converted_path(ctx), output["size"], tick)


def _check_head(path: Path, target_format: str) -> None:
    """The output's own header must name the target format and no other file.

    Only the first 512 bytes are read (the output can be gigabytes): its magic must be the
    target's (none at all for raw: a raw output that starts like a qcow2 or VMDK would be
    probed as one by the next consumer), and a qcow2 output must pass the header checks.
    """
    with path.open("rb") as handle:
        head = handle.read(HEAD_SIZE)
    claimed = magic_format(head)
    wanted = None if target_format in ("raw", "iso") else target_format
    problem = qcow2_problem(head) if claimed == "qcow2" and len(head) == HEAD_SIZE else None
    if claimed != wanted or problem is not None:
        detail = problem[1] if problem else f"its header says {claimed or 'raw'}"
        raise ConversionFailed(
            f"the converted image is not a plain {target_format} file ({detail})",
            code="conversion_failed",
        )


def _check_output(info: dict[str, Any], target_format: str) -> None:
    data = info.get("format-specific", {}).get("data", {})
    if (
        info.get("format") != qemu_format(target_format)
        or "backing-filename" in info
        or "full-backing-filename" in info
        or "data-file" in data
        or data.get("data-file-raw")
    ):
        raise ConversionFailed(
            f"the converted image is not a plain {target_format} file: {info.get('format')}",
            code="conversion_failed",
        )
