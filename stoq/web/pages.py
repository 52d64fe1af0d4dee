"""The results view: server-rendered pages under ``/ui`` (Jinja2, autoescaped; one stylesheet served
from the package; no JavaScript): submit files, watch a scan until it is finished, read its payload
tree and each plugin's output, search past scans, download a payload zipped with the password
``infected``.

Browser sessions (the API token in an HttpOnly, SameSite=Strict cookie; a CSRF token in every form;
no script allowed by the Content-Security-Policy) are :mod:`stoq.web.session`'s; with ``--no-auth``
(loopback only) there is no sign-in.

Everything a file controls (names, MIME types, flags, plugin output, error messages) is HTML-escaped by
the templates' autoescape, after :func:`stoq.web.pagemodel.shown` has made invisible characters (bidi
overrides, controls) visible.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from stoq import __version__
from stoq.search import Query, parse_when
from stoq.web import pagemodel, session
from stoq.web.service import Service, Unavailable, UsageError, spool

__all__ = ["PREFIX", "install", "router"]

PREFIX = session.PREFIX
#: Seconds between reloads of a scan page while the scan runs.
REFRESH_SECONDS = 2
PAGE_SIZE = 25
#: A scan page shows each payload's plugin output in place (collapsed) up to this many payloads; past
#: it, a link to each payload's page (the page stays small).
INLINE_OUTPUTS = 100
TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HERE = Path(__file__).resolve().parent
_STATIC = {"stoq.css": "text/css; charset=utf-8"}

router = APIRouter(prefix=PREFIX, include_in_schema=False)
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every template, whatever its name
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(shown=pagemodel.shown, shown_lines=pagemodel.shown_lines, size=pagemodel.size_text,
                         plugin_json=pagemodel.plugin_json)


def install(app: FastAPI) -> None:
    """Adds the pages to ``app`` (``create_app`` calls this): ``/ui/...``, and ``/`` leading there."""
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def _home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/submit", status_code=303)


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def _render(request: Request, visit: session.Visit, name: str, status: int = 200, **context: Any) -> Response:
    html = templates.get_template(name).render(
        ui=PREFIX, static_url=f"{PREFIX}/static/stoq.css", version=__version__,
        auth_mode="token" if visit.auth_required else "none", signed_in=visit.signed_in,
        csrf=visit.csrf(), nav=context.pop("nav", ""), **context)
    return session.finish(HTMLResponse(html, status_code=status), request, visit)


def _message(request: Request, visit: session.Visit, status: int, heading: str, message: str) -> Response:
    return _render(request, visit, "message.html", status=status, heading=heading, message=message)


def _login_redirect(request: Request, visit: session.Visit) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return session.finish(RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}", status_code=303), request, visit)


def _gate(request: Request) -> tuple[session.Visit, Response | None]:
    """The visit, and the response to send instead of the page when it must sign in first."""
    visit = session.visit_of(request)
    if visit.auth_required and not visit.signed_in:
        return visit, _login_redirect(request, visit)
    return visit, None


# ------------------------------------------------------------------------------------------- routes


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The stylesheet (a fixed list of files: no path from the request reaches the file system)."""
    kind = _STATIC.get(name)
    if kind is None:
        return Response(status_code=404)
    return Response((_HERE / "static" / name).read_bytes(), media_type=kind,
                    headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})


@router.get("/login")
def login_form(request: Request, next: str = "") -> Response:
    visit = session.visit_of(request)
    if not visit.auth_required:
        return session.finish(RedirectResponse(f"{PREFIX}/submit", status_code=303), request, visit)
    return _render(request, visit, "login.html", next=session.local(next), message="")


@router.post("/login")
async def login(request: Request) -> Response:
    visit = await run_in_threadpool(session.visit_of, request)
    form = await session.checked_form(request, visit)
    if form is None:
        return _render(request, visit, "login.html", status=403, next="", message="The form had expired: please sign in again.")
    token = str(form.get("token", "")).strip()
    target = session.local(str(form.get("next", "")))
    if not visit.auth_required:
        return session.finish(RedirectResponse(target, status_code=303), request, visit)
    if not token or not await run_in_threadpool(session.token_valid, request, token):
        return _render(request, visit, "login.html", status=401, next=target, message="This token is not valid.")
    response = RedirectResponse(target, status_code=303)
    session.sign_in(response, request, token)
    return session.finish(response, request, visit)


@router.post("/logout")
async def logout(request: Request) -> Response:
    visit = await run_in_threadpool(session.visit_of, request)
    if await session.checked_form(request, visit) is None:
        return _message(request, visit, 403, "Not signed out", "The form had expired: reload the page and try again.")
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    session.sign_out(response)
    return session.finish(response, request, visit)


@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    return session.finish(RedirectResponse(f"{PREFIX}/submit", status_code=303), request, session.visit_of(request))


