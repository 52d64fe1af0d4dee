"""The REST API's routes (``/api/...``): thin HTTP over :class:`stoq.web.service.Service`.

Every answer is JSON (but the download, a zip): what a scanned file controls (names, plugin output)
is data inside it, served with ``X-Content-Type-Options: nosniff`` so that no browser renders it.
docs/web.md lists the routes; the OpenAPI schema is served at ``/openapi.json`` (docs/openapi.json).
"""

from __future__ import annotations

import re
import shutil
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from stoq.search import Query as SearchQuery, parse_when, parse_where
from stoq.web.service import Service, Unavailable, UsageError, spool

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
#: Documents the bearer scheme in the OpenAPI schema; the check itself is ``stoq.web.auth.AuthGate``,
#: which runs before the body is read.
bearer_scheme = HTTPBearer(auto_error=False, description="A token made by `stoq tokens create NAME`.")
router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(bearer_scheme)])


def service(request: Request) -> Service:
    """The app's service layer (``create_app`` puts it in ``app.state``)."""
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(service)]


def json_response(body: Any, status: int = 200) -> Response:
    """JSON as orjson writes it (documents are large: no second validation), never sniffed as HTML."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"x-content-type-options": "nosniff"})


# ------------------------------------------------------------------------------------------ schemas


class SubmittedScan(BaseModel):
    """A scan a submission started (one per uploaded file)."""

    scan_id: str
    filename: str = Field(description="The uploaded file's name (its last path component).")
    sha256: str
    size: int


class SubmitAnswer(BaseModel):
    """The answer to a submission: the scans it started, pending."""

    mode: str = Field(description="embedded or cluster")
    scans: list[SubmittedScan]


class ScanAnswer(BaseModel):
    """A scan's state; ``document`` once it is finished (docs/scan-document.schema.json)."""

    scan_id: str
    state: str = Field(description="pending, finished or failed")
    submitted_at: str | None = None
    finished_at: str | None = None
    error: str | None = Field(None, description="Why a failed scan failed.")
    document: dict[str, Any] | None = None


class ScanSummary(BaseModel):
    """A stored scan, short."""

    scan_id: str
    date: str
    payloads: int
    filename: str | None
    sha256: str | None
    mime: str | None
    size: int | None
    errors: int
    depths: list[int] | None = Field(None, description="By sha256: the depths the content sat at (0: the root).")


class PendingScan(BaseModel):
    """A submitted scan of that root content not stored: pending, or failed."""

    scan_id: str
    state: str
    filename: str | None
    submitted_at: str | None
    error: str | None


class ScanPage(BaseModel):
    """One page of scans, newest first; ``next_offset`` is null on the last page."""

    scans: list[ScanSummary]
    limit: int
    offset: int
    next_offset: int | None
    sha256: str | None = None
    pending: list[PendingScan] | None = None


class TreeError(BaseModel):
    plugin: str
    kind: str
    message: str


class TreeNode(BaseModel):
    """A payload of the tree and its children."""

    payload_id: str
    filename: str | None
    depth: int
    extracted_by: str | None
    sha256: str
    size: int
    mime: str
    flags: list[str]
    plugins: list[str] = Field(description="The plugins that returned output for it, in order.")
    duplicate_of: str | None
    errors: list[TreeError]
    children: list["TreeNode"]


class TreeAnswer(BaseModel):
    """The payload tree of a stored scan."""

    scan_id: str
    date: str
    payloads: int
    root: TreeNode | None


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A bad parameter (option, meta, date, sha256)."},
    401: {"model": Problem, "description": "No token, or an unknown or revoked one."},
    429: {"model": Problem, "description": "Over the token's rate limit; see Retry-After."},
}


# ------------------------------------------------------------------------------------------- routes


@router.post("/scans", status_code=202, response_model=SubmitAnswer,
             responses=ERRORS | {413: {"model": Problem, "description": "The request body is over web_max_upload."},
                                 503: {"model": Problem, "description": "The cluster cannot be reached."}})
def submit(svc: ServiceDep,
           file: Annotated[list[UploadFile], File(description="One or more files; one scan each.")],
           workers: Annotated[str | None, Form(description="The worker set, comma-separated ('none': no worker), as --workers.")] = None,
           option: Annotated[list[str] | None, Form(description="PLUGIN.OPTION=VALUE, repeatable, as -o.")] = None,
           meta: Annotated[list[str] | None, Form(description="KEY=VALUE submission metadata, repeatable, as --meta.")] = None,
           max_depth: Annotated[int | None, Form(ge=0, description="Deepest extracted level, as --max-depth.")] = None,
           ) -> Response:
    """Submits files: one scan each, answered at once with the scan ids (state pending). The files are
    streamed to disk, then to the archive; the scans run with the server's settings and these."""
    try:
        settings = svc.profile(workers, option or [], max_depth)
        given = svc.meta(meta or [])
    except UsageError as exc:
        raise HTTPException(400, str(exc)) from None
    directory = svc.new_spool()
    try:
        uploads = [spool(f.file, directory, i, f.filename) for i, f in enumerate(file)]
        made = svc.submit(uploads, settings, given, directory)
    except Unavailable as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise HTTPException(503, str(exc)) from None
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return json_response({"mode": svc.mode, "scans": [m.as_dict() for m in made]}, 202)


