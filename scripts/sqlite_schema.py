#!/usr/bin/env python3
"""Regenerate src/imageport/records/sqlite_schema.json after adding a migration.

Runs every migration through Alembic on an empty SQLite file and records what it holds, so a
new embedded database can be created without Alembic (imageport.records.schema_head);
tests/unit/test_schema_head.py fails until the file is current.
"""

from __future__ import annotations

import sys
import tempfile

from imageport.records.db import Database
from imageport.records.schema_head import SQLITE_SCHEMA, render_sqlite_schema, sqlite_dump


def main() -> int:
    """Write the file; print where and at which revision."""
    with tempfile.TemporaryDirectory() as tmp:
        database = Database(f"sqlite:///{tmp}/schema.db")
        try:
            database.upgrade_with_alembic()
            revision = database.current_revision()
            with database.engine.connect() as connection:
                dump = sqlite_dump(connection)
        finally:
            database.dispose()
    if revision is None:
        print("the migrations recorded no revision", file=sys.stderr)  # noqa: T201
        return 1
    SQLITE_SCHEMA.write_text(render_sqlite_schema(revision, dump), encoding="utf-8")
    print(f"wrote {SQLITE_SCHEMA} at revision {revision}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
