"""``GET /v2/images``: Glance 33's filters, sorting and marker paging, all done in SQL.

The ``get_images`` policy rule is checked first (403), then visibility scopes the query as
Glance's database layer does: an administrator sees every image; anyone else their project's
images, ``public`` and ``community`` ones and the ``shared`` ones they are a member of (with
``member_status``, default ``accepted``). Without a ``visibility`` filter, ``community`` images
are listed only when the caller's project owns them (for administrators too); ``visibility=
all`` lists them all. ``killed`` and deleted images are never listed. The filters are in
:mod:`imageport.api.filters`. Sorting is ``sort=k1:dir,k2`` or ``sort_key``/``sort_dir`` over
Glance's keys (default ``created_at`` descending); ``created_at`` and then ``id`` break ties in
the one direction given (else descending), as in Glance. Paging is keyset paging from the
``marker`` image, so pages stay consistent while images are added; as in Glance, a full page
has a ``next`` link.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select
from sqlalchemy.orm import Session

from imageport.api import access
from imageport.api.auth import Caller, Identity
from imageport.api.deps import Ctx, image_view
from imageport.api.errors import bad_request, forbidden
from imageport.api.filters import apply_filters
from imageport.records import Image, ImageMember, ImageStatus, ImageTag
from imageport.records.paging import rows_after

router = APIRouter(tags=["images"])

DEFAULT_LIMIT = 25  # images per page when no limit is given (Glance's limit_param_default)
MAX_LIMIT = 1000  # largest page (Glance's api_limit_max)
#: Glance's sort keys (``_available_sort_keys``).
SORT_KEYS = (
    "name", "status", "container_format", "disk_format", "size", "id", "created_at",
    "updated_at",
)  # fmt: skip
#: Nullable sort columns compare through this stand-in for NULL (sorts first ascending).
NULL_AS: dict[str, Any] = {
    "name": "", "disk_format": "", "container_format": "", "size": -1,
}  # fmt: skip
VISIBILITIES = ("community", "public", "private", "shared", "all")
MEMBER_STATUSES = ("pending", "accepted", "rejected", "all")
#: Images no list shows (Glance leaves out killed and deleted ones).
UNLISTED = (ImageStatus.KILLED, ImageStatus.DELETED)
Opt = Annotated[str | None, Query()]


@router.get("/v2/images")
def list_images(
    request: Request,
    ctx: Ctx,
    who: Caller,
    limit: Opt = None,
    marker: Opt = None,
    visibility: Opt = None,
    member_status: Opt = None,
    sort: Opt = None,
    sort_key: Annotated[list[str] | None, Query()] = None,
    sort_dir: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    """List the images the caller may see, filtered, sorted and paged as in Glance.

    Any other parameter is a filter (see :mod:`imageport.api.filters`); ``tag`` may repeat
    (all must match).
    """
    params = request.query_params.multi_items()
    member_status = member_status or "accepted"
    if member_status not in MEMBER_STATUSES:
        raise bad_request(f"Invalid status: {member_status}")
    if visibility and visibility not in VISIBILITIES:
        raise bad_request(f"Invalid visibility value: {visibility}")
    if any(key == "changes-since" for key, _ in params):
        raise bad_request('The "changes-since" filter is no longer available on v2.')
    size = page_size(limit)
    keys = _sort_keys(sort, sort_key or [], sort_dir or [])
    ctx.policy.enforce("get_images", access.caller_target(who), who)
    query = apply_filters(_scoped(who, visibility or None, member_status), params)
    for key, value in params:
        if key == "tag":
            tagged = select(ImageTag.image_id).where(ImageTag.value == value.strip())
            query = query.where(Image.id.in_(tagged))
    with ctx.services.db.session() as session:
        if marker is not None:
            query = query.where(_after(_marker(session, marker, who), keys))
        ordered = query.order_by(
            *[_sort_expr(k).asc() if asc else _sort_expr(k).desc() for k, asc in keys]
        )
        images = list(session.scalars(ordered.limit(size)))
        views = [image_view(image, who, ctx.settings) for image in images]
    links = page_links(request, "/v2/images", views, more=len(views) == size)
    return {"images": views, "schema": "/v2/schemas/images", **links}


def page_size(limit: str | int | None) -> int:
    """Rows per page for a ``limit`` parameter (Glance's default, maximum and messages)."""
    if limit is None:
        return DEFAULT_LIMIT
    try:
        number = int(limit)
    except ValueError:
        raise bad_request("limit param must be an integer") from None
    if number < 0:
        raise bad_request("limit param must be positive")
    return min(number, MAX_LIMIT)


def page_links(
    request: Request, path: str, page: list[dict[str, Any]], *, more: bool
) -> dict[str, str]:
    """Glance's ``first`` link and, when ``more`` rows may follow ``page``, its ``next`` link.

    Both keep the request's parameters; ``next`` puts the page's last id in ``marker``. As in
    Glance, ``more`` is a full page: the page after a full last page is empty.
    """
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "marker"]
    links = {"first": path + (f"?{urlencode(params)}" if params else "")}
    if more and page:
        links["next"] = f"{path}?" + urlencode([*params, ("marker", page[-1]["id"])])
    return links


