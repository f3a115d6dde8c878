"""Stores: where images are kept. ``build_stores`` maps settings to store objects.

The kinds a setting can name are ``file`` and ``s3`` (``StoreSettings.kind``). ``HttpStore``
reads locations served over http(s) and ``MemoryStore`` keeps bytes in memory; neither is a
configurable kind: code builds them directly (the store contract tests do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imageport.config import Settings, StoreSettings
from imageport.errors import ConfigurationError
from imageport.stores.base import Store, StoredObject, StoreWriter, add_stream
from imageport.stores.file import FileStore
from imageport.stores.http import HttpStore
from imageport.stores.memory import MemoryStore

if TYPE_CHECKING:
    from imageport.stores.s3 import S3Store


def __getattr__(name: str) -> Any:  # noqa: ANN401 - the lazily imported class
    # boto3 takes ~0.4 s to import: only processes that use an S3 store pay for it.
    if name == "S3Store":
        from imageport.stores.s3 import S3Store  # noqa: PLC0415

        return S3Store
    raise AttributeError(name)


__all__ = [
    "FileStore",
    "HttpStore",
    "MemoryStore",
    "S3Store",
    "Store",
    "StoreWriter",
    "StoredObject",
    "add_stream",
    "build_staging_store",
    "build_stores",
]

S3_RETRY_ATTEMPTS = 4  # botocore attempts per S3 call (first try included), standard mode


def _file_store(store_id: str, conf: StoreSettings, settings: Settings) -> Store:  # noqa: ARG001
    assert conf.path is not None  # noqa: S101 - guaranteed by StoreSettings validation
    return FileStore(store_id, conf.path, read_only=conf.read_only)


def _s3_store(store_id: str, conf: StoreSettings, settings: Settings) -> Store:
    assert conf.bucket is not None  # noqa: S101 - guaranteed by StoreSettings validation
    import boto3  # noqa: PLC0415 - see __getattr__: imported only when an S3 store is used
    from botocore.config import Config  # noqa: PLC0415

    from imageport.stores.s3 import S3Store  # noqa: PLC0415

    # A session per store: boto3 sessions are not thread-safe, the clients made from them are.
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=conf.endpoint_url,
        region_name=conf.region,
        # None for both falls back to boto3's usual chain (env, profile, instance role).
        aws_access_key_id=conf.access_key,
        aws_secret_access_key=conf.secret_key,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": S3_RETRY_ATTEMPTS},
            # One pooled connection per part in flight, plus HEAD/complete calls.
            max_pool_connections=settings.s3_max_concurrency + 2,
            # We send Content-MD5 per part ourselves; botocore's default CRC32 trailers are
            # not understood by every S3-compatible server.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return S3Store(
        store_id,
        client=client,
        bucket=conf.bucket,
        prefix=conf.prefix,
        part_size=settings.s3_part_size,
        max_concurrency=settings.s3_max_concurrency,
        read_only=conf.read_only,
        # Parts in flight wait in a file beside the conversion output, not in memory.
        part_dir=settings.resolved_scratch_dir,
    )


#: One explicit map from store kind to factory; unknown kinds fail at start-up.
_FACTORIES: dict[str, Callable[[str, StoreSettings, Settings], Store]] = {
    "file": _file_store,
    "s3": _s3_store,
}


def build_staging_store(settings: Settings) -> Store | None:
    """The S3 store of an ``s3://`` staging_url (id ``staging``), else None (local staging)."""
    conf = settings.remote_staging
    return None if conf is None else _s3_store("staging", conf, settings)


def build_stores(settings: Settings) -> dict[str, Store]:
    """Create every configured store, keyed by store id.

    Raises:
        ConfigurationError: for an unknown kind or an unusable store.
    """
    stores: dict[str, Store] = {}
    for store_id, conf in settings.resolved_stores.items():
        try:
            factory = _FACTORIES[conf.kind]
        except KeyError as exc:
            raise ConfigurationError(f"store {store_id}: unknown kind {conf.kind!r}") from exc
        stores[store_id] = factory(store_id, conf, settings)
    return stores
