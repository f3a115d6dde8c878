"""The Alembic-free shortcuts of Database.upgrade() agree with Alembic itself.

``migrations_head()`` must name Alembic's head, and the recorded SQLite schema must be exactly
what the migrations build from an empty file: same ``sqlite_master`` entries in the same order,
same rows. If a new migration makes these fail, run ``scripts/sqlite_schema.py``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.script import ScriptDirectory

from imageport.records import Database, schema_head
from imageport.records.db import alembic_config
from imageport.records.schema_head import (
    SQLITE_SCHEMA,
    migrations_head,
    render_sqlite_schema,
    sqlite_dump,
    sqlite_schema,
)

REGENERATE = "run scripts/sqlite_schema.py to record the new schema"


@pytest.fixture
def open_database(tmp_path):
    opened = []

    def open_(name):
        database = Database(f"sqlite:///{tmp_path}/{name}.db")
        opened.append(database)
        return database

    yield open_
    for database in opened:
        database.dispose()


def _dump(database):
    with database.engine.connect() as connection:
        return sqlite_dump(connection), connection.exec_driver_sql("PRAGMA user_version").scalar()


def test_the_head_read_from_the_files_is_alembics():
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    assert migrations_head() == head


def test_the_recorded_schema_is_at_the_head():
    revision, statements = sqlite_schema()
    assert revision == migrations_head(), REGENERATE
    assert statements


def test_the_recorded_schema_is_what_the_migrations_build(open_database):
    migrated = open_database("migrated")
    migrated.upgrade_with_alembic()
    dump, _ = _dump(migrated)
    assert SQLITE_SCHEMA.read_text(encoding="utf-8") == render_sqlite_schema(
        migrated.current_revision(), dump
    ), REGENERATE


def test_a_new_sqlite_database_equals_a_migrated_one(open_database):
    migrated, replayed = open_database("migrated"), open_database("replayed")
    migrated.upgrade_with_alembic()
    replayed.upgrade()
    assert _dump(replayed) == _dump(migrated)
    assert replayed.current_revision() == migrated.current_revision() == migrations_head()
    replayed.check()  # and the models match it, as Alembic's autogenerate compares them


def test_a_new_sqlite_database_is_created_without_alembic(tmp_path):
    # In a fresh interpreter: no alembic module may be loaded by creating it, or by opening
    # it again at head.
    code = (
        "import sys\n"
        "from imageport.records import Database\n"
        f"db = Database('sqlite:///{tmp_path}/new.db')\n"
        "db.upgrade()\n"
        "db.upgrade()\n"
        "db.dispose()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_database_behind_the_head_is_migrated_by_alembic(open_database):
    database = open_database("old")
    database.upgrade_with_alembic("0002")
    database.upgrade()
    assert database.current_revision() == migrations_head()
    database.check()


def test_a_non_empty_database_is_never_replayed_over(open_database):
    database = open_database("other")
    with database.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    database.upgrade()  # through Alembic: the recorded schema assumes an empty file
    assert database.current_revision() == migrations_head()
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM unrelated").scalar() == 0


@pytest.mark.parametrize(
    ("files", "head"),
    [
        ({"a.py": 'revision = "1"\ndown_revision = None\n'}, "1"),
        (
            {
                "a.py": 'revision: str = "1"\ndown_revision: str | None = None\n',
                "b.py": 'revision: str = "2"\ndown_revision: str | None = "1"\n',
            },
            "2",
        ),
        # Two heads, a merge written over lines, or a file without a revision: unsure.
        (
            {
                "a.py": 'revision = "1"\ndown_revision = None\n',
                "b.py": 'revision = "2"\ndown_revision = "1"\n',
                "c.py": 'revision = "3"\ndown_revision = "1"\n',
            },
            None,
        ),
        (
            {
                "a.py": 'revision = "1"\ndown_revision = None\n',
                "b.py": 'revision = "2"\ndown_revision = (\n    "1",\n)\n',
            },
            None,
        ),
        ({"a.py": 'revision = "1"\ndown_revision = None\n', "b.py": "x = 1\n"}, None),
        # A parent no file defines: unsure.
        ({"a.py": 'revision = "2"\ndown_revision = "1"\n'}, None),
    ],
)
def test_migrations_head_is_none_when_unsure(tmp_path, monkeypatch, files, head):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    monkeypatch.setattr(schema_head, "VERSIONS_DIR", tmp_path)
    migrations_head.cache_clear()
    try:
        assert migrations_head() == head
    finally:
        migrations_head.cache_clear()
