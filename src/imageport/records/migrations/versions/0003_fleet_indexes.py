"""Indexes for the fleet at scale: the workers' fair-share pick and the image list's pages.

* ``ix_tasks_pending_fifo`` (status, owner, created_at): the distinct projects with pending
  imports and each one's oldest, one index probe each (workers/fairshare.py);
* ``ix_images_created_at_id`` and ``ix_images_name_order``: the image list's default order and
  its name order, so a page — a deep marker page too — is an index range;
* ``ix_image_tags_value`` and ``ix_image_properties_value``: the list's tag and property
  filters (a hash index for property values on PostgreSQL: a btree entry cannot hold the
  65,535 characters Glance allows a value).

On a large existing catalog the upgrade takes a while and holds writes to these tables until
the indexes are built (plain CREATE INDEX, inside the migration's transaction).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_pending_fifo", "tasks", ["status", "owner", "created_at"])
    op.create_index("ix_images_created_at_id", "images", ["created_at", "id"])
    op.create_index(
        "ix_images_name_order", "images", [sa.text("coalesce(name, '')"), "created_at", "id"]
    )
    op.create_index("ix_image_tags_value", "image_tags", ["value", "image_id"])
    op.create_index(
        "ix_image_properties_value", "image_properties", ["value"], postgresql_using="hash"
    )


def downgrade() -> None:
    op.drop_index("ix_image_properties_value", table_name="image_properties")
    op.drop_index("ix_image_tags_value", table_name="image_tags")
    op.drop_index("ix_images_name_order", table_name="images")
    op.drop_index("ix_images_created_at_id", table_name="images")
    op.drop_index("ix_tasks_pending_fifo", table_name="tasks")
