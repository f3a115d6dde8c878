"""Version discovery, import and store discovery, schemas, and the health endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imageport.api import schemas
from imageport.api.access import caller_target
from imageport.api.auth import Caller
from imageport.api.deps import Ctx
from imageport.api.errors import ApiError
from imageport.health import readiness

router = APIRouter()

#: Import methods this server offers (``GET /v2/info/import`` and the creation header).
IMPORT_METHODS = ("glance-direct", "web-download", "copy-image", "glance-download")
#: Image API versions reported, newest first; all are served by the same v2 routes.
VERSIONS = (
    "2.16",
    "2.15",
    "2.14",
    "2.13",
    "2.12",
    "2.11",
    "2.10",
    "2.9",
    "2.8",
    "2.7",
    "2.6",
    "2.5",
    "2.4",
    "2.3",
    "2.2",
    "2.1",
    "2.0",
)


def _versions(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {
        "versions": [
            {
                "id": f"v{version}",
                "status": "CURRENT" if index == 0 else "SUPPORTED",
                "links": [{"rel": "self", "href": f"{base}/v2/"}],
            }
            for index, version in enumerate(VERSIONS)
        ]
    }


@router.get("/", tags=["discovery"], status_code=300)
def root_versions(request: Request) -> JSONResponse:
    """The versions document; 300 Multiple Choices, as Glance answers."""
    return JSONResponse(_versions(request), status_code=300)


@router.get("/versions", tags=["discovery"])
def list_versions(request: Request) -> dict[str, Any]:
    """The versions document."""
    return _versions(request)


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


@router.get("/v2/info/stores", tags=["discovery"])
def stores_info(request: Request, _who: Caller) -> dict[str, Any]:
    """The stores images can be imported to."""
    default = request.app.state.settings.default_store
    body = []
    for store_id, store in _stores(request):
        entry: dict[str, Any] = {"id": store_id, "description": f"{store.kind} store"}
        if store_id == default:
            entry["default"] = True
        if store.read_only:
            entry["read-only"] = "true"
        body.append(entry)
    return {"stores": body}


@router.get("/v2/info/stores/detail", tags=["discovery"])
def stores_detail(request: Request, ctx: Ctx, who: Caller) -> dict[str, Any]:
    """The stores with their kind and properties (``stores_info_detail``: administrators)."""
    ctx.policy.enforce("stores_info_detail", caller_target(who), who)
    default = request.app.state.settings.default_store
    return {
        "stores": [
            {
                "id": store_id,
                "type": store.kind,
                "default": store_id == default,
                "description": f"{store.kind} store",
                "properties": {"read_only": store.read_only},
            }
            for store_id, store in _stores(request)
        ]
    }


@router.get("/v2/schemas/{name}", tags=["schemas"])
def get_schema(name: str) -> dict[str, Any]:
    """One JSON schema: image, images, member, members, task or tasks."""
    found = schemas.all_schemas().get(name)
    if found is None:
        raise ApiError(404, f"no schema named {name}")
    return found
