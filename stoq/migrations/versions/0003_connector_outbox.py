"""Connector outbox: documents a connector has not delivered yet, for catch-up.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "connector_outbox",
        sa.Column("connector", sa.String(255), nullable=False),
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("connector", "scan_id", name="pk_connector_outbox"),
    )
    op.create_index("ix_connector_outbox_state_next_try", "connector_outbox", ["state", "next_try"])


def downgrade() -> None:
    op.drop_index("ix_connector_outbox_state_next_try", table_name="connector_outbox")
    op.drop_table("connector_outbox")
