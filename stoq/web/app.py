"""The web front's application factory: ``create_app(settings) -> FastAPI`` (``stoq serve`` runs it
with uvicorn). docs/web.md describes the API.

The parts of the front add their routers in :func:`create_app`, at the place marked ``ROUTERS``; a
part that must be reachable without a token (``/metrics``) goes into ``PUBLIC_PATHS``.

``python -m stoq.web.app openapi`` prints the OpenAPI schema (docs/openapi.json; a test keeps the
two equal).
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterable

from fastapi import FastAPI

import stoq
from stoq.config import Settings
from stoq.web.auth import AuthGate, BodyLimit, RateLimiter, TokenBook
from stoq.web.service import Service

#: Paths served without a token (their answers carry no file data).
PUBLIC_PATHS: tuple[str, ...] = ("/metrics",
                                  "/ui")  # the pages check their session cookie themselves (stoq.web.session)

DESCRIPTION = """stoq's REST API: submit files, follow their scans, read documents and payload trees,
search the result store, download payloads (zipped, password `infected`).

Every route needs `Authorization: Bearer <token>` (tokens: `stoq tokens create NAME`), unless the
server runs with `--no-auth` on loopback. See docs/web.md."""


def create_app(settings: Settings, *, no_auth: bool = False, service: Service | None = None,
               public_paths: Iterable[str] = PUBLIC_PATHS) -> FastAPI:
    """The ASGI app on ``settings``' result store (and cluster, when ``broker_url`` is set).
    ``no_auth``: no token needed (``stoq serve`` allows it on loopback only). ``service``: one
    already made (else made here, on ``settings``); the app closes it when it stops."""
    svc = service if service is not None else Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        svc.close()

    app = FastAPI(title="stoq", version=stoq.__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # no Swagger UI: it loads scripts from a CDN
    app.state.settings = settings
    app.state.service = svc
    app.state.no_auth = no_auth

    # ---- ROUTERS: each part of the web front includes its own router here ---------------------
    from stoq.web import api

    app.include_router(api.router)
    from stoq.web import export_routes  # GET /api/scans/{id}/export/{stix|misp} (docs/exports.md)

    app.include_router(export_routes.router)

    from stoq.web import pages

    pages.install(app)

    from stoq.web import metrics as web_metrics

    web_metrics.install(app)  # /metrics (public: PUBLIC_PATHS)
    # (the HTML pages, /metrics and the exports are included here, each by its own module)
    # ---- end of ROUTERS -------------------------------------------------------------------------

    # The last added runs first: the token (and its rate) is checked before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.web_max_upload)
    app.add_middleware(AuthGate, book=None if no_auth else TokenBook(svc.store),
                       limiter=RateLimiter(settings.web_rate_limit), public=tuple(public_paths))
    return app


def openapi_schema(settings: Settings | None = None) -> dict[str, Any]:
    """The app's OpenAPI schema (what ``/openapi.json`` serves)."""
    settings = settings or Settings()
    return create_app(settings, service=_SchemaOnly(settings)).openapi()


class _SchemaOnly(Service):
    """A service that only exists to build the schema (no scans, no orphans to settle)."""

    def __init__(self, settings: Settings) -> None:  # noqa: super() not called: nothing to open
        self.settings, self.store, self.mode = settings, None, "embedded"  # type: ignore[assignment]


def _main(argv: list[str]) -> int:
    if argv != ["openapi"]:
        print("usage: python -m stoq.web.app openapi", file=sys.stderr)
        return 2
    import orjson

    sys.stdout.buffer.write(orjson.dumps(openapi_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
