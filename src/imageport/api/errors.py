"""Errors in Glance's shape, plus imageport's stable error code.

An error body comes in the media type Glance's webob would pick from ``Accept`` (see
error_media_type): JSON ``{"code": "404 Not Found", "title": "Not Found", "message": "…",
"error_code": "not_found"}`` — the first three keys are what Glance writes and what
openstacksdk and python-glanceclient read; ``error_code`` is ``PipelineError.code`` — or
webob's HTML or plain-text page with the same status line and message. Every error response
also carries the code in ``X-Imageport-Error-Code``.

Messages are written for the client: an imageport error carries its own, and an unexpected
exception becomes a 500 ``internal_error`` with a generic message and a reference. The
exception itself (its repr, its text, its traceback) goes to the server log under that
reference, never to the client.
"""

from __future__ import annotations

import html
import json
import re
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


async def refuse_nul(request: Request) -> None:
    """Answer 400 to a NUL character anywhere in the path or the query string.

    No id, name or filter value holds one, and PostgreSQL refuses it outright; refusing it here
    gives one clear answer on every route and every database.

    Raises:
        ApiError: 400 ``invalid_request``.
    """
    # async: no thread-pool hand-off per request (see context_of in imageport.api.deps)
    query = request.query_params.multi_items()
    if "\x00" in request.scope["path"] or any("\x00" in k + v for k, v in query):
        raise bad_request("the URL holds a NUL character (%00); remove it and send it again")


def status_of(exc: PipelineError) -> int:
    """The HTTP status an imageport error maps to."""
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 500)


def error_body(status: int, message: str, code: str) -> dict[str, str]:
    """An error in Glance's shape, plus imageport's ``error_code``."""
    phrase = _title(status)
    return {"code": f"{status} {phrase}", "title": phrase, "message": message, "error_code": code}


#: The media types webob (Glance's error bodies) offers, in its order of preference on a tie.
#: text/plain is not an offer: it is what a request gets when it accepts neither.
ERROR_MEDIA_TYPES = ("text/html", "application/json")
#: The error code of every error response, whatever its media type.
ERROR_CODE_HEADER = "X-Imageport-Error-Code"
#: The title webob writes where it differs from Python's reason phrase.
_WEBOB_TITLES = {416: "Request Range Not Satisfiable"}

# The grammar of an Accept header (RFC 7231 5.3.2), as webob 1.8 checks it: a header that
# does not match is invalid, and webob then treats every offer as acceptable.
_OWS = "[ \t]*"
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_VALUE = f"(?:{_TCHARS}|{_QUOTED})"
_WEIGHT = f"{_OWS};{_OWS}[qQ]=(0(?:\\.[0-9]{{0,3}})?|1(?:\\.0{{0,3}})?)"
_RANGE = f"({_TCHARS}/{_TCHARS})((?:{_OWS};{_OWS}(?![qQ]=){_TCHARS}={_VALUE})*)"
_ELEMENT = f"{_RANGE}(?:{_WEIGHT}(?:{_OWS};{_OWS}{_TCHARS}(?:={_VALUE})?)*)?"
_ACCEPT_VALID = re.compile(f"^$|^(?:,|{_ELEMENT})(?:{_OWS},(?:{_OWS}{_ELEMENT})?)*$")
_ACCEPT_ELEMENT = re.compile(_ELEMENT)


def error_media_type(accept: str | None) -> str:
    """The media type of an error body, chosen from ``Accept`` as Glance's webob chooses it.

    webob offers ``text/html`` and ``application/json``. Each offer takes the ``q`` of its
    most specific matching range (``type/subtype``, then ``type/*``, then ``*/*``; the first
    of equally specific ranges); the highest ``q`` above 0 wins, a tie goes to HTML. When
    neither offer is acceptable — no ``Accept`` header, an empty one, or one that excludes
    both (``text/plain``, ``*/*;q=0``) — the body is text/plain. A header that breaks the
    grammar accepts everything, so it gets HTML, as ``*/*`` does. python-glanceclient shows
    a non-JSON error body as text, whichever of the two it is.

    Args:
        accept: the request's ``Accept`` header, or None when it has none.

    Returns:
        ``text/html``, ``application/json`` or ``text/plain``.
    """
    value = accept or ""
    if not _ACCEPT_VALID.match(value):
        return ERROR_MEDIA_TYPES[0]
    # (type/subtype, its media type parameters, q), lower-cased as webob compares them.
    ranges = [
        (media.lower(), params.strip().lower(), float(quality) if quality else 1.0)
        for media, params, quality in _ACCEPT_ELEMENT.findall(value)
    ]
    best, best_q = "text/plain", 0.0
    for offer in ERROR_MEDIA_TYPES:
        quality = _quality(offer, ranges)
        if quality > best_q:  # strictly: an equal q keeps the earlier offer (HTML)
            best, best_q = offer, quality
    return best


def _quality(offer: str, ranges: list[tuple[str, str, float]]) -> float:
    """The q of ``offer`` under its most specific matching range (0 when none matches).

    A range with media type parameters (``text/html;level=1``) never matches an exact offer,
    which has none; on a wildcard range webob ignores them.
    """
    kind = offer.split("/", maxsplit=1)[0]
    for pattern in (offer, f"{kind}/*", "*/*"):
        for media, params, quality in ranges:
            if media == pattern and not (pattern == offer and params):
                return quality
    return 0.0


def _title(status: int) -> str:
    return _WEBOB_TITLES.get(status) or HTTPStatus(status).phrase


def render_error(status: int, message: str, code: str, accept: str | None) -> tuple[bytes, str]:
    """An error body and its content type, negotiated from ``Accept`` (see error_media_type)."""
    media = error_media_type(accept)
    if media == "application/json":
        return json.dumps(error_body(status, message, code)).encode(), media
    line = f"{status} {_title(status)}"
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
