"""The filters of ``GET /v2/images``, parsed and applied as Glance 33's database layer does.

Every query parameter that is not paging, sorting, ``member_status`` or ``tag`` is a filter:

* ``name``, ``id``, ``status``, ``disk_format``, ``container_format``: ``VALUE`` or
  ``eq:VALUE`` (equality) or ``in:A,B,"C,D"`` (any of; a value with a comma is double-quoted,
  a quote inside it escaped with a backslash); any other ``OP:`` is 400 "Unable to filter by
  unknown operator", so a value holding a colon is written ``eq:a:b``. A value that is an ISO
  8601 time is taken whole. An unknown status matches nothing (200, empty), as in Glance.
* ``created_at``, ``updated_at``: ``OP:ISO-8601`` with ``gt gte eq neq lt lte`` (``eq`` when
  no operator is given; no zone is UTC).
* ``size_min``, ``size_max`` (and ``_min`` / ``_max`` of ``virtual_size``, ``min_ram`` and
  ``min_disk``): integers, else 400.
* ``os_hidden`` (``true`` or ``false`` in any case; hidden images are left out unless asked
  for), ``protected`` (``true`` or ``false`` exactly), else 400.
* ``owner``, ``checksum``, ``os_hash_value``, ``min_ram``, ``min_disk``, ``size``,
  ``virtual_size``: equality on the column (integers for the numeric ones, else 400).
* anything else: equality on the extra property of that name.

``visibility`` and ``changes-since`` are checked by the list itself (see listing.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, false, select

from imageport.api.errors import bad_request
from imageport.records import Image, ImageProperty, ImageStatus

#: Parameters the list reads itself: not filters.
NOT_FILTERS = frozenset(
    {"limit", "marker", "member_status", "tag", "sort", "sort_key", "sort_dir", "visibility"}
)
#: Columns filtered by ``eq:`` / ``in:`` (Glance's list).
LIST_COLUMNS = ("name", "id", "status", "container_format", "disk_format")
TIME_COLUMNS = ("created_at", "updated_at")
#: Columns filtered by plain equality; the integer ones also take ``_min`` and ``_max``.
TEXT_COLUMNS = ("owner", "checksum", "os_hash_value")
INTEGER_COLUMNS = ("size", "virtual_size", "min_ram", "min_disk")
COMPARISONS = ("gt", "gte", "eq", "neq", "lt", "lte")
#: One value of an ``in:`` list: a double-quoted string (backslash escapes), a run of
#: non-commas, or an empty value between two commas (Glance's split_filter_value_for_quotes).
_IN_VALUE = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)",?|([^,]+),?|,')
_STATUSES = frozenset(str(status) for status in ImageStatus)


def apply_filters(query: Select[Image], params: list[tuple[str, str]]) -> Select[Image]:
    """``query`` narrowed by every filter among ``params`` (name, value pairs)."""
    query = query.where(Image.os_hidden == _os_hidden(params))
    for key, value in params:
        if key in NOT_FILTERS or key == "os_hidden":
            continue
        query = query.where(_condition(key, value))
    return query


def _condition(key: str, value: str) -> ColumnElement[bool]:
    if key in LIST_COLUMNS:
        return _list_condition(key, value)
    if key in TIME_COLUMNS:
        return _time_condition(key, value)
    if key == "protected":
        if value not in ("true", "false"):
            raise bad_request(
                f"Invalid value '{value}' for 'protected' filter. "
                "Valid values are 'true' or 'false'."
            )
        return Image.protected == (value == "true")
    return _column_condition(key, value)


def _column_condition(key: str, value: str) -> ColumnElement[bool]:
    """A range or equality on a column, else equality on the extra property ``key``."""
    base, _, bound = key.rpartition("_")
    if bound in ("min", "max") and base in INTEGER_COLUMNS:
        number = _integer(value, "Unable to filter on a range with a non-numeric value.")
        column = getattr(Image, base)
        return column >= number if bound == "min" else column <= number  # type: ignore[no-any-return]
    if key in INTEGER_COLUMNS:
        return getattr(Image, key) == _integer(value, f"{key} must be an integer")  # type: ignore[no-any-return]
    if key in TEXT_COLUMNS:
        return getattr(Image, key) == value  # type: ignore[no-any-return]
    # As in Glance, any other parameter filters on an extra property's value.
    props = select(ImageProperty.image_id).where(
        ImageProperty.name == key, ImageProperty.value == value
    )
    return Image.id.in_(props)


def _os_hidden(params: list[tuple[str, str]]) -> bool:
    value = next((v for k, v in reversed(params) if k == "os_hidden"), "false")
    if value.lower() not in ("true", "false"):
        raise bad_request(
            f"Invalid value '{value.lower()}' for 'os_hidden' filter. "
            "Valid values are 'true' or 'false'."
        )
    return value.lower() == "true"


#: Integer filters must fit the database's BIGINT (SQLite cannot even bind a larger one).
_INT_LIMIT = 2**63


def _integer(value: str, message: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise bad_request(message) from None
    if not -_INT_LIMIT <= number < _INT_LIMIT:
        raise bad_request(f"{value} is out of range for an integer filter")
    return number


def split_operator(expression: str) -> tuple[str, str]:
    """``(operator, value)`` of ``OP:VALUE`` (``eq`` without one), as Glance splits it.

    An expression that is an ISO 8601 time whole is an equality, colons and all.
    """
    left, sep, right = expression.partition(":")
    if not sep or _is_time(expression):
        return "eq", expression
    return left, right


def split_in_values(value: str) -> list[str]:
    """The values of an ``in:`` list; 400 for a quote not opened after or closed before a comma.

    ``a,"b,c",d`` is ``["a", "b,c", "d"]``; ``a,,b`` has an empty value in the middle.
    """
    _check_quotes(value)
    return [quoted or plain for quoted, plain in _IN_VALUE.findall(value)]


def _check_quotes(value: str) -> None:
    """Glance's validate_quotes: a quote opens after a comma and closes before one."""
    opened = False
    for index, char in enumerate(value):
        if char != '"' or (index and value[index - 1] == "\\"):
            continue
        if not opened and index and value[index - 1] != ",":
            raise bad_request(
                f"Invalid filter value {value}. There is no comma before opening quotation mark."
            )
        if opened and index + 1 != len(value) and value[index + 1] != ",":
            raise bad_request(
                f"Invalid filter value {value}. There is no comma after closing quotation mark."
            )
        opened = not opened
    if opened:
        raise bad_request(f"Invalid filter value {value}. The quote is not closed.")


