"""Keyset paging: the rows that come strictly after a marker row in a multi-key sort order.

Used by the image and task lists. Unlike OFFSET paging, a page stays the same while rows are
added before it, and the database finds it with an index range instead of counting rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

#: One sort key: the SQL expression sorted by, the marker row's value of it, ascending or not.
SortKey = tuple[Any, Any, bool]


def rows_after(keys: Sequence[SortKey]) -> ColumnElement[bool]:
    """The condition for "strictly after the marker", given every sort key, tie-breaker last.

    For keys ``a, b, id`` that is ``a > a0 OR (a = a0 AND b > b0) OR (a = a0 AND b = b0 AND
    id > id0)``, with ``<`` for the descending keys.
    """
    clauses = []
    for index, (expr, value, ascending) in enumerate(keys):
        equal = [earlier == earlier_value for earlier, earlier_value, _ in keys[:index]]
        clauses.append(and_(*equal, expr > value if ascending else expr < value))
    if not keys:
        return or_(*clauses)
    # The same rows, plus a bound on the first key alone: databases do not derive it from the
    # OR, and without it an index on the sort keys is read from its start, past every row of
    # the earlier pages, instead of from the marker (a deep page would cost its depth).
    first, first_value, ascending = keys[0]
    bound = first >= first_value if ascending else first <= first_value
    return and_(bound, or_(*clauses))
