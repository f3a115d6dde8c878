"""The byte span a download asks for, parsed as Glance 33 (webob 1.8) parses it.

``Range`` first: ``bytes=A-B``, ``bytes=A-`` or ``bytes=-N``. Without one, Glance still honours
a ``Content-Range`` request header, "for backward compatibility" (it is a response header):
``bytes A-B/*`` or ``bytes A-B/LENGTH``. Either way the answer is a 206 with a
``Content-Range`` for the span served.
"""

from __future__ import annotations

import re

from imageport.api.errors import ApiError, bad_request

#: webob's Range syntax (Glance's): matched at the start, spaces allowed, case ignored.
_RANGE = re.compile(r"bytes *= *(\d*) *- *(\d*)", re.IGNORECASE)
#: webob's Content-Range syntax, matched at the start, case kept.
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|[*])/(?:(\d+)|[*])")


def requested_span(
    range_header: str | None, content_range: str | None, size: int
) -> tuple[int, int] | None:
    """The inclusive byte span a download asks for; None for the whole image.

    Args:
        range_header: the request's ``Range``, or None.
        content_range: the request's ``Content-Range``, or None (read only without a Range).
        size: the image's size in bytes.

    Raises:
        ApiError: 400 for several ranges (Glance serves one); 416 for a malformed range or
            one that does not fit the image.
    """
    if range_header is not None:
        return _range(range_header, size)
    if content_range is not None:
        return _content_range(content_range, size)
    return None


def _unsatisfiable(header: str, size: int, why: str = "") -> ApiError:
    return ApiError(
        416,
        f"range {header!r} cannot be served for {size} bytes{why}",
        code="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _range(header: str, size: int) -> tuple[int, int]:
    """The span of a ``Range``: ``bytes=A-B``, ``bytes=A-`` or ``bytes=-N``.

    ``-N`` is the last N bytes, the whole image when N is not smaller than it; an end past the
    image is the end.
    """
    if "," in header:
        raise bad_request(
            "Requests with multiple ranges are not supported in Glance. You may make "
            "multiple single-range requests instead.",
            code="multiple_ranges",
        )
    match = _RANGE.match(header)
    first, last = match.groups() if match is not None else ("", "")
    if not (first or last):
        raise _unsatisfiable(header, size)
    if not first:  # a suffix: the last N bytes
        suffix = int(last)  # webob reads "-0" as a start of 0: the whole image
        return (size - suffix if 0 < suffix < size else 0), size - 1
    start = int(first)
    if (last and start > int(last)) or start >= size:
        raise _unsatisfiable(header, size)
    return start, min(int(last), size - 1) if last else size - 1


def _content_range(header: str, size: int) -> tuple[int, int]:
    """``bytes A-B/*`` or ``bytes A-B/LENGTH``: A to B, both inside the image.

    Glance fails with a 500 on ``bytes */…`` and serves a span that ends past the image when
    a length is given (with a Content-Length its body does not have); imageport refuses both
    with 416, as Glance refuses an end past the image without a length.
    """
    match = _CONTENT_RANGE.match(header)
    if match is None or match.group(1) is None:
        raise _unsatisfiable(header, size)
    start, end = int(match.group(1)), int(match.group(2))
    length = int(match.group(3)) if match.group(3) is not None else None
    if start > end or (length is not None and end >= length):
        raise _unsatisfiable(header, size)  # webob does not parse it at all
    if end >= size or start >= size:
        raise _unsatisfiable(header, size, f"; the last byte is {size - 1}")
    return start, end
