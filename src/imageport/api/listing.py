"""``GET /v2/images``: Glance's filters, sorting and marker paging, all done in SQL.

The ``get_images`` policy rule is checked first (403), then visibility (see access.py) scopes
the query. Filters: ``name``, ``status``, ``disk_format``, ``container_format`` (each also as
``in:a,b``), ``visibility`` (``public|private|shared|community|all``), ``member_status`` (for
shared images, default ``accepted``), ``owner``, ``tag`` (repeatable, all must match),
``protected``, ``os_hidden`` (hidden images are left out unless asked for), ``size_min``/
``size_max``, ``created_at``/``updated_at`` as ``OP:ISO-8601`` (``gt gte eq neq lt lte``), and
any other parameter as an extra-property equality filter. Sorting is ``sort=k1:dir,k2`` or
``sort_key``/``sort_dir`` (default ``created_at`` descending; ``id`` always breaks ties).
Paging is keyset paging from the ``marker`` image, so pages stay consistent while images are
added.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select

from imageport.api import access
from imageport.api.auth import Caller, Identity
from imageport.api.deps import Ctx, image_view
from imageport.api.errors import bad_request
from imageport.records import Image, ImageMember, ImageProperty, ImageStatus, ImageTag
from imageport.records.paging import rows_after

router = APIRouter(tags=["images"])

DEFAULT_LIMIT = 25  # images per page when no limit is given (Glance's limit_param_default)
MAX_LIMIT = 1000  # largest page (Glance's api_limit_max)
SORT_KEYS = (
    "name", "status", "container_format", "disk_format", "size", "virtual_size", "id",
    "created_at", "updated_at", "visibility", "owner", "min_disk", "min_ram", "protected",
    "os_hidden",
)  # fmt: skip
#: Nullable sort columns compare through this stand-in for NULL (sorts first ascending).
NULL_AS: dict[str, Any] = {
    "name": "", "owner": "", "disk_format": "", "container_format": "", "size": -1,
    "virtual_size": -1,
}  # fmt: skip
KNOWN = frozenset(
    {"limit", "marker", "name", "status", "visibility", "owner", "member_status", "tag",
     "protected", "os_hidden", "size_min", "size_max", "disk_format", "container_format",
     "created_at", "updated_at", "sort", "sort_key", "sort_dir", "id"}
)  # fmt: skip
COMPARISONS = ("gt", "gte", "eq", "neq", "lt", "lte")
MEMBER_STATUSES = ("accepted", "pending", "rejected", "all")
Opt = Annotated[str | None, Query()]


@router.get("/v2/images")
def list_images(
    request: Request,
    ctx: Ctx,
    who: Caller,
    limit: Annotated[int | None, Query(ge=0)] = None,
    marker: Opt = None,
    name: Opt = None,
    status: Opt = None,
    visibility: Opt = None,
    owner: Opt = None,
    member_status: Opt = None,
    tag: Annotated[list[str] | None, Query()] = None,
    protected: Opt = None,
    os_hidden: Opt = None,
    size_min: Annotated[int | None, Query()] = None,
    size_max: Annotated[int | None, Query()] = None,
    disk_format: Opt = None,
    container_format: Opt = None,
    created_at: Opt = None,
    updated_at: Opt = None,
    sort: Opt = None,
    sort_key: Annotated[list[str] | None, Query()] = None,
    sort_dir: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    """List the images the caller may see, filtered, sorted and paged as in Glance."""
    ctx.policy.enforce("get_images", access.caller_target(who), who)
    query = _scoped(who, visibility, member_status)
    for column, value in (
        (Image.name, name), (Image.status, status), (Image.disk_format, disk_format),
        (Image.container_format, container_format), (Image.owner, owner),
    ):  # fmt: skip
        query = _equal_or_in(query, column, value, status=column is Image.status)
    query = query.where(Image.os_hidden == (_boolean("os_hidden", os_hidden) or False))
    if protected is not None:
        query = query.where(Image.protected == _boolean("protected", protected))
    if size_min is not None:
        query = query.where(Image.size >= size_min)
    if size_max is not None:
        query = query.where(Image.size <= size_max)
    for value in tag or ():
        query = query.where(Image.id.in_(select(ImageTag.image_id).where(ImageTag.value == value)))
    query = _time_filter(
        _time_filter(query, Image.created_at, created_at), Image.updated_at, updated_at
    )
    query = _property_filters(query, request)
    keys = _sort_keys(sort, sort_key or [], sort_dir or [])
    size = page_size(limit)
    with ctx.services.db.session() as session:
        if marker is not None:
            query = query.where(_after(_marker(session, marker, who), keys))
        ordered = query.order_by(
            *[_sort_expr(k).asc() if asc else _sort_expr(k).desc() for k, asc in keys]
        )
        images = list(session.scalars(ordered.limit(size + 1)))
        views = [image_view(image, who) for image in images[:size]]
    links = page_links(request, "/v2/images", views, more=len(images) > size)
    return {"images": views, "schema": "/v2/schemas/images", **links}


def page_size(limit: int | None) -> int:
    """Rows per page for a ``limit`` parameter (Glance's default and maximum)."""
    return min(DEFAULT_LIMIT if limit is None else limit, MAX_LIMIT)


def page_links(
    request: Request, path: str, page: list[dict[str, Any]], *, more: bool
) -> dict[str, str]:
    """Glance's ``first`` link and, when ``more`` rows follow ``page``, its ``next`` link.

    Both keep the request's parameters; ``next`` puts the page's last id in ``marker``. Callers
    fetch one row more than a page to know ``more``.
    """
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "marker"]
    links = {"first": path + (f"?{urlencode(params)}" if params else "")}
    if more and page:
        links["next"] = f"{path}?" + urlencode([*params, ("marker", page[-1]["id"])])
    return links