@router.get("/scans/{scan_id}", response_model=ScanAnswer,
            responses=ERRORS | {404: {"model": Problem, "description": "No such scan."}})
def scan(svc: ServiceDep, scan_id: Annotated[str, Path(max_length=64)]) -> Response:
    """A scan's state (pending, finished, failed) and, once finished, its document."""
    view = svc.scan(scan_id)
    if view is None:
        raise HTTPException(404, f"no scan {scan_id}")
    return json_response(view.as_dict())


def _page(svc: Service, sha256: str | None, limit: int, offset: int) -> Response:
    if sha256 is None:
        found = svc.search(SearchQuery(limit=limit, offset=offset))
        return json_response({"scans": found, "limit": limit, "offset": offset,
                              "next_offset": offset + limit if len(found) == limit else None})
    if not SHA256.match(sha256):
        raise HTTPException(400, "sha256: 64 hexadecimal digits")
    found = svc.scans_by_sha256(sha256, limit, offset)
    return json_response({"sha256": sha256.lower(), "scans": found, "pending": svc.pending_for(sha256),
                          "limit": limit, "offset": offset,
                          "next_offset": offset + limit if len(found) == limit else None})


Limit = Annotated[int, Query(ge=1, le=500, description="Scans per page.")]
Offset = Annotated[int, Query(ge=0, description="Scans skipped (the previous page's next_offset).")]


@router.get("/scans", response_model=ScanPage, responses=ERRORS)
def scans(svc: ServiceDep, sha256: Annotated[str | None, Query(description="Only scans holding this content, as root or child.")] = None,
          limit: Limit = 20, offset: Offset = 0) -> Response:
    """Stored scans, newest first; with ``sha256``, those holding that content (and, under
    ``pending``, submitted scans of it not stored yet)."""
    return _page(svc, sha256, limit, offset)


@router.get("/files/{sha256}/scans", response_model=ScanPage, responses=ERRORS)
def file_scans(svc: ServiceDep, sha256: str, limit: Limit = 20, offset: Offset = 0) -> Response:
    """The scans holding this content, as ``/api/scans?sha256=``."""
    return _page(svc, sha256, limit, offset)


@router.get("/search", response_model=ScanPage, responses=ERRORS)
def search(svc: ServiceDep,
           filename: Annotated[str | None, Query(description="Shell pattern on a payload's name, any case.")] = None,
           mime: Annotated[str | None, Query(description="Shell pattern on a payload's MIME type.")] = None,
           flag: Annotated[str | None, Query(description="A flag a payload carries.")] = None,
           plugin: Annotated[str | None, Query(description="A plugin that returned output for a payload.")] = None,
           yara: Annotated[str | None, Query(description="A YARA rule that matched a payload.")] = None,
           where: Annotated[list[str] | None, Query(description="PLUGIN.KEY=VALUE, a scalar of a plugin's output (repeatable).")] = None,
           since: Annotated[str | None, Query(description="Scanned at or after: ISO 8601, or 7d, 12h, 30m back.")] = None,
           until: Annotated[str | None, Query(description="Scanned before: as since.")] = None,
           limit: Limit = 20, offset: Offset = 0) -> Response:
    """Stored scans with a payload that matches every condition given (``stoq results`` searches),
    within the time range, newest first."""
    try:
        query = SearchQuery(filename=filename, mime=mime, flag=flag, plugin=plugin, yara=yara,
                            where=tuple(parse_where(w) for w in where or []),
                            since=parse_when(since) if since else None, until=parse_when(until) if until else None,
                            limit=limit, offset=offset)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    found = svc.search(query)
    return json_response({"scans": found, "limit": limit, "offset": offset,
                          "next_offset": offset + limit if len(found) == limit else None})


@router.get("/scans/{scan_id}/tree", response_model=TreeAnswer,
            responses=ERRORS | {404: {"model": Problem, "description": "No such scan."},
                                409: {"model": Problem, "description": "The scan is pending or failed: no document."}})
def tree(svc: ServiceDep, scan_id: Annotated[str, Path(max_length=64)]) -> Response:
    """The payload tree of a finished scan: each payload with its children, flags, plugins, errors."""
    found = svc.tree(scan_id)
    if found is None:
        view = svc.scan(scan_id)
        if view is None:
            raise HTTPException(404, f"no scan {scan_id}")
        raise HTTPException(409, f"scan {scan_id} is {view.state}: no document")
    return json_response(found)


@router.get("/payloads/{sha256}/download", response_class=Response,
            responses=ERRORS | {200: {"content": {"application/zip": {}},
                                      "description": "A zip (AES-256, password `infected`) holding the payload, named by its sha256."},
                                404: {"model": Problem, "description": "No scan saw it, or the archive lacks it."}})
def download(svc: ServiceDep, sha256: str) -> Response:
    """A payload from the archive, zipped with the password ``infected``; never served raw."""
    from stoq.web.download import zipped

    if not SHA256.match(sha256):
        raise HTTPException(400, "sha256: 64 hexadecimal digits")
    sha256 = sha256.lower()
    try:
        content = svc.payload(sha256)
    except Unavailable as exc:
        raise HTTPException(503, str(exc)) from None
    if content is None:
        raise HTTPException(404, f"payload {sha256} is not in the archive")
    return Response(zipped(sha256, content), media_type="application/zip",
                    headers={"content-disposition": f'attachment; filename="{sha256}.zip"',
                             "x-content-type-options": "nosniff"})
