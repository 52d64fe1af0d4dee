"""The result store's tables (SQLAlchemy 2 typed models); the Alembic migrations create the same."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

class SQLiteJSON(TypeDecorator):
    """JSON kept as TEXT on SQLite.

    SQLAlchemy's ``JSON`` is declared ``JSON`` there, which SQLite gives NUMERIC affinity: a top-level
    scalar such as ``123.0`` or ``-0.0`` is then stored as a number and comes back as ``123`` or
    ``0.0`` (and SQLAlchemy cannot even decode it). TEXT affinity keeps the JSON text as written.
    """

    impl = Text
    cache_ok = True

    def __init__(self, none_as_null: bool = False) -> None:
        super().__init__()
        self.none_as_null = none_as_null

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None and self.none_as_null:
            return None
        return orjson.dumps(value).decode()

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else orjson.loads(value)


def _json(none_as_null: bool = False) -> Any:
    return (JSON(none_as_null=none_as_null)
            .with_variant(JSONB(none_as_null=none_as_null), "postgresql")
            .with_variant(SQLiteJSON(none_as_null=none_as_null), "sqlite"))


JSONValue = _json()
#: The ``*_order`` hint columns: SQL NULL when there is nothing to record.
JSONHint = _json(none_as_null=True)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Scan(Base):
    __tablename__ = "scans"

    scan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    schema_version: Mapped[str] = mapped_column(String(16))
    #: The ``date`` exactly as written in the document.
    date: Mapped[str] = mapped_column(String(64))
    #: ``date`` parsed (UTC), for ordering and range queries; NULL if it does not parse.
    scanned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    source: Mapped[Any] = mapped_column(JSONValue)
    source_order: Mapped[Any | None] = mapped_column(JSONHint)
    payload_count: Mapped[int] = mapped_column(Integer)
    root_sha256: Mapped[str | None] = mapped_column(String(64), index=True)


class Payload(Base):
    __tablename__ = "payloads"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    md5: Mapped[str] = mapped_column(String(32))
    sha1: Mapped[str] = mapped_column(String(40))
    sha512: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    mime: Mapped[str] = mapped_column(String(255))
    #: Date of the first stored scan that contained this content.
    first_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ScanPayload(Base):
    __tablename__ = "scan_payloads"

    scan_id: Mapped[str] = mapped_column(String(64), ForeignKey("scans.scan_id", ondelete="CASCADE"),
                                         primary_key=True)
    payload_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: Position in ``results``.
    seq: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(String(255))
    depth: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("payloads.sha256"), index=True)
    filename: Mapped[str | None] = mapped_column(Text)
    extracted_by: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[Any] = mapped_column(JSONValue)
    meta_order: Mapped[Any | None] = mapped_column(JSONHint)
    duplicate_of: Mapped[str | None] = mapped_column(String(255))
    flags: Mapped[Any] = mapped_column(JSONValue)


class PluginResult(Base):
    __tablename__ = "plugin_results"
    __table_args__ = (
        UniqueConstraint("scan_id", "payload_id", "plugin"),
        ForeignKeyConstraint(["scan_id", "payload_id"], ["scan_payloads.scan_id", "scan_payloads.payload_id"],
                             ondelete="CASCADE"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    scan_id: Mapped[str] = mapped_column(String(64))
    payload_id: Mapped[str] = mapped_column(String(255))
    plugin: Mapped[str] = mapped_column(String(255), index=True)
    #: Position in the payload's ``workers``.
    ordinal: Mapped[int] = mapped_column(Integer)
    result: Mapped[Any] = mapped_column(JSONValue)
    result_order: Mapped[Any | None] = mapped_column(JSONHint)


class ScanErrorRow(Base):
    __tablename__ = "scan_errors"
    __table_args__ = (UniqueConstraint("scan_id", "payload_id", "plugin", "kind"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    scan_id: Mapped[str] = mapped_column(String(64), ForeignKey("scans.scan_id", ondelete="CASCADE"))
    payload_id: Mapped[str] = mapped_column(String(255))
    plugin: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    #: Position in ``errors``.
    seq: Mapped[int] = mapped_column(Integer)


class DirmonLedgerRow(Base):
    """A file ``stoq dirmon`` submitted (``stoq.dirmon``): written ``pending`` before the submission,
    ``submitted`` once published to the cluster, ``stored`` once its document is in the store,
    ``failed`` (with the reason) when it could not be submitted. One row per (path, content)."""

    __tablename__ = "dirmon_ledger"
    __table_args__ = (UniqueConstraint("path", "sha256"), UniqueConstraint("scan_id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    scan_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConnectorOutbox(Base):
    """A document a connector has not delivered yet (``stoq.outbox``): one row per connector per scan."""

    __tablename__ = "connector_outbox"
    __table_args__ = (Index("ix_connector_outbox_state_next_try", "state", "next_try"),)

    connector: Mapped[str] = mapped_column(String(255), primary_key=True)
    scan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``pending`` (to deliver), ``delivered``, or ``missing`` (the scan is not in the store).
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    #: When to try next (Unix time); NULL once delivered.
    next_try: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: The connector's options (JSON text), so that a catch-up rebuilds the same connector.
    options: Mapped[str] = mapped_column(Text)
    updated: Mapped[float] = mapped_column(Float)


SCANS = Scan.__table__
PAYLOADS = Payload.__table__
SCAN_PAYLOADS = ScanPayload.__table__
PLUGIN_RESULTS = PluginResult.__table__
SCAN_ERRORS = ScanErrorRow.__table__
DIRMON_LEDGER = DirmonLedgerRow.__table__
#: Every table the store owns, parents first (drop in reverse).
TABLES = (SCANS, PAYLOADS, SCAN_PAYLOADS, PLUGIN_RESULTS, SCAN_ERRORS)
# The rows written to them (columns, order, keys) are defined without SQLAlchemy in stoq.rows.


class ScanLedgerRow(Base):
    """A submitted scan, recorded before it is published (``stoq.ledger``): what is needed to publish
    it again, and where it stands (``pending``, ``finished``, ``failed``)."""

    __tablename__ = "scan_ledger"
    __table_args__ = (Index("ix_scan_ledger_state_last_attempt_at", "state", "last_attempt_at"),)

    scan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    root_sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(Text)
    #: The root reference as ``stoq.publish`` takes it (its archive place in ``at``).
    root: Mapped[Any] = mapped_column(JSONValue)
    #: The submission's profile (workers, plugin options, limits): republished without Redis.
    profile: Mapped[Any] = mapped_column(JSONValue)
    #: The waiting client's notification list, if any.
    notify: Mapped[str | None] = mapped_column(String(128))
    #: The verdicts list of a client that does not wait (``--no-wait``), if any.
    verdicts: Mapped[str | None] = mapped_column(String(128))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


SCAN_LEDGER = ScanLedgerRow.__table__


class ApiTokenRow(Base):
    """A token of the REST API (``stoq tokens``): only the sha256 of its secret is kept; ``revoked_at``
    is set by ``stoq tokens revoke`` (the row stays, so that ``stoq tokens list`` shows it)."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_name", "name"),
                      UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"))

    token_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


API_TOKENS = ApiTokenRow.__table__