@router.get("/submit")
def submit_form(request: Request) -> Response:
    visit, gate = _gate(request)
    if gate is not None:
        return gate
    return _submit_page(request, visit, 200, _SubmitForm())


@dataclass
class _SubmitForm:
    """The submit form's fields as typed (given back when a submission is refused)."""

    workers: str = ""
    options: str = ""
    tlp: str = ""
    meta: str = ""

    @staticmethod
    def lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip()]


def _submit_page(request: Request, visit: session.Visit, status: int, form: _SubmitForm, message: str = "") -> Response:
    from stoq.registry import Registry

    workers = sorted(name for name, entry in Registry.discover().entries.items() if entry.category == "worker")
    recent = _rows(request, _service(request).search(Query(limit=8)))
    return _render(request, visit, "submit.html", status=status, nav="submit", form=form, message=message,
                   workers=workers, tlp_levels=TLP_LEVELS, recent=recent, rows=recent)


@router.post("/submit")
async def submit(request: Request) -> Response:
    """The form's files, one scan each, as ``POST /api/scans`` takes them; then the scan's page."""
    visit = await run_in_threadpool(session.visit_of, request)
    if visit.auth_required and not visit.signed_in:
        return _login_redirect(request, visit)
    form = await session.checked_form(request, visit)
    if form is None:
        return await run_in_threadpool(_submit_page, request, visit, 403, _SubmitForm(),
                                       "The form had expired: please submit again.")
    fields = _SubmitForm(*(str(form.get(k, "")) for k in ("workers", "options", "tlp", "meta")))
    uploads = [f for f in form.getlist("file") if isinstance(f, UploadFile) and f.filename]
    return await run_in_threadpool(_submitted, request, visit, fields, uploads)


def _submitted(request: Request, visit: session.Visit, fields: _SubmitForm, uploads: list[UploadFile]) -> Response:
    if not uploads:
        return _submit_page(request, visit, 400, fields, "Choose at least one file.")
    service = _service(request)
    meta = fields.lines(fields.meta) + ([f"tlp={fields.tlp}"] if fields.tlp else [])
    try:
        settings = service.profile(fields.workers.strip() or None, fields.lines(fields.options))
        given = service.meta(meta)
    except UsageError as exc:
        return _submit_page(request, visit, 400, fields, str(exc))
    directory = service.new_spool()
    try:
        spooled = [spool(f.file, directory, i, f.filename) for i, f in enumerate(uploads)]
        made = service.submit(spooled, settings, given, directory)
    except Unavailable as exc:
        shutil.rmtree(directory, ignore_errors=True)
        return _submit_page(request, visit, 503, fields, str(exc))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if len(made) == 1:
        return session.finish(RedirectResponse(f"{PREFIX}/scans/{made[0].scan_id}", status_code=303), request, visit)
    return _render(request, visit, "submitted.html", nav="submit", scans=[(m.scan_id, m.filename) for m in made])


#: What a scan page says while there is no document, by ledger state.
_STATE_TEXT = {
    "pending": "Being analysed: the tree appears here when the scan is finished.",
    "failed": "The scan failed before it produced a document.",
}


@router.get("/scans/{scan_id}")
def scan_page(request: Request, scan_id: str) -> Response:
    visit, gate = _gate(request)
    if gate is not None:
        return gate
    status = _service(request).scan(scan_id)
    if status is None:
        return _message(request, visit, 404, "No such scan", f"There is no scan {scan_id}.")
    if status.document is None:
        return _render(request, visit, "scan.html", view=None, scan_id=scan_id, state=status.state,
                       state_text=_STATE_TEXT.get(status.state, status.state), error=status.error,
                       submitted_at=status.submitted_at, refresh=REFRESH_SECONDS if status.state == "pending" else 0)
    return _render(request, visit, "scan.html", view=pagemodel.page_tree(status.document), scan_id=scan_id,
                   inline_outputs=status.document["payloads"] <= INLINE_OUTPUTS)


def _stored(request: Request, scan_id: str) -> tuple[session.Visit, pagemodel.PageTree | None, Response | None]:
    """The visit and the tree of a stored scan; or, instead of the tree, the answer to send (sign in
    first, no such scan)."""
    visit, gate = _gate(request)
    if gate is not None:
        return visit, None, gate
    document = _service(request).store.get(scan_id)
    if document is None:
        return visit, None, _message(request, visit, 404, "No such scan", f"There is no finished scan {scan_id}.")
    return visit, pagemodel.page_tree(document), None


@router.get("/scans/{scan_id}/payloads/{payload_id}")
def payload_page(request: Request, scan_id: str, payload_id: str) -> Response:
    visit, tree, refusal = _stored(request, scan_id)
    if tree is None:
        return refusal  # type: ignore[return-value]
    node = tree.by_id.get(payload_id)
    if node is None:
        return _message(request, visit, 404, "No such payload", f"Scan {scan_id} has no payload {payload_id}.")
    ancestors: list[pagemodel.Node] = []
    up = node.parent
    while up is not None:
        ancestors.insert(0, up)
        up = up.parent
    return _render(request, visit, "payload.html", scan_id=scan_id, node=node, ancestors=ancestors)


