"""Events may be ``held``: stored, not acted on until the configuration covers their channel or template.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Hand-written. Replaces the CHECK constraint on ``events.status`` (SQLite: by alembic's batch mode, which copies the
table). Downgrading turns held events into ``ignored`` ones first (what 0001 stored for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("received", "queued", "processing", "dispatched", "sent", "ignored", "cancelled", "failed")
NEW_STATUSES = (*OLD_STATUSES, "held")


def _replace_check(statuses: Sequence[str]) -> None:
    allowed = ", ".join(f"'{s}'" for s in statuses)
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint(op.f("ck_events_status"), type_="check")
        batch.create_check_constraint(op.f("ck_events_status"), sa.text(f"status IN ({allowed})"))


def upgrade() -> None:
    _replace_check(NEW_STATUSES)


def downgrade() -> None:
    op.execute("UPDATE events SET status = 'ignored' WHERE status = 'held'")
    _replace_check(OLD_STATUSES)
