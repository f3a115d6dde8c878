"""Import, store and usage discovery, the schemas, and the health endpoints.

Version discovery (``/``, ``/versions``) is answered before any route, by
:mod:`imageport.api.versions`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imageport.access.usage import MIB
from imageport.api import schemas
from imageport.api.access import caller_target
from imageport.api.auth import Caller
from imageport.api.deps import Ctx
from imageport.api.errors import ApiError
from imageport.api.usage import project_usage
from imageport.config import Settings
from imageport.health import readiness

router = APIRouter()

#: Import methods this server offers (``GET /v2/info/import`` and the creation header).
IMPORT_METHODS = ("glance-direct", "web-download", "copy-image", "glance-download")


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(request: Request) -> JSONResponse:
    """Readiness: database, broker and staging answer (503 otherwise)."""
    health = readiness(request.app.state.settings)
    return JSONResponse(health.as_dict(), status_code=200 if health.ok else 503)


@router.get("/v2/info/import", tags=["discovery"])
def import_info(_who: Caller) -> dict[str, Any]:
    """The import methods this cloud offers."""
    return {
        "import-methods": {
            "description": "Import methods available.",
            "type": "array",
            "value": list(IMPORT_METHODS),
        }
    }


def _stores(request: Request) -> list[tuple[str, Any]]:
    return list(request.app.state.api.services.stores.items())


def _store_entry(request: Request, store_id: str, store: Any) -> dict[str, Any]:  # noqa: ANN401
    """One store as Glance lists it.

    ``description`` only when configured; ``default`` and ``read-only`` only when so, both as
    the string ``"true"`` (Glance's field types).
    """
    settings: Settings = request.app.state.settings
    configured = settings.resolved_stores.get(store_id)
    entry: dict[str, Any] = {"id": store_id}
    if configured is not None and configured.description:
        entry["description"] = configured.description
    if store_id == settings.default_store:
        entry["default"] = "true"
    if store.read_only:
        entry["read-only"] = "true"
    return entry


@router.get("/v2/info/stores", tags=["discovery"])
def stores_info(request: Request, _who: Caller) -> dict[str, Any]:
    """The stores images can be imported to."""
    return {"stores": [_store_entry(request, i, store) for i, store in _stores(request)]}


@router.get("/v2/info/stores/detail", tags=["discovery"])
def stores_detail(request: Request, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The stores with their type, properties and weight (``stores_info_detail``: admins)."""
    ctx.policy.enforce("stores_info_detail", caller_target(who), who)
    return {
        "stores": [
            {
                **_store_entry(request, store_id, store),
                "type": store.kind,
                "properties": _store_properties(ctx.settings, store_id, store.kind),
                "weight": 0,  # Glance's default: imageport does not order locations by weight
            }
            for store_id, store in _stores(request)
        ]
    }


def _store_properties(settings: Settings, store_id: str, kind: str) -> dict[str, Any]:
    """Glance's per-driver properties of a store, with imageport's values."""
    configured = settings.resolved_stores[store_id]
    if kind == "file":
        return {
            "data_dir": str(configured.path),
            "chunk_size": settings.chunk_size,
            "thin_provisioning": True,  # holes stay holes in a file store
        }
    return {
        "s3_store_large_object_size": 0,  # every object goes up in parts
        "s3_store_large_object_chunk_size": settings.s3_part_size // MIB,
        "s3_store_thread_pools": settings.s3_max_concurrency,
    }


@router.get("/v2/info/usage", tags=["discovery"])
def usage_info(ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The caller's project's usage of Glance's unified limits (limit -1: unlimited)."""
    with ctx.services.db.session() as session:
        return {"usage": project_usage(ctx.quotas, session, who.project_id)}


@router.get("/v2/schemas/{name}", tags=["schemas"])
def get_schema(name: str) -> dict[str, Any]:
    """One JSON schema: image, images, member, members, task or tasks."""
    found = schemas.all_schemas().get(name)
    if found is None:
        raise ApiError(404, f"no schema named {name}")
    return found