def _scoped(who: Identity, visibility: str | None, member_status: str | None) -> Select[Image]:
    query = select(Image).where(Image.status != ImageStatus.DELETED)
    if visibility not in (None, "all", "public", "private", "shared", "community"):
        raise bad_request("visibility must be public, private, shared, community or all")
    if member_status not in (None, *MEMBER_STATUSES):
        raise bad_request(f"member_status must be one of {', '.join(MEMBER_STATUSES)}")
    if visibility not in (None, "all"):
        query = query.where(Image.visibility == visibility)
    if who.is_admin:
        return query
    mine = Image.owner == who.project_id if who.project_id else false()
    wanted = member_status or "accepted"
    members = select(ImageMember.image_id).where(ImageMember.member_id == who.project_id)
    if wanted != "all":
        members = members.where(ImageMember.status == wanted)
    shared = and_(Image.visibility == "shared", Image.id.in_(members))
    seen: list[ColumnElement[bool]] = [mine, Image.visibility == "public", shared]
    if visibility in ("community", "all"):
        seen.append(Image.visibility == "community")
    return query.where(or_(*seen))


def _equal_or_in(
    query: Select[Image],
    column: Any,  # noqa: ANN401 - any Image column
    value: str | None,
    *,
    status: bool,
) -> Select[Image]:
    if value is None:
        return query
    values = value[3:].split(",") if value.startswith("in:") else [value]
    if status and any(v not in [str(s) for s in ImageStatus] for v in values):
        raise bad_request(f"status must be one of {', '.join(ImageStatus)}")
    return query.where(column.in_(values))


#: Spellings of os_hidden Glance accepts (oslo's bool_from_string, strict); openstacksdk
#: sends "True". ``protected`` takes only "true" / "false", as the reference says.
TRUE_WORDS = ("1", "t", "true", "on", "y", "yes")
FALSE_WORDS = ("0", "f", "false", "off", "n", "no")


def _boolean(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if name == "os_hidden" and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    if value not in ("true", "false"):
        raise bad_request(f"{name} must be 'true' or 'false' (lowercase)")
    return value == "true"


def _time_filter(
    query: Select[Image],
    column: Any,  # noqa: ANN401 - created_at or updated_at
    value: str | None,
) -> Select[Image]:
    if value is None:
        return query
    op, _, stamp = (
        value.partition(":") if value.split(":", 1)[0] in COMPARISONS else ("eq", "", value)
    )
    try:
        when = datetime.fromisoformat(stamp)  # "Z" is accepted since Python 3.11
    except ValueError as exc:
        raise bad_request(f"{value!r} is not OP:ISO-8601 (e.g. gte:2015-08-27T09:49:58Z)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # no zone given: UTC, as the reference says
    compare = {
        "gt": column > when, "gte": column >= when, "eq": column == when,
        "neq": column != when, "lt": column < when, "lte": column <= when,
    }  # fmt: skip
    return query.where(compare[op])


def _property_filters(query: Select[Image], request: Request) -> Select[Image]:
    # As in Glance, any other parameter filters on an extra property's value.
    for key, value in request.query_params.multi_items():
        if key not in KNOWN:
            props = select(ImageProperty.image_id).where(
                ImageProperty.name == key, ImageProperty.value == value
            )
            query = query.where(Image.id.in_(props))
    return query


def _sort_keys(sort: str | None, keys: list[str], dirs: list[str]) -> list[tuple[str, bool]]:
    """The sort as ``(key, ascending)`` pairs, ``id`` last."""
    if sort is not None and (keys or dirs):
        raise bad_request("use either sort or sort_key/sort_dir, not both")
    pairs: list[tuple[str, str]] = []
    if sort is not None:
        for part in sort.split(","):
            key, _, direction = part.strip().partition(":")
            pairs.append((key, direction or "desc"))
    else:
        keys = keys or ["created_at"]
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise bad_request("give one sort_dir, or one per sort_key")
        pairs = list(
            zip(
                keys,
                dirs * len(keys) if len(dirs) == 1 else dirs or ["desc"] * len(keys),
                strict=True,
            )
        )
    for key, direction in pairs:
        if key not in SORT_KEYS:
            raise bad_request(f"cannot sort by {key!r}; sort keys: {', '.join(SORT_KEYS)}")
        if direction not in ("asc", "desc"):
            raise bad_request(f"sort direction {direction!r} is neither asc nor desc")
    result = [(key, direction == "asc") for key, direction in pairs]
    if "id" not in {key for key, _ in result}:
        result.append(("id", result[-1][1] if result else False))
    return result


def _sort_expr(key: str) -> Any:  # noqa: ANN401 - a column or a COALESCE over it
    column = getattr(Image, key)
    return func.coalesce(column, NULL_AS[key]) if key in NULL_AS else column


def _marker(session: Any, marker: str, who: Identity) -> Image:  # noqa: ANN401
    image = session.get(Image, marker)
    if image is None or not access.can_see(session, image, who):
        raise bad_request(f"marker {marker} is not an image you can see")
    found: Image = image
    return found


def _after(marker: Image, keys: list[tuple[str, bool]]) -> ColumnElement[bool]:
    """Rows strictly after the marker in the sort order (keyset paging)."""
    return rows_after([(_sort_expr(key), _value(marker, key), asc) for key, asc in keys])


def _value(image: Image, key: str) -> Any:  # noqa: ANN401 - the column's Python value
    value = getattr(image, key)
    return NULL_AS[key] if value is None and key in NULL_AS else value
