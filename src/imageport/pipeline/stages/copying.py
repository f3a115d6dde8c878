"""Stage ``copy``: read the final bytes once, write them to every target store, hash on the way.

A file store on the same file system as the final file takes it by rename (no copy); every
other store is fed from one read of the file (:mod:`imageport.pipeline.data.fanout`: one thread
per store, bounded buffers), holes passed on as holes. When the final bytes are the staged
bytes, their hashes are already known and are not computed again.
"""

from __future__ import annotations

from pathlib import Path

from imageport.errors import PipelineError
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data.extents import read_extents
from imageport.pipeline.data.fanout import FanOutResult, fan_out_to_stores, settle_failures
from imageport.pipeline.data.hashing import Digests
from imageport.pipeline.data.staging_area import Tick
from imageport.pipeline.outputs import (
    ConvertedOutput,
    CopiedOutput,
    StagedOutput,
    StoredLocation,
)
from imageport.pipeline.stages.base import BaseStage
from imageport.stores import FileStore, Store


class Copying(BaseStage):
    """The ``copy`` stage of an import."""

    name = "copy"
    output_type = CopiedOutput

    def run(self, ctx: JobContext, services: Services) -> CopiedOutput:
        """Store the final image everywhere it was asked for; return locations and final hashes.

        Raises:
            PipelineError: a store failed and all stores must succeed (copies already written
                are removed first), or every store failed.
        """
        source, digests = _final_bytes(ctx)
        targets = [services.stores[s] for s in ctx.target_store_ids]
        for store in targets:
            store.discard_partial(ctx.image_id)  # leftovers of an interrupted attempt
        taker = next((s for s in targets if isinstance(s, FileStore) and s.can_take(source)), None)
        streamed = [s for s in targets if s is not taker]
        result = FanOutResult(digests=digests)
        if streamed or digests is None:
            result = _fan_out(
                ctx, source, streamed, hash_algo=None if digests else ctx.settings.hash_algo
            )
            digests = digests or result.digests
        all_must = ctx.request.all_stores_must_succeed
        if taker is not None and not (result.failed and all_must):
            # Moved in last: the rename cannot be undone by the other stores' failure.
            result.stored.append(taker.take_file(ctx.image_id, source))
        settle_failures(targets, result.stored, result.failed, all_must_succeed=all_must)
        assert digests is not None  # noqa: S101 - known from staging, or computed by the fan-out
        return CopiedOutput(
            locations=[StoredLocation.of(o) for o in result.stored],
            failed_stores=sorted(result.failed),
            md5=digests.md5,
            hash_algo=digests.algo,
            hash_value=digests.value,
            size=digests.size,
        )

    def still_valid(self, ctx: JobContext, services: Services) -> bool:
        """The copies are reusable while every object they wrote still exists."""
        try:
            return all(
                services.stores[loc.store_id].exists(loc.url)
                for loc in ctx.output(CopiedOutput).locations
            )
        except (KeyError, PipelineError):
            return False

    def restore(self, ctx: JobContext, services: Services, tick: Tick) -> bool:  # noqa: ARG002
        """Nothing to fetch once the copies are made: activation reads only the records."""
        return True


STAGE = Copying()


def _final_bytes(ctx: JobContext) -> tuple[Path, Digests | None]:
    converted = ctx.maybe_output(ConvertedOutput)
    staged = ctx.output(StagedOutput)
    if converted is not None and converted.converted:
        if converted.md5 is None or converted.hash_value is None:
            return ctx.converted_path, None  # qemu-img wrote it: hash on the way
        return ctx.converted_path, Digests(
            md5=converted.md5,
            algo=converted.hash_algo or ctx.settings.hash_algo,
            value=converted.hash_value,
            size=converted.size or 0,
        )
    if staged.compression or staged.md5 is None or staged.hash_value is None:
        # The decompressed disk, or a source nobody needed hashed while it was staged.
        return ctx.staged_path, None
    known = Digests(
        md5=staged.md5 or "",
        algo=staged.hash_algo or ctx.settings.hash_algo,
        value=staged.hash_value or "",
        size=staged.size or 0,
    )
    return ctx.staged_path, known


def _fan_out(
    ctx: JobContext, source: Path, stores: list[Store], *, hash_algo: str | None
) -> FanOutResult:
    """One read of ``source`` (holes skipped), written to every store in its own thread."""
    return fan_out_to_stores(
        read_extents(source, bytearray(ctx.settings.chunk_size)),
        stores,
        ctx.image_id,
        size=source.stat().st_size,
        chunk_size=ctx.settings.chunk_size,
        hash_algo=hash_algo,
        progress=ctx.progress,
    )
