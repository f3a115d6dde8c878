"""Stage ``convert``: the target format written, hashed when it can be on the way, inspected.

A qcow2 converted to raw is written in one pass from ``qemu-img map``
(:mod:`imageport.pipeline.data.mapped`): its data ranges are read once, hashed and copied by
the kernel, its zero ranges hashed from a zero buffer and left as holes, so the output is never
read back. Any other conversion — or a qcow2 whose map has compressed or encrypted ranges, or is
too long — runs ``qemu-img convert``, and the copy stage hashes its output on the way.

The output is inspected twice: its header by our own checks, then by ``qemu-img info -f``; it
must be the target format with no backing or data file. (qcow2 sources are opened with their
backing chain cut, see :func:`imageport.pipeline.safety.qemu.source_name`.)

The output goes to the task's scratch directory. When the target store is a file store on the
same file system, the copy stage later moves that file into the store by rename, so conversion
writes the final bytes exactly once.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from imageport.errors import ConversionFailed
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data import early, mapped, space, staging_area
from imageport.pipeline.data.hashing import Digests, MultiHasher
from imageport.pipeline.data.staging_area import Tick
from imageport.pipeline.outputs import ConvertedOutput, InspectedOutput
from imageport.pipeline.safety.headers import magic_format, qcow2_problem
from imageport.pipeline.safety.inspector import HEAD_SIZE
from imageport.pipeline.safety.qemu import QemuInfo, qemu_format
from imageport.pipeline.stages.base import BaseStage

log = structlog.get_logger(__name__)


class Conversion(BaseStage):
    """The ``convert`` stage."""

    name = "convert"
    output_type = ConvertedOutput

    def run(self, ctx: JobContext, services: Services) -> ConvertedOutput:
        """Convert when the target format differs; ``skipped`` when there is nothing to do."""
        inspected = ctx.output(InspectedOutput)
        source_format = inspected.detected_format or "raw"
        target_format = ctx.request.final_format
        if target_format == source_format:
            return ConvertedOutput(skipped=True, converted=False, format=source_format)
        ctx.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = ctx.converted_path
        total = inspected.virtual_size

        digests, converted_early = _convert(ctx, services, source_format, target_format, total)
        _check_head(out, target_format)  # our own eyes first, then qemu-img's
        info = services.qemu.info(out, target_format)
        _check_output(info, target_format)
        ctx.progress(total, total)
        # Remote staging: a job taken over on another host copies from this, not from scratch.
        url = services.staging.publish(
            f"{ctx.task_id}.{staging_area.CONVERTED}", out, lambda: ctx.progress(total, total)
        )
        return ConvertedOutput(
            converted=True,
            staged_url=url,
            path=str(out),
            format=target_format,
            size=out.stat().st_size,
            virtual_size=int(info["virtual-size"]),
            mapped=digests is not None,
            early=converted_early,
            md5=digests.md5 if digests else None,
            hash_algo=digests.algo if digests else None,
            hash_value=digests.value if digests else None,
        )

    def still_valid(self, ctx: JobContext, services: Services) -> bool | None:
        """Reused only while its output is intact; unconverted, as good as the staged file."""
        converted = ctx.output(ConvertedOutput)
        if not converted.converted:
            return None
        return services.staging.available(
            converted.staged_url, ctx.converted_path, converted.size or 0
        )

    def restore(self, ctx: JobContext, services: Services, tick: Tick) -> bool:
        """Fetch the output the copy stage reads if this host lacks it.

        Unconverted, the copy stage reads the staged file: the stage step restores that.

        Raises:
            StagingLost: neither this host nor remote staging has it.
        """
        converted = ctx.output(ConvertedOutput)
        if not converted.converted:
            return False
        services.staging.restore(
            converted.staged_url, ctx.converted_path, converted.size or 0, tick
        )
        return True


STAGE = Conversion()


def _convert(
    ctx: JobContext, services: Services, source_format: str, target_format: str, total: int
) -> tuple[Digests | None, bool]:
    """Write the output; its digests if hashed on the way (else None), and if written early."""
    staged, out = ctx.staged_path, ctx.converted_path
    if target_format == "raw" and source_format in mapped.FORMATS:
        extents = services.qemu.map(staged, source_format)
        runs = None if extents is None else mapped.plan(extents, total, staged.stat().st_size)
        if runs is not None:
            adopted = _adopt_early(ctx, runs, total)
            if adopted is not None:
                return adopted, True
            # Admission: written from the map, the output allocates exactly its data ranges;
            # when that does not fit here, the job is handed back, not failed.
            space.admit(ctx.scratch_dir, mapped.data_bytes(runs), ctx.settings, "convert")
            with MultiHasher(ctx.settings.hash_algo) as hasher:
                written = mapped.write_raw(
                    staged,
                    runs,
                    out,
                    hasher,
                    ctx.settings.chunk_size,
                    lambda done: ctx.progress(done, total),
                )
            return written, False

    early.stop(staged)
    early.discard(staged)  # qemu-img converts: whatever the follower left is of no use
    # qemu-img's output allocates at most the virtual size (compressed clusters expand up to
    # it), so that much must fit.
    space.admit(ctx.scratch_dir, total, ctx.settings, "convert")

    def on_progress(percent: float) -> None:
        ctx.progress(int(total * percent / 100), total)

    services.qemu.convert(staged, source_format, out, target_format, on_progress)
    return None, False


def _adopt_early(ctx: JobContext, runs: list[mapped.Run], total: int) -> Digests | None:
    """The output converted while the image was staged, if it is exactly this conversion's.

    The follower's layout was read from the file before the inspector saw it: it counts only
    when qemu-img's map of the inspected file has the same digest, the staged file is the one
    it followed, and the hash algorithm is still the configured one.
    """
    staged = ctx.staged_path
    found = early.collect(staged, tick=lambda done: ctx.progress(done, total))
    if found is None:
        return None
    result, output = found
    same = (
        result.layout == mapped.layout_digest(runs)
        and result.staged == early.identity(staged)
        and result.algo == ctx.settings.hash_algo
        and result.size == total
    )
    try:
        if same:
            output.replace(ctx.converted_path)
    except OSError:
        same = False  # e.g. scratch on another file system: convert as usual
    finally:
        early.discard(staged)
    if not same:
        log.info("early_conversion_unused", task_id=ctx.task_id)
        return None
    log.info("early_conversion_used", task_id=ctx.task_id)
    ctx.progress(total, total)
    return Digests(md5=result.md5, algo=result.algo, value=result.value, size=result.size)


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


def _check_output(info: QemuInfo, target_format: str) -> None:
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
