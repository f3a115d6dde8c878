"""Alembic environment of imageport, shipped inside the package.

At run time ``Database.upgrade()`` passes an open connection in ``config.attributes``, already
inside a transaction that holds the migration lock. Developers can also run the Alembic CLI
with the ``alembic.ini`` beside this file and a URL given as ``-x url=...``::

    alembic -c src/imageport/records/migrations/alembic.ini -x url=sqlite:////tmp/dev.db \
        upgrade head
    alembic -c src/imageport/records/migrations/alembic.ini -x url=sqlite:////tmp/dev.db \
        revision --autogenerate --rev-id 0002 -m "what changed"

then clean the generated file (``ruff check --fix``, ``ruff format``) and read it through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from alembic import context
from sqlalchemy import Connection, String, create_engine, pool

from imageport.records import models  # noqa: F401 - registers the tables on Base.metadata
from imageport.records.base import Base, StrEnumType, TZDateTime

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

config = context.config
target_metadata = Base.metadata


def _render_item(kind: str, obj: object, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write our column types as the plain SQLAlchemy types they store, so migrations
    never import imageport code (a later refactor must not break an old migration)."""
    del autogen_context
    if kind == "type" and isinstance(obj, TZDateTime):
        return "sa.DateTime(timezone=True)"
    if kind == "type" and isinstance(obj, StrEnumType):
        impl = obj.impl_instance
        assert isinstance(impl, String)  # noqa: S101 - StrEnumType is a VARCHAR by design
        return f"sa.String(length={impl.length})"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        # SQLite cannot ALTER most things: let future migrations copy-and-move tables.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL: alembic -x url=... (see env.py)")
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
