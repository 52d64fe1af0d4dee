"""Alembic migrations of the result store (see :func:`stoq.store.upgrade` and :func:`stoq.store.alembic_config`).

A new migration must also bump :data:`stoq.store.HEAD_REVISION` (a test checks it).
"""
