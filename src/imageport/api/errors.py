"""Errors in Glance's shape, plus imageport's stable error code.

Every error response is ``{"code": "404 Not Found", "title": "Not Found", "message": "…",
"error_code": "not_found"}``: the first three keys are what Glance (webob) writes and what
openstacksdk and python-glanceclient read; ``error_code`` is ``PipelineError.code``.

Messages are written for the client: an imageport error carries its own, and an unexpected
exception becomes a 500 ``internal_error`` with a generic message and a reference. The
exception itself (its repr, its text, its traceback) goes to the server log under that
reference, never to the client.
"""

from __future__ import annotations

import html
import json
import uuid
from http import HTTPStatus

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
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


#: The media types of an error body, in the order webob (Glance's) prefers them on a tie.
ERROR_MEDIA_TYPES = ("text/plain", "text/html", "application/json")
#: The error code of every error response, whatever its media type.
ERROR_CODE_HEADER = "X-Imageport-Error-Code"


def error_media_type(accept: str | None) -> str:
    """The media type of an error body, chosen from ``Accept`` as Glance's webob chooses it.

    The offer whose most specific matching range has the highest ``q`` wins; ties go to
    text/plain, then text/html, then JSON, so ``*/*`` (curl, python-glanceclient) gets text
    and only a client that asks for ``application/json`` gets the JSON document.
    python-glanceclient reads a JSON error body as a mapping of objects and fails on Glance's
    flat shape: with text it shows the message.
    """
    ranges: list[tuple[str, float]] = []
    for part in (accept or "*/*").split(","):
        media, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            ranges.append((media.strip().lower(), quality))
    best, best_q = ERROR_MEDIA_TYPES[0], 0.0
    for offer in ERROR_MEDIA_TYPES:
        quality = _quality(offer, ranges)
        if quality > best_q:
            best, best_q = offer, quality
    return best


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    """The q of ``offer`` under its most specific matching range (0 when none matches)."""
    kind = offer.split("/", maxsplit=1)[0]
    for pattern in (offer, f"{kind}/*", "*/*"):
        for media, quality in ranges:
            if media == pattern:
                return quality
    return 0.0


def render_error(status: int, message: str, code: str, accept: str | None) -> tuple[bytes, str]:
    """An error body and its content type, negotiated from ``Accept`` (see error_media_type)."""
    media = error_media_type(accept)
    if media == "application/json":
        return json.dumps(error_body(status, message, code)).encode(), media
    line = f"{status} {HTTPStatus(status).phrase}"
    if media == "text/html":
        text = (
            f"<html>\n <head>\n  <title>{line}</title>\n </head>\n <body>\n  <h1>{line}</h1>\n"
            f"  {html.escape(message)}<br /><br />\n\n\n\n </body>\n</html>"
        )
        return text.encode(), "text/html; charset=UTF-8"
    return f"{line}\n\n{message}\n\n   ".encode(), "text/plain; charset=UTF-8"


def error_response(
    request: Request,
    status: int,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error response in the media type the request prefers (Glance's JSON shape or text)."""
    body, media = render_error(status, message, code, request.headers.get("accept"))
    return Response(
        body,
        status_code=status,
        media_type=media,
        headers={**(headers or {}), ERROR_CODE_HEADER: code},
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into Glance's shape."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
        return error_response(request, exc.status, exc.message, exc.code, exc.headers)

    async def on_pipeline_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PipelineError)  # noqa: S101 - registered for PipelineError only
        return error_response(request, status_of(exc), exc.message, exc.code)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(request, 400, problems or "invalid request", "invalid_request")

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        headers = dict(exc.headers or {})
        return error_response(
            request, exc.status_code, str(exc.detail), _default_code(exc.status_code), headers
        )

    async def on_data_error(request: Request, exc: Exception) -> Response:
        # The database refused a value the request carried (a NUL character in a JSON string,
        # a number beyond BIGINT): bad input, answered as such instead of as a crash.
        assert isinstance(exc, DataError)  # noqa: S101 - registered for DataError only
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else "value out of range"
        return error_response(
            request,
            400,
            f"a value in this request cannot be stored or compared ({detail}); "
            "correct it and send the request again",
            "invalid_value",
        )

    async def on_crash(request: Request, exc: Exception) -> Response:
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
        return error_response(
            request, 500, CRASH_MESSAGE.format(reference=reference), "internal_error"
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(PipelineError, on_pipeline_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DataError, on_data_error)
    app.add_exception_handler(Exception, on_crash)
