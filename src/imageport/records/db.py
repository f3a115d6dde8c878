"""The database handle: engine, transactional sessions, and the Alembic upgrade and check.

One :class:`Database` per process (create it after fork). ``upgrade()`` is safe to call at
every start, from many processes at once: on PostgreSQL it holds an advisory lock for the
whole migration transaction, on SQLite an immediate (write) transaction does the same job.
The Alembic environment lives in this package (``records/migrations``), so no ``alembic.ini``
is needed at run time.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Alembic is imported inside the methods that need it, never here: its runtime costs about
# 0.3 s to import, and upgrade() mostly finds the schema at head without it (schema_head.py).
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError, SAWarning
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from imageport.errors import ConfigurationError
from imageport.records.base import Base
from imageport.records.schema_head import create_sqlite_head, migrations_head

if TYPE_CHECKING:
    from collections.abc import Iterator
    from sqlite3 import Connection as SQLiteConnection

    from alembic.config import Config
    from sqlalchemy.engine import URL

#: Directory of the Alembic environment shipped inside the package.
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating ("imgport" in ASCII).
MIGRATION_LOCK_KEY = 0x696D67706F7274
#: Milliseconds SQLite waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_LOCKED_RETRIES = 20  # attempts at an upgrade SQLite refused as locked without waiting


def alembic_config(connection: Connection | None = None) -> Config:
    """Return an Alembic config pointing at the packaged migrations.

    Args:
        connection: the connection ``env.py`` should migrate, if any.
    """
    from alembic.config import Config  # noqa: PLC0415 - see the note on the imports

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _normalize_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        # psycopg 3 is the driver we ship; SQLAlchemy would default to psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_on_connect(dbapi_connection: SQLiteConnection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so a concurrent switch to WAL waits instead of failing.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        # WAL with synchronous=NORMAL is still crash-safe for the database (it may lose the
        # last commits on power loss, never corrupt); FULL costs an fsync per status change.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _create_engine(url: URL, *, echo: bool) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if not url.database or url.database == ":memory:":
        # An in-memory database exists once per connection: share a single one.
        kwargs["poolclass"] = StaticPool
    else:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    return engine


class Database:
    """An engine plus a session factory, and the schema's upgrade and check.

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://…``
            (plain ``postgresql://`` is taken to mean psycopg 3).
        echo: log every SQL statement.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = _normalize_url(url)
        self.engine = _create_engine(self.url, echo=echo)
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"<Database {self.url.render_as_string(hide_password=True)}>"

    @property
    def is_sqlite(self) -> bool:
        """True when the database is SQLite."""
        return self.url.get_backend_name() == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session inside a transaction: commit on exit, roll back on an exception."""
        with self._sessions.begin() as session:
            yield session

    def upgrade(self, revision: str = "head", *, shortcuts: bool = True) -> None:
        """Migrate the schema to ``revision`` (default: the newest); a no-op when there.

        With ``shortcuts`` (the default), upgrading to head needs no Alembic when the recorded
        revision already is the head, nor on an empty SQLite database: that gets the schema
        the migrations would build, replayed from ``sqlite_schema.json`` (see
        :mod:`imageport.records.schema_head`; tests prove both equal to Alembic's work).

        Raises:
            ConfigurationError: if the database holds a revision these migrations do not know.
        """
        shortcuts = shortcuts and revision == "head"
        if shortcuts and self._at_head():
            return
        for attempt in range(SQLITE_LOCKED_RETRIES + 1):
            try:
                self._upgrade_once(revision, replay=shortcuts and self.is_sqlite)
            except OperationalError as exc:
                # SQLite answers "database is locked" at once, without waiting out the busy
                # timeout, when two connections that each read first both want to write (it
                # would deadlock otherwise): that happens when processes start together on a
                # new file, while one switches it to WAL. Try again; the winner's upgrade
                # makes the next attempt a no-op.
                locked = self.is_sqlite and "locked" in str(exc.orig)
                if not locked or attempt == SQLITE_LOCKED_RETRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))
            else:
                return

    def upgrade_with_alembic(self, revision: str = "head") -> None:
        """:meth:`upgrade` through Alembic's migrations always, with no shortcut."""
        self.upgrade(revision, shortcuts=False)

    def _at_head(self) -> bool:
        """Whether the one recorded revision is the migrations' head (False when unsure)."""
        head = migrations_head()
        if head is None:
            return False
        try:
            with self.engine.connect() as connection:
                recorded: list[str] = list(
                    connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
                )
        except DBAPIError:
            return False  # no alembic_version table yet: a new database
        return recorded == [head]

    def _upgrade_once(self, revision: str, *, replay: bool) -> None:
        with self.engine.connect() as connection:
            self._lock_for_migration(connection)
            if replay and create_sqlite_head(connection):
                connection.commit()
                return
            from alembic import command  # noqa: PLC0415 - see the note on the imports
            from alembic.util import CommandError  # noqa: PLC0415

            try:
                command.upgrade(alembic_config(connection), revision)
            except CommandError as exc:
                raise ConfigurationError(
                    f"cannot migrate the database: {exc}", code="schema_unknown"
                ) from exc
            # Alembic runs inside our transaction; committing also drops the lock.
            connection.commit()

    def _lock_for_migration(self, connection: Connection) -> None:
        if self.is_sqlite:
            # Take the write lock now, so a second process waits rather than racing DDL.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif self.url.get_backend_name() == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )

    def current_revision(self) -> str | None:
        """Return the schema revision recorded in the database (None when empty)."""
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def check(self) -> None:
        """Make sure the database is at the newest revision and matches the models.

        Raises:
            ConfigurationError: with ``code`` ``schema_out_of_date`` if migrations are
                pending, or ``schema_mismatch`` (listing the differences) if the models
                and the migrated schema differ.
        """
        from alembic.autogenerate import compare_metadata  # noqa: PLC0415
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
        from alembic.script import ScriptDirectory  # noqa: PLC0415

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with self.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "render_as_batch": self.is_sqlite}
            )
            current = context.get_current_revision()
            if current != head:
                raise ConfigurationError(
                    f"database schema is at revision {current}, the newest is {head}: "
                    "run `imageport db upgrade`",
                    code="schema_out_of_date",
                )
            with warnings.catch_warnings():
                # SQLite cannot reflect an expression index (ix_images_name_order): SQLAlchemy
                # says so and skips it, so that one index is compared on PostgreSQL only.
                warnings.filterwarnings(
                    "ignore", "Skipped unsupported reflection of expression-based index", SAWarning
                )
                warnings.filterwarnings(
                    "ignore", "autogenerate skipping metadata-specified expression-based index"
                )
                diffs = compare_metadata(context, Base.metadata)
        if diffs:
            listed = "; ".join(repr(diff) for diff in diffs)
            raise ConfigurationError(
                f"models and migrations differ, write a migration: {listed}",
                code="schema_mismatch",
            )

    def dispose(self) -> None:
        """Close every pooled connection (call before fork and at shutdown)."""
        self.engine.dispose()
