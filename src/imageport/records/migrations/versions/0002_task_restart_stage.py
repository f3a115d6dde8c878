"""Tasks remember the stage an admin retry restarts from.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("restart_stage", sa.String(length=32), nullable=True))
        batch.create_index("ix_tasks_lease_expires_at", ["lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_lease_expires_at")
        batch.drop_column("restart_stage")
