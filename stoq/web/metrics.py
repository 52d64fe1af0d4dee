"""``GET /metrics`` of ``stoq serve``: the Prometheus metrics (docs/metrics.md), without a token (they
carry no file data: counts, durations, plugin and flag names, queue names).

:func:`install` adds the route and, around the app's lifespan, turns multiprocess mode on
(``stoq.metrics.ensure_dir``) before the server starts any scanning process, which inherits the
directory through its environment: the counts of ``stoq serve``'s own processes (embedded: the
scanning processes and their pools) are summed at every scrape, with the gauges read then (the
ledger's scans by state; in front of a cluster, the broker's queue depths). A private directory is
removed when the server stops.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import APIRouter, FastAPI, Request, Response

from stoq import metrics
from stoq.metrics_live import LiveCollector, queue_names
from stoq.config import Settings
from stoq.terminal import safe

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def scrape(request: Request) -> Response:
    """The Prometheus text exposition (a sync route: the gauges query the broker and the database)."""
    if not metrics.available():
        return Response("metrics unavailable: prometheus-client is not installed (pip install 'stoq-analysis[web]')\n",
                        status_code=503, media_type="text/plain; charset=utf-8")
    state = request.app.state
    live = getattr(state, "metrics_live", None)
    if live is None:
        settings: Settings = state.settings
        queues = queue_names() if settings.broker_url else []
        live = state.metrics_live = LiveCollector(settings.broker_url, queues, settings.resolved_database_url())
    body, content_type = metrics.exposition(live)
    return Response(body, media_type=content_type)


def install(app: FastAPI) -> None:
    """Adds ``/metrics`` to ``app`` and multiprocess mode to its lifespan (see the module docstring)."""
    app.include_router(router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        path = metrics.ensure_dir()
        if path is not None:
            print(f"stoq: /metrics sums the counts of this server's processes in {metrics.ENV}={safe(path)}",
                  file=sys.stderr, flush=True)
        try:
            async with inner(a) as state:
                yield state
        finally:
            metrics.cleanup()

    app.router.lifespan_context = lifespan
