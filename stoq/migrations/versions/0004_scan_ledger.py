"""The scan ledger: every submitted scan, recorded before it is published (issue 15).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Frozen copies of the column types as of this revision (see 0001).
JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sa.Text(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scan_ledger",
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("root_sha256", sa.String(64), nullable=False),
        sa.Column("filename", sa.Text(), nullable=True),
        sa.Column("root", JSON_VALUE, nullable=False),
        sa.Column("profile", JSON_VALUE, nullable=False),
        sa.Column("notify", sa.String(128), nullable=True),
        sa.Column("verdicts", sa.String(128), nullable=True),
        sa.Column("submitted_at", TIMESTAMP, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("scan_id", name="pk_scan_ledger"),
    )
    op.create_index("ix_scan_ledger_state_last_attempt_at", "scan_ledger", ["state", "last_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_scan_ledger_state_last_attempt_at", table_name="scan_ledger")
    op.drop_table("scan_ledger")
