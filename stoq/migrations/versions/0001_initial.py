"""Initial schema: scans, payloads, scan_payloads, plugin_results, scan_errors.

Revision ID: 0001
Revises:
Create Date: 2024-11-27

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Frozen copies of the column types in stoq.store as of this revision.
# JSON is TEXT on SQLite (TEXT affinity keeps the JSON text exactly; see stoq.tables.SQLiteJSON).
JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(sa.Text(), "sqlite")
JSON_HINT = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql") \
    .with_variant(sa.Text(), "sqlite")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.String(16), nullable=False),
        sa.Column("date", sa.String(64), nullable=False),
        sa.Column("scanned_at", TIMESTAMP, nullable=True),
        sa.Column("source", JSON_VALUE, nullable=False),
        sa.Column("source_order", JSON_HINT, nullable=True),
        sa.Column("payload_count", sa.Integer(), nullable=False),
        sa.Column("root_sha256", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("scan_id", name="pk_scans"),
    )
    op.create_index("ix_scans_scanned_at", "scans", ["scanned_at"])
    op.create_index("ix_scans_root_sha256", "scans", ["root_sha256"])

    op.create_table(
        "payloads",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("md5", sa.String(32), nullable=False),
        sa.Column("sha1", sa.String(40), nullable=False),
        sa.Column("sha512", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mime", sa.String(255), nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("sha256", name="pk_payloads"),
    )

    op.create_table(
        "scan_payloads",
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("payload_id", sa.String(255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(255), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("filename", sa.Text(), nullable=True),
        sa.Column("extracted_by", sa.String(255), nullable=True),
        sa.Column("meta", JSON_VALUE, nullable=False),
        sa.Column("meta_order", JSON_HINT, nullable=True),
        sa.Column("duplicate_of", sa.String(255), nullable=True),
        sa.Column("flags", JSON_VALUE, nullable=False),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.scan_id"], name="fk_scan_payloads_scan_id_scans",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sha256"], ["payloads.sha256"], name="fk_scan_payloads_sha256_payloads"),
        sa.PrimaryKeyConstraint("scan_id", "payload_id", name="pk_scan_payloads"),
    )
    op.create_index("ix_scan_payloads_sha256", "scan_payloads", ["sha256"])

    op.create_table(
        "plugin_results",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("payload_id", sa.String(255), nullable=False),
        sa.Column("plugin", sa.String(255), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("result", JSON_VALUE, nullable=False),
        sa.Column("result_order", JSON_HINT, nullable=True),
        sa.ForeignKeyConstraint(["scan_id", "payload_id"], ["scan_payloads.scan_id", "scan_payloads.payload_id"],
                                name="fk_plugin_results_scan_id_payload_id_scan_payloads", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_plugin_results"),
        sa.UniqueConstraint("scan_id", "payload_id", "plugin", name="uq_plugin_results_scan_id_payload_id_plugin"),
    )
    op.create_index("ix_plugin_results_plugin", "plugin_results", ["plugin"])

    op.create_table(
        "scan_errors",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("scan_id", sa.String(64), nullable=False),
        sa.Column("payload_id", sa.String(255), nullable=False),
        sa.Column("plugin", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.scan_id"], name="fk_scan_errors_scan_id_scans",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_scan_errors"),
        sa.UniqueConstraint("scan_id", "payload_id", "plugin", "kind",
                            name="uq_scan_errors_scan_id_payload_id_plugin_kind"),
    )


def downgrade() -> None:
    op.drop_table("scan_errors")
    op.drop_index("ix_plugin_results_plugin", table_name="plugin_results")
    op.drop_table("plugin_results")
    op.drop_index("ix_scan_payloads_sha256", table_name="scan_payloads")
    op.drop_table("scan_payloads")
    op.drop_table("payloads")
    op.drop_index("ix_scans_root_sha256", table_name="scans")
    op.drop_index("ix_scans_scanned_at", table_name="scans")
    op.drop_table("scans")
