"""Errors in Glance's JSON shape, plus imageport's stable error code.

Every error response is ``{"code": "404 Not Found", "title": "Not Found", "message": "…",
"error_code": "not_found"}``: the first three keys are what Glance (webob) writes and what
openstacksdk and python-glanceclient read; ``error_code`` is ``PipelineError.code``.

Messages are written for the client: an imageport error carries its own, and an unexpected
exception becomes a 500 ``internal_error`` with a generic message and a reference. The
exception itself (its repr, its text, its traceback) goes to the server log under that
reference, never to the client.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imageport.errors import (
    ConfigurationError,
    Forbidden,
    HashMismatch,
    InvalidRequest,
    NotFound,
    OverQuota,
    PermanentError,
    PipelineError,
    SizeLimitExceeded,
    StateError,
    TransientError,
    Unauthenticated,
    UnsafeImage,
)

log = structlog.get_logger(__name__)

#: The message of a 500 ``internal_error``: what to do, and the reference of the log entry
#: that holds the details. Nothing of the exception itself reaches the client.
CRASH_MESSAGE = (
    "the server hit an unexpected error and did not complete the request; try again, and if "
    "it fails again give the operator this reference: {reference} (the server log has the "
    "details under it)"
)

#: HTTP status of each imageport error class; the first match wins (most specific first).
STATUS_OF: tuple[tuple[type[PipelineError], int], ...] = (
    (NotFound, 404),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (OverQuota, 413),
    (SizeLimitExceeded, 413),
    (StateError, 409),
    (InvalidRequest, 400),
    (HashMismatch, 400),
    (UnsafeImage, 400),
    (PermanentError, 400),
    (TransientError, 503),
    (ConfigurationError, 500),
)


class ApiError(Exception):
    """An HTTP error with a message and an imageport error code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _default_code(status)
        self.headers = headers or {}


def _default_code(status: int) -> str:
    return {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
        status, HTTPStatus(status).phrase.lower().replace(" ", "_")
    )


def forbidden(message: str) -> ApiError:
    """A 403 error."""
    return ApiError(403, message, code="forbidden")


def conflict(message: str, code: str = "conflict") -> ApiError:
    """A 409 error."""
    return ApiError(409, message, code=code)


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    """A 400 error."""
    return ApiError(400, message, code=code)


def refuse_nul(request: Request) -> None:
    """Answer 400 to a NUL character anywhere in the path or the query string.

    No id, name or filter value holds one, and PostgreSQL refuses it outright; refusing it here
    gives one clear answer on every route and every database.

    Raises:
        ApiError: 400 ``invalid_request``.
    """
    query = request.query_params.multi_items()
    if "\x00" in request.scope["path"] or any("\x00" in k + v for k, v in query):
        raise bad_request("the URL holds a NUL character (%00); remove it and send it again")


def status_of(exc: PipelineError) -> int:
    """The HTTP status an imageport error maps to."""
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 500)


def error_body(status: int, message: str, code: str) -> dict[str, str]:
    """An error in Glance's shape, plus imageport's ``error_code``."""
    phrase = HTTPStatus(status).phrase
    return {"code": f"{status} {phrase}", "title": phrase, "message": message, "error_code": code}


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A response in Glance's error shape."""
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into Glance's shape."""

    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    async def on_pipeline_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PipelineError)  # noqa: S101 - registered for PipelineError only
        return error_response(status_of(exc), exc.message, exc.code)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(400, problems or "invalid request", "invalid_request")

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        headers = dict(exc.headers or {})
        return error_response(
            exc.status_code, str(exc.detail), _default_code(exc.status_code), headers
        )

    async def on_data_error(_request: Request, exc: Exception) -> JSONResponse:
        # The database refused a value the request carried (a NUL character in a JSON string,
        # a number beyond BIGINT): bad input, answered as such instead of as a crash.
        assert isinstance(exc, DataError)  # noqa: S101 - registered for DataError only
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else "value out of range"
        return error_response(
            400,
            f"a value in this request cannot be stored or compared ({detail}); "
            "correct it and send the request again",
            "invalid_value",
        )

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        # A bug, or a service failing in a way nobody mapped: the client gets a generic 500
        # and a reference to quote, never the exception (its text can hold SQL, paths, values
        # of other requests); the log gets the traceback under the same reference.
        reference = uuid.uuid4().hex
        log.exception(
            "request crashed",
            reference=reference,
            method=request.method,
            path=request.url.path,
            exc_info=exc,
        )
        return error_response(500, CRASH_MESSAGE.format(reference=reference), "internal_error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(PipelineError, on_pipeline_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DataError, on_data_error)
    app.add_exception_handler(Exception, on_crash)
