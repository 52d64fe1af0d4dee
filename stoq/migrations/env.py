"""Alembic environment for the result store.

Configured programmatically (no alembic.ini): :func:`stoq.store.alembic_config` sets
``script_location`` to this package and passes either an open ``connection`` (what
:func:`stoq.store.upgrade` and :meth:`stoq.store.Store.open` do, inside their own locked transaction)
or a ``url`` in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context

from stoq.store import _make_engine, _url
from stoq.tables import Base

config = context.config
target_metadata = Base.metadata


def _url_option() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass config.attributes['connection'] or ['url']")
    return url


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url_option(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = _make_engine(_url(_url_option()))
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
