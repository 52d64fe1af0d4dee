"""Browser sessions of the results view (stoq/web/pages.py): the API token kept in a cookie, the CSRF
token of every form, and the headers of every page (docs/web-ui.md).

The API takes a Bearer token; a browser cannot send one on a link or a form, so the sign-in page takes
the token once and keeps it in a cookie (``stoq_session``: HttpOnly, so no script reads it;
SameSite=Strict, so no other site's page, link or form sends it; Secure behind HTTPS). Every request
checks it as the API checks a token: revoking the token ends the session. A POST also carries a CSRF
token, an HMAC of the session under a random per-browser cookie (``stoq_csrf``), and is refused when
its ``Origin`` is another site's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from stoq.web.auth import TokenBook

__all__ = ["CSRF_COOKIE", "HEADERS", "PREFIX", "SESSION_COOKIE", "Visit", "checked_form", "finish", "local", "sign_in",
           "sign_out", "token_valid", "visit_of"]

#: Where the pages are (stoq.web.pages).
PREFIX = "/ui"
SESSION_COOKIE = "stoq_session"
CSRF_COOKIE = "stoq_csrf"
#: Sent with every page: no script may run (there is none), no frame, no sniffing, no cache.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class Visit:
    """Who is asking: whether the server checks tokens, the session token (None without one), the
    browser's CSRF secret and whether it must be set."""

    auth_required: bool
    token: str | None
    csrf_secret: str
    new_csrf: bool

    @property
    def signed_in(self) -> bool:
        return self.token is not None

    def csrf(self) -> str:
        """The form token: binds the browser's secret to its session."""
        return hmac.new(self.csrf_secret.encode(), b"stoq-csrf|" + (self.token or "").encode(), hashlib.sha256).hexdigest()


def token_valid(request: Request, secret: str) -> bool:
    """Whether ``secret`` is a live API token (checked at every request: revoking it ends the session)."""
    return TokenBook(request.app.state.service.store).verify(secret) is not None


def visit_of(request: Request) -> Visit:
    """Who is asking (blocking: the token is looked up in the store)."""
    required = not request.app.state.no_auth
    token = request.cookies.get(SESSION_COOKIE)
    if not required or not token or not token_valid(request, token):
        token = None
    secret = request.cookies.get(CSRF_COOKIE)
    fresh = not secret or len(secret) < 32
    return Visit(required, token, secrets.token_urlsafe(32) if fresh else str(secret), fresh)


def same_origin(request: Request) -> bool:
    """False when the request says it comes from another site: its ``Origin`` (else its ``Referer``)
    names another host and port than the one it was sent to (``Host``), or is ``null`` (an opaque
    origin: a sandboxed frame, a ``data:`` page). Only the host and port are compared, so that a
    TLS-terminating proxy (https outside, http here) passes when it keeps the ``Host`` header."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True  # not a browser's form (browsers send Origin on every POST); the CSRF token decides
    return claimed != "null" and urlsplit(claimed).netloc == request.url.netloc


async def checked_form(request: Request, visit: Visit) -> Any:
    """The POSTed form, or None when its origin or CSRF token is wrong (the body is not read when the
    origin or the CSRF cookie already is)."""
    if not same_origin(request) or visit.new_csrf:
        return None
    form = await request.form()
    given = form.get("csrf")
    return form if isinstance(given, str) and hmac.compare_digest(given, visit.csrf()) else None


def sign_in(response: Response, request: Request, token: str) -> None:
    """Keeps a checked token in the browser: the session cookie (HttpOnly, SameSite=Strict, Secure over
    HTTPS, for the whole site, until the browser closes)."""
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def sign_out(response: Response) -> None:
    """Forgets the session (the token stays valid for the API until it is revoked)."""
    response.delete_cookie(SESSION_COOKIE, path="/")


def finish(response: Response, request: Request, visit: Visit) -> Response:
    """``response`` with the page headers, and the CSRF cookie when the browser has none yet."""
    response.headers.update(HEADERS)
    if visit.new_csrf:
        response.set_cookie(CSRF_COOKIE, visit.csrf_secret, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path=PREFIX)
    return response



def local(target: str) -> str:
    """A redirect target inside the pages only (never another site: ``//evil``, ``https://...``)."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/submit"
