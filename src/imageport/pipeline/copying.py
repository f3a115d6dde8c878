"""Stage ``copy``: read the final bytes once, write them to every target store, hash on the way.

A file store on the same file system as the final file takes it by rename (no copy); every
other store is fed from one read of the file, holes passed on as holes. When the final bytes
are the staged bytes, their hashes are already known and are not computed again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imageport.errors import PipelineError, StoreUnavailable
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.extents import read_extents
from imageport.pipeline.hashing import Digests, MultiHasher
from imageport.stores import FileStore, Store, StoredObject, StoreWriter

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
    stored: list[StoredObject] = []
    failed: dict[str, PipelineError] = {}
    if streamed or digests is None:
        digests = _fan_out(ctx, source, streamed, stored, failed)
    if taker is not None:
        stored.append(taker.take_file(ctx.image_id, source))
    _settle_failures(ctx, targets, stored, failed)
    return {
        "locations": [
            {"store_id": o.store_id, "url": o.url, "metadata": {"store": o.store_id, **o.metadata}}
            for o in stored
        ],
        "failed_stores": sorted(failed),
        "md5": digests.md5,
        "hash_algo": digests.algo,
        "hash_value": digests.value,
        "size": digests.size,
    }


def target_store_ids(ctx: JobContext) -> list[str]:
    """The stores this import writes to: the request's, else the default store."""
    return list(ctx.request.stores) or [ctx.settings.default_store]


def _final_bytes(ctx: JobContext) -> tuple[Path, Digests | None]:
    converted = ctx.outputs.get("convert", {})
    staged = ctx.outputs["stage"]
    if converted.get("converted") or staged.get("compression"):
        # The final bytes differ from the bytes received: hash them on the way.
        return Path(converted.get("path") or staged["path"]), None
    known = Digests(
        md5=staged["md5"],
        algo=staged["hash_algo"],
        value=staged["hash_value"],
        size=staged["size"],
    )
    return Path(staged["path"]), known


def _fan_out(
    ctx: JobContext,
    source: Path,
    stores: list[Store],
    stored: list[StoredObject],
    failed: dict[str, PipelineError],
) -> Digests:
    size = source.stat().st_size
    writers: dict[str, StoreWriter] = {}
    for store in stores:
        try:
            writers[store.store_id] = store.begin_write(ctx.image_id, size=size)
        except PipelineError as exc:
            failed[store.store_id] = exc
    buffer = bytearray(ctx.settings.chunk_size)
    zeros = memoryview(bytes(ctx.settings.chunk_size))
    try:
        with MultiHasher(ctx.settings.hash_algo) as hasher:
            for piece in read_extents(source, buffer):
                data, hole = piece.data, piece.hole
                if data is not None:
                    hasher.update(data)
                    _each(writers, failed, lambda w: w.write(data))  # noqa: B023 - called now
                else:
                    _hash_zeros(hasher, zeros, hole)
                    _each(writers, failed, lambda w: w.write_hole(hole))  # noqa: B023
                ctx.progress(hasher.size, size)
            digests = hasher.digests()
        for store_id in list(writers):
            _each({store_id: writers[store_id]}, failed, lambda w: stored.append(w.commit()))
    finally:
        for writer in writers.values():
            writer.abort()  # a no-op after commit; removes the temp file otherwise
    return digests


def _hash_zeros(hasher: MultiHasher, zeros: memoryview, length: int) -> None:
    while length > 0:
        n = min(length, len(zeros))
        hasher.update(zeros[:n])
        length -= n


def _each(
    writers: dict[str, StoreWriter],
    failed: dict[str, PipelineError],
    action: Callable[[StoreWriter], object],
) -> None:
    """Apply ``action`` to each writer; a failing store is dropped and remembered."""
    for store_id, writer in list(writers.items()):
        try:
            action(writer)
        except PipelineError as exc:
            failed[store_id] = exc
            writer.abort()
            del writers[store_id]


def _settle_failures(
    ctx: JobContext,
    targets: list[Store],
    stored: list[StoredObject],
    failed: dict[str, PipelineError],
) -> None:
    if not failed:
        return
    if stored and not ctx.request.all_stores_must_succeed:
        return  # best effort: the failed stores are reported in os_glance_failed_import
    by_id = {s.store_id: s for s in targets}
    for obj in stored:
        by_id[obj.store_id].delete(obj.url)  # all or nothing: remove the copies written
    store_id, first = next(iter(failed.items()))
    raise StoreUnavailable(
        f"store {store_id} failed: {first}; no copy was kept", code=first.code
    ) from first
