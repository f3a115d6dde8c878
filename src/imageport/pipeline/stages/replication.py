"""Stage ``copy`` of copy-image: read one existing location once, write every new store.

The source is a location in a configured store, a file store first (read by extents, so holes
stay holes and are never read). The bytes are hashed once on the way and must match the image's
``checksum``, ``os_hash_value`` and ``size`` before the new locations are kept.
"""

from __future__ import annotations

from collections.abc import Iterator

from imageport.errors import HashMismatch, InvalidRequest, SourceNotFound
from imageport.pipeline.context import JobContext, Services
from imageport.pipeline.data.extents import Piece, read_extents
from imageport.pipeline.data.fanout import FanOutResult, fan_out_to_stores, settle_failures
from imageport.pipeline.data.hashing import SUPPORTED_ALGOS, Digests, same_digest
from imageport.pipeline.data.staging_area import Tick
from imageport.pipeline.outputs import ReplicatedOutput, StoredLocation
from imageport.pipeline.stages.base import BaseStage
from imageport.records import ImageStatus, repository
from imageport.records.models import LOCATION_ACTIVE
from imageport.stores import FileStore, Store


class Replication(BaseStage):
    """The ``copy`` stage of copy-image."""

    name = "copy"
    output_type = ReplicatedOutput

    def run(self, ctx: JobContext, services: Services) -> ReplicatedOutput:
        """Copy the active image to the request's stores; return the new locations.

        Raises:
            SourceNotFound: no location of the image is in a configured store.
            HashMismatch: the bytes read do not match the image's recorded hashes.
            StoreUnavailable: a store failed and all must succeed, or every store failed.
        """
        expected, sources = _image_facts(ctx, services)
        targets = [services.stores[s] for s in ctx.target_store_ids]
        for store in targets:
            store.discard_partial(ctx.image_id)  # leftovers of an interrupted attempt
        result = _copy(ctx, sources, targets, expected)
        assert result.digests is not None  # noqa: S101 - fan_out hashed with an algorithm
        if result.stored and not _matches(result.digests, expected):
            for obj in result.stored:
                services.stores[obj.store_id].delete(obj.url)
            raise HashMismatch(
                f"the copy read from {sources[0][1]} does not match image {ctx.image_id} "
                f"(md5 {result.digests.md5}, size {result.digests.size}; recorded md5 "
                f"{expected.md5}, size {expected.size}); the location may be corrupt"
            )
        settle_failures(
            targets,
            result.stored,
            result.failed,
            all_must_succeed=ctx.request.all_stores_must_succeed,
        )
        return ReplicatedOutput(
            locations=[StoredLocation.of(o) for o in result.stored],
            failed_stores=sorted(result.failed),
            source=sources[0][1],
        )

    def restore(self, ctx: JobContext, services: Services, tick: Tick) -> bool:  # noqa: ARG002
        """Nothing to fetch: the copies are in the stores, activation reads only records."""
        return True


STAGE = Replication()


def _image_facts(ctx: JobContext, services: Services) -> tuple[Digests, list[tuple[Store, str]]]:
    """The image's recorded hashes, and its readable locations (file stores first)."""
    with services.db.session() as session:
        image = repository.get_image(session, ctx.image_id)
        if image.status != ImageStatus.ACTIVE:
            raise InvalidRequest(f"image {ctx.image_id} is {image.status}, no longer active")
        algo = image.os_hash_algo if image.os_hash_algo in SUPPORTED_ALGOS else None
        expected = Digests(
            md5=image.checksum or "",
            algo=algo or ctx.settings.hash_algo,
            value=(image.os_hash_value or "") if algo else "",
            size=image.size or 0,
        )
        locations = [
            (services.stores[loc.store_id], loc.url)
            for loc in image.locations
            if loc.status == LOCATION_ACTIVE and loc.store_id in services.stores
        ]
    if not locations:
        raise SourceNotFound(f"image {ctx.image_id} has no location in a configured store")
    # A file store is read by extents (holes skipped); any other store as a byte stream.
    locations.sort(key=lambda pair: not isinstance(pair[0], FileStore))
    return expected, locations


def _copy(
    ctx: JobContext,
    sources: list[tuple[Store, str]],
    targets: list[Store],
    expected: Digests,
) -> FanOutResult:
    """One read of the first source location fanned out to every target."""
    store, url = sources[0]
    return fan_out_to_stores(
        _pieces(ctx, store, url),
        targets,
        ctx.image_id,
        size=expected.size,
        chunk_size=ctx.settings.chunk_size,
        hash_algo=expected.algo,
        progress=ctx.progress,
    )


def _pieces(ctx: JobContext, store: Store, url: str) -> Iterator[Piece]:
    if isinstance(store, FileStore):
        yield from read_extents(store.path_of(url), bytearray(ctx.settings.chunk_size))
        return
    for chunk in store.read(url):
        yield Piece(data=memoryview(chunk))


def _matches(actual: Digests, expected: Digests) -> bool:
    """Constant-time comparison of the copy's hashes with the image's (when recorded)."""
    ok = actual.size == expected.size and same_digest(expected.md5, actual.md5)
    if expected.value:
        ok = same_digest(expected.value, actual.value) and ok
    return ok