def _scoped(who: Identity, visibility: str | None, member_status: str) -> Select[Image]:
    """The images ``who`` may list, before filters (Glance's _select_images_query)."""
    query = select(Image).where(Image.status.not_in(UNLISTED))
    if visibility not in (None, "all"):
        query = query.where(Image.visibility == visibility)
    elif visibility is None:
        # Glance: without a visibility filter, community images only of the caller's project.
        own = Image.owner == who.project_id if who.project_id else false()
        query = query.where(or_(Image.visibility != "community", own))
    if who.is_admin:
        return query
    mine = Image.owner == who.project_id if who.project_id else false()
    members = select(ImageMember.image_id).where(ImageMember.member_id == who.project_id)
    if member_status != "all":
        members = members.where(ImageMember.status == member_status)
    shared = and_(Image.visibility == "shared", Image.id.in_(members))
    seen = [mine, Image.visibility == "public", Image.visibility == "community", shared]
    return query.where(or_(*seen))


def _sort_keys(sort: str | None, keys: list[str], dirs: list[str]) -> list[tuple[str, bool]]:
    """The sort as ``(key, ascending)`` pairs, with Glance's tie-breaks last.

    ``created_at`` and ``id`` break ties in the direction of the one direction given (one
    ``sort_dir``, or a ``sort`` of one key), else descending, as Glance's database layer does.
    """
    if sort is not None and (keys or dirs):
        raise bad_request("Old and new sorting syntax cannot be combined")
    if sort is not None:
        parts = [part.partition(":") for part in sort.strip().split(",")]
        pairs = [(key.strip(), direction.strip() or "desc") for key, _, direction in parts]
        given = [direction for _, direction in pairs]
    else:
        given = [d.strip() for d in dirs] or ["desc"]
        if len(given) > 1 and len(given) != len(keys):
            raise bad_request("Number of sort dirs does not match the number of sort keys")
        names = [k.strip() for k in keys] or ["created_at"]
        pairs = list(zip(names, given if len(given) > 1 else given * len(names), strict=True))
    for key, direction in pairs:
        if key not in SORT_KEYS:
            raise bad_request(
                f"Invalid sort key: {key}. It must be one of the following: {', '.join(SORT_KEYS)}."
            )
        if direction not in ("asc", "desc"):
            raise bad_request(f"Invalid sort direction: {direction}")
    result = [(key, direction == "asc") for key, direction in pairs]
    tie = given[0] == "asc" if len(given) == 1 else False
    result += [(key, tie) for key in ("created_at", "id") if key not in dict(result)]
    return result


def _sort_expr(key: str) -> Any:  # noqa: ANN401 - a column or a COALESCE over it
    column = getattr(Image, key)
    return func.coalesce(column, NULL_AS[key]) if key in NULL_AS else column


def _marker(session: Session, marker: str, who: Identity) -> Image:
    """The marker image, as Glance finds it.

    Raises:
        ApiError: 400 when no image has that id (or it is deleted, for anyone but an
            administrator); 403 when it exists but the caller may not see it (Glance answers
            Forbidden there).
    """
    image = session.get(Image, marker)
    if image is None or (image.status == ImageStatus.DELETED and not who.is_admin):
        raise bad_request(f"No image found with ID {marker}")
    if not who.is_admin and not access.can_see(session, image, who):
        raise forbidden(f"Forbidding request, image {marker} not visible")
    return image


def _after(marker: Image, keys: list[tuple[str, bool]]) -> ColumnElement[bool]:
    """Rows strictly after the marker in the sort order (keyset paging)."""
    return rows_after([(_sort_expr(key), _value(marker, key), asc) for key, asc in keys])


def _value(image: Image, key: str) -> Any:  # noqa: ANN401 - the column's Python value
    value = getattr(image, key)
    return NULL_AS[key] if value is None and key in NULL_AS else value
