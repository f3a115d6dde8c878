"""The declarative base, the portable column types and the clock of the records package.

``Base`` carries a constraint naming convention, so every index, key and constraint has a
name that is the same on SQLite and PostgreSQL and Alembic migrations can refer to it.
``TZDateTime`` always hands back aware UTC datetimes, even from SQLite, which stores none.
``StrEnumType`` stores a ``StrEnum`` as its plain string value in a ``VARCHAR`` column.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from sqlalchemy import DateTime, Dialect, MetaData, String
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from imageport.records.states import (
    ImageStatus,
    MemberStatus,
    StageStatus,
    TaskStatus,
    Visibility,
)

#: Names for every constraint and index, so migrations are identical on every database.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

E = TypeVar("E", bound=StrEnum)

#: Length of the VARCHAR column that holds an enum value (the longest is "pending_delete").
ENUM_LENGTH = 32


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class TZDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned as an aware UTC datetime.

    PostgreSQL keeps it in a ``timestamp with time zone``; SQLite keeps the naive UTC wall
    time, and the zone is put back on the way out. Naive datetimes are refused on the way in,
    because their meaning would depend on the machine that wrote them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC on SQLite).

        Raises:
            ValueError: if the datetime is naive.
        """
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        """Return the stored time as an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(TypeDecorator[E]):
    """A ``StrEnum`` kept as its string value in a ``VARCHAR`` (no native database enum).

    Plain strings are accepted on the way in if they name a member; the way out always
    yields the member, so ``image.status is ImageStatus.ACTIVE`` holds after a load.
    """

    impl = String(ENUM_LENGTH)
    cache_ok = True

    def __init__(self, enum_cls: type[E], length: int = ENUM_LENGTH) -> None:
        super().__init__(length)
        self.enum_cls = enum_cls

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:  # noqa: ARG002
        """Store the member's value; a string must name a member.

        Raises:
            ValueError: if the value is not a member of the enum.
        """
        if value is None:
            return None
        return self.enum_cls(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:  # noqa: ARG002
        """Turn the stored string back into the enum member."""
        if value is None:
            return None
        return self.enum_cls(value)

    @property
    def python_type(self) -> type[E]:
        """The enum class, so evaluators and introspection see the right type."""
        return self.enum_cls


class Base(DeclarativeBase):
    """Declarative base of every imageport table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    #: ``Mapped[...]`` annotations that pick a column type without saying it each time.
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: TZDateTime(),
        ImageStatus: StrEnumType(ImageStatus),
        TaskStatus: StrEnumType(TaskStatus),
        StageStatus: StrEnumType(StageStatus),
        Visibility: StrEnumType(Visibility),
        MemberStatus: StrEnumType(MemberStatus),
    }
