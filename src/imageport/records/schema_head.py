"""The newest schema revision, and the SQLite schema at it, known without importing Alembic.

Importing Alembic's runtime costs about 0.3 s, and every command opens the database through
:meth:`~imageport.records.db.Database.upgrade`; almost always the schema is already at the
newest revision, or (a first ``imageport import`` in a new data directory) the SQLite file is
empty. So:

* :func:`migrations_head` reads the revision ids straight from the files in
  ``migrations/versions`` (text, no import) and returns the single head, or None whenever it
  cannot be sure (then the caller asks Alembic);
* ``sqlite_schema.json`` beside this module is the exact content the migrations leave in an
  empty SQLite database (every ``sqlite_master`` entry, in creation order, and every row:
  ``alembic_version``), recorded at one revision; :func:`create_sqlite_head` replays it.

Tests prove both against Alembic itself (``tests/unit/test_schema_head.py``): the head equals
Alembic's, and replaying the file gives the very dump the migrations give. After adding a
migration, regenerate the file with ``scripts/sqlite_schema.py``.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

VERSIONS_DIR = Path(__file__).parent / "migrations" / "versions"
SQLITE_SCHEMA = Path(__file__).parent / "sqlite_schema.json"

_REVISION = re.compile(r"^revision\s*(?::[^=\n]*)?=\s*(['\"])([^'\"\n]+)\1\s*$", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=\n]*)?=(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"(['\"])([^'\"\n]+)\1")


@cache
def migrations_head() -> str | None:
    """The one head revision of ``migrations/versions``, or None if unsure.

    None when a revision file has no single plain ``revision = "…"`` line, when a
    ``down_revision`` is not written on one line, or when there is not exactly one head: the
    caller then lets Alembic decide. (Alembic loads every ``*.py`` there but ``__init__``.)
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(VERSIONS_DIR.glob("*.py")):
        if path.name.startswith(("__init__", ".#")):
            continue
        text = path.read_text(encoding="utf-8")
        found = _REVISION.findall(text)
        downs = _DOWN_REVISION.findall(text)
        if len(found) != 1 or len(downs) != 1:
            return None
        value = downs[0].strip()
        named = [name for _, name in _QUOTED.findall(value)]
        if not named and value != "None":
            return None  # a down_revision spread over lines, or computed: not ours to read
        revisions.add(found[0][1])
        parents.update(named)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def sqlite_schema() -> tuple[str | None, list[str]]:
    """The revision ``sqlite_schema.json`` was recorded at, and its statements in order."""
    try:
        recorded = json.loads(SQLITE_SCHEMA.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, []
    return recorded["revision"], recorded["statements"]


def create_sqlite_head(connection: Connection) -> bool:
    """Create the newest schema in an empty SQLite database, inside the caller's transaction.

    Returns False, doing nothing, unless the database holds nothing at all and
    ``sqlite_schema.json`` was recorded at :func:`migrations_head` (then the migrations must
    run instead).
    """
    head = migrations_head()
    revision, statements = sqlite_schema()
    if head is None or revision != head:
        return False
    if connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar():
        return False
    for statement in statements:
        connection.exec_driver_sql(statement)
    return True


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_dump(connection: Connection) -> list[str]:
    """What a SQLite database holds, as SQL statements.

    Each schema entry's text in creation order, then every row of every table as an INSERT
    (tables by name, rows sorted).
    """
    dump: list[str] = list(
        connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
        ).scalars()
    )
    tables: list[str] = list(
        connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        ).scalars()
    )
    for table in tables:
        info = connection.exec_driver_sql(f"PRAGMA table_info({_quoted(table)})").all()
        values = " || ',' || ".join(f"quote({_quoted(row[1])})" for row in info)
        rows: list[str] = list(
            connection.exec_driver_sql(
                f"SELECT 'INSERT INTO {_quoted(table)} VALUES(' || {values} || ')' "  # noqa: S608 - names from sqlite_master
                f"FROM {_quoted(table)}"
            ).scalars()
        )
        dump.extend(sorted(rows))
    return dump


def render_sqlite_schema(revision: str, dump: list[str]) -> str:
    """The text of ``sqlite_schema.json`` for ``dump`` taken at ``revision``."""
    recorded = {
        "about": "The SQLite database the migrations build from an empty file. Generated: "
        "do not edit; run scripts/sqlite_schema.py after adding a migration.",
        "revision": revision,
        "statements": dump,
    }
    return json.dumps(recorded, indent=1) + "\n"