def _list_condition(key: str, expression: str) -> ColumnElement[bool]:
    operator, value = split_operator(expression)
    if operator == "in":
        values = split_in_values(value)
    elif operator == "eq":
        values = [value]
    else:
        raise bad_request(f"Unable to filter by unknown operator '{operator}'.")
    if key == "status":
        # Statuses are an enumeration in the records: one that does not exist matches nothing
        # (Glance answers an empty list, not an error).
        values = [v for v in values if v in _STATUSES]
        if not values:
            return false()
    column = getattr(Image, key)
    return column.in_(values)  # type: ignore[no-any-return]


def _time_condition(key: str, expression: str) -> ColumnElement[bool]:
    operator, stamp = split_operator(expression)
    try:
        when = datetime.fromisoformat(stamp)  # "Z" is accepted since Python 3.11
    except ValueError:
        raise bad_request(
            f'Bad "{key}" query filter format. Use ISO 8601 DateTime notation.'
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # no zone given: UTC, as the reference says
    column: Any = getattr(Image, key)
    compare = {
        "gt": column > when, "gte": column >= when, "eq": column == when,
        "neq": column != when, "lt": column < when, "lte": column <= when,
    }  # fmt: skip
    if operator not in compare:
        raise bad_request(f"Unable to filter by unknown operator '{operator}'.")
    return compare[operator]  # type: ignore[no-any-return]


def _is_time(expression: str) -> bool:
    try:
        datetime.fromisoformat(expression)
    except ValueError:
        return False
    return True
