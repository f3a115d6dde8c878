"""Stores: where images are kept. ``build_stores`` maps settings to store objects."""

from __future__ import annotations

from collections.abc import Callable

from imageport.config import Settings, StoreSettings
from imageport.errors import ConfigurationError
from imageport.stores.base import Store, StoredObject, StoreWriter
from imageport.stores.file import FileStore
from imageport.stores.memory import MemoryStore

__all__ = ["FileStore", "MemoryStore", "Store", "StoreWriter", "StoredObject", "build_stores"]


def _file_store(store_id: str, conf: StoreSettings) -> Store:
    assert conf.path is not None  # noqa: S101 - guaranteed by StoreSettings validation
    return FileStore(store_id, conf.path, read_only=conf.read_only)


def _s3_store(store_id: str, conf: StoreSettings) -> Store:  # noqa: ARG001
    raise ConfigurationError(
        f"store {store_id}: kind 's3' is not available in this version; use kind = 'file'"
    )


#: One explicit map from store kind to factory; unknown kinds fail at start-up.
_FACTORIES: dict[str, Callable[[str, StoreSettings], Store]] = {
    "file": _file_store,
    "s3": _s3_store,
}


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
        stores[store_id] = factory(store_id, conf)
    return stores
