"""Stage ``copy``: read the final bytes once, write them to every target store, hash on the way.

A file store on the same file system as the final file takes it by rename (no copy); every
other store is fed from one read of the file (:mod:`imageport.pipeline.fanout`: one thread per
store, bounded buffers), holes passed on as holes. When the final bytes
are the staged bytes, their hashes are already known and are not computed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imageport.errors import PipelineError, StoreCopyFailed
from imageport.pipeline import conversion
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.extents import read_extents
from imageport.pipeline.fanout import FanOutResult, fan_out_to_stores
from imageport.pipeline.hashing import Digests
from imageport.pipeline.staging import staged_path
from imageport.pipeline.stagingarea import Tick
from imageport.stores import FileStore, Store, StoredObject

NAME = "copy"


def run(ctx: JobContext, services: Services) -> dict[str, Any]:
    """Store the final image everywhere it was asked for; return locations and final hashes.

    Raises:
        PipelineError: a store failed and all stores must succeed (copies already written
            are removed first), or every store failed.
    """
    source, digests = _final_bytes(ctx)
    targets = [services.stores[s] for s in target_store_ids(ctx)]
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
    if taker is not None and not (result.failed and ctx.request.all_stores_must_succeed):
        # Moved in last: the rename cannot be undone by the other stores' failure.
        result.stored.append(taker.take_file(ctx.image_id, source))
    settle_failures(ctx, targets, result.stored, result.failed)
    assert digests is not None  # noqa: S101 - known from staging, or computed by the fan-out
    return {
        "locations": [
            {"store_id": o.store_id, "url": o.url, "metadata": {"store": o.store_id, **o.metadata}}
            for o in result.stored
        ],
        "failed_stores": sorted(result.failed),
        "md5": digests.md5,
        "hash_algo": digests.algo,
        "hash_value": digests.value,
        "size": digests.size,
    }


def still_valid(ctx: JobContext, services: Services, output: dict[str, Any]) -> bool:  # noqa: ARG001
    """The copies are reusable while every object they wrote still exists."""
    try:
        return all(
            services.stores[loc["store_id"]].exists(loc["url"]) for loc in output["locations"]
        )
    except (KeyError, PipelineError):
        return False


def restore(ctx: JobContext, services: Services, output: dict[str, Any], tick: Tick) -> None:
    """Nothing to fetch once the copies are made: activation reads only the records."""


def target_store_ids(ctx: JobContext) -> list[str]:
    """The stores this import writes to: the request's, else the default store."""
    return list(ctx.request.stores) or [ctx.settings.default_store]


def _final_bytes(ctx: JobContext) -> tuple[Path, Digests | None]:
    converted = ctx.outputs.get("convert", {})
    staged = ctx.outputs["stage"]
    if converted.get("converted") or staged.get("compression"):
        # The final bytes differ from the bytes received: hash them on the way.
        path = conversion.converted_path(ctx) if converted.get("converted") else staged_path(ctx)
        return path, None
    known = Digests(
        md5=staged["md5"],
        algo=staged["hash_algo"],
        value=staged["hash_value"],
        size=staged["size"],
    )
    return staged_path(ctx), known


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


def settle_failures(
    ctx: JobContext,
    targets: Sequence[Store],
    stored: list[StoredObject],
    failed: dict[str, PipelineError],
) -> None:
    """Keep the copies (best effort) or remove them all and raise (all or nothing).

    Raises:
        StoreUnavailable: a store failed and all must succeed, or every store failed.
    """
    if not failed:
        return
    if stored and not ctx.request.all_stores_must_succeed:
        return  # best effort: the failed stores are reported in os_glance_failed_import
    by_id = {s.store_id: s for s in targets}
    for obj in stored:
        by_id[obj.store_id].delete(obj.url)  # all or nothing: remove the copies written
    store_id, first = next(iter(failed.items()))
    raise StoreCopyFailed(
        f"store {store_id} failed: {first}; no copy was kept",
        code=first.code,
        failed_stores=sorted(failed),
    ) from first
