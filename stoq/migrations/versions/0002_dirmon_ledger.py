"""dirmon's ledger: the files a directory monitor has submitted, for exactly-once across restarts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dirmon_ledger",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dirmon_ledger"),
        sa.UniqueConstraint("path", "sha256", name="uq_dirmon_ledger_path_sha256"),
        sa.UniqueConstraint("scan_id", name="uq_dirmon_ledger_scan_id"),
    )
    op.create_index("ix_dirmon_ledger_state", "dirmon_ledger", ["state"])


def downgrade() -> None:
    op.drop_index("ix_dirmon_ledger_state", table_name="dirmon_ledger")
    op.drop_table("dirmon_ledger")