@router.get("/scans/{scan_id}/document.json")
def document_json(request: Request, scan_id: str) -> Response:
    """The scan document itself (``application/json``, shown as text by a browser: never as HTML)."""
    visit, tree, refusal = _stored(request, scan_id)
    if tree is None:
        return refusal  # type: ignore[return-value]
    body = orjson.dumps(tree.document, option=orjson.OPT_INDENT_2)
    return session.finish(Response(body, media_type="application/json"), request, visit)


@router.get("/scans/{scan_id}/payloads/{payload_id}/download")
def download(request: Request, scan_id: str, payload_id: str) -> Response:
    """The payload in a zip encrypted with the password ``infected``, as ``/api/payloads/SHA256/download``
    serves it (the member named by its sha256)."""
    from stoq.web.download import zipped

    visit, tree, refusal = _stored(request, scan_id)
    if tree is None:
        return refusal  # type: ignore[return-value]
    node = tree.by_id.get(payload_id)
    try:
        content = None if node is None else _service(request).payload(node.payload["sha256"])
    except Unavailable as exc:
        return _message(request, visit, 503, "Archive unavailable", str(exc))
    if node is None or content is None:
        return _message(request, visit, 404, "Not available", "That payload is not in the archive.")
    sha256 = node.payload["sha256"]
    response = Response(zipped(sha256, content), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{sha256}.zip"'})
    return session.finish(response, request, visit)


@dataclass
class ScanRow:
    """One scan in a list: its root, and what the whole scan found."""

    scan_id: str
    date: str
    name: str
    mime: str
    payloads: int
    rules: list[str]
    flags: list[str]
    errors: int


def _row(document: dict[str, Any]) -> ScanRow:
    tree = pagemodel.page_tree(document)
    rules = list(dict.fromkeys(pagemodel.shown(r) for n in tree.nodes for r in n.yara_rules))
    flags = list(dict.fromkeys(pagemodel.shown(f) for n in tree.nodes for f in n.payload["flags"]))
    date = str(document["date"])[:19].replace("T", " ")
    return ScanRow(str(document["scan_id"]), date, tree.root.name, pagemodel.shown(tree.root.payload["mime"]),
                   int(document["payloads"]), rules, flags, len(document["errors"]))


def _rows(request: Request, summaries: list[dict[str, Any]]) -> list[ScanRow]:
    """The rows of the scans the service found (each document read: the rows show its YARA rules and flags)."""
    store = _service(request).store
    documents = (store.get(s["scan_id"]) for s in summaries)
    return [_row(d) for d in documents if d is not None]


#: The search form's fields, as the query string names them.
SEARCH_FIELDS = ("filename", "mime", "flag", "plugin", "yara", "since", "until", "sha256")


def _query(given: dict[str, str], offset: int, limit: int) -> Query:
    """The search of the form's fields; ValueError for a date that is not one."""
    return Query(filename=given["filename"] or None, mime=given["mime"] or None, flag=given["flag"] or None,
                 plugin=given["plugin"] or None, yara=given["yara"] or None,
                 since=parse_when(given["since"]) if given["since"] else None,
                 until=parse_when(given["until"]) if given["until"] else None, limit=limit, offset=offset)


@router.get("/search")
def search_page(request: Request, page: int = 1) -> Response:
    visit, gate = _gate(request)
    if gate is not None:
        return gate
    given = {k: request.query_params.get(k, "").strip() for k in SEARCH_FIELDS}
    page = max(1, min(page, 100_000))
    offset = (page - 1) * PAGE_SIZE
    service = _service(request)
    if given["sha256"]:
        if not SHA256.fullmatch(given["sha256"]):
            return _render(request, visit, "search.html", status=400, nav="search", q=given, rows=[],
                           message="sha256: 64 hexadecimal digits")
        found = service.scans_by_sha256(given["sha256"], PAGE_SIZE + 1, offset)
    else:
        try:
            query = _query(given, offset, PAGE_SIZE + 1)
        except ValueError as exc:
            return _render(request, visit, "search.html", status=400, nav="search", q=given, rows=[], message=str(exc))
        found = service.search(query)
    rows = _rows(request, found[:PAGE_SIZE])
    kept = [(k, v) for k, v in given.items() if v]

    def url(n: int) -> str:
        return f"{PREFIX}/search?" + urlencode(kept + [("page", str(n))])

    heading = "Latest scans" if not kept else "Scans with " + ", ".join(f"{k} {v}" for k, v in kept)
    return _render(request, visit, "search.html", nav="search", q=given, message="", rows=rows, page=page,
                   heading=heading, prev_url=url(page - 1) if page > 1 else None,
                   next_url=url(page + 1) if len(found) > PAGE_SIZE else None)
