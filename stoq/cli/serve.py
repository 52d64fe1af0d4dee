"""``stoq serve`` (the REST API, docs/web.md) and ``stoq tokens`` (its tokens).

Exit codes of ``stoq serve``: 0 never (it serves until stopped); 2 usage (``--no-auth`` on a host
that is not loopback); 4 configuration (the ``web`` extra missing, a bad setting, the address cannot
be bound); 5 result store (unreachable or not migrated); 130 stopped by SIGINT, 143 by SIGTERM,
after a clean shutdown (a scan running embedded is stopped, its scan failed).

Exit codes of ``stoq tokens``: 0 done; 2 usage (a bad name, a name with a live token); 5 result
store; 6 ``revoke`` of a name with no live token.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import orjson
import typer

from stoq.cli import ExitCode, StoqTyper, app, fail, say
from stoq.terminal import safe

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="stoq.toml to use.")]

tokens_app = StoqTyper(help="Tokens of the REST API (stoq serve): create, list, revoke.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost`` resolving only to them."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host.lower() != "localhost":
        return False
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in found)


def _settings(config: Path | None) -> Any:
    from stoq.config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: one the system picks)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", ExitCode.CONFIG) from None
    sock.set_inheritable(True)
    return sock


@app.command()
def serve(host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one, said on stderr).")] = 8000,
          no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without tokens: refused unless the host is loopback.")] = False,
          config: ConfigOpt = None) -> None:
    """Serve the REST API (docs/web.md): submit, scans, search, payload trees, downloads."""
    if no_auth and not is_loopback(host):
        raise fail(f"--no-auth is refused on {host}: only on a loopback address (127.0.0.1, ::1, localhost); "
                   "elsewhere, give clients tokens (`stoq tokens create NAME`)", ExitCode.USAGE)
    try:
        import uvicorn

        from stoq.web.app import create_app
    except ImportError as exc:
        raise fail(f"stoq serve needs the web extra: pip install 'stoq-analysis[web]' ({exc})", ExitCode.CONFIG) from None
    from stoq.store import NotMigrated, StoreError
    from stoq.web.service import Service

    settings = _settings(config)
    try:
        service = Service(settings)
    except (NotMigrated, StoreError) as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    sock = _bind(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    server = _Server(uvicorn.Config(create_app(settings, no_auth=no_auth, service=service), log_level="warning",
                                    lifespan="on", timeout_graceful_shutdown=5))
    from stoq.cli.scan import store_place

    say(f"serving the API on http://{shown}:{bound[1]} ({service.mode} mode; store "
        f"{store_place(settings.resolved_database_url())}; {'NO AUTHENTICATION' if no_auth else 'tokens required'})")
    server.run(sockets=[sock])
    if server.stopped_by is not None:
        raise typer.Exit(int(ExitCode.INTERRUPTED if server.stopped_by == signal.SIGINT else ExitCode.TERMINATED))


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopping on SIGINT or SIGTERM without raising the signal again afterwards
        (``stoq serve`` then exits with 130 or 143, as every stoq command)."""

        stopped_by: int | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.stopped_by is None:
                self.stopped_by = sig
            super().handle_exit(sig, frame)
    return Server


def _Server(config: Any) -> Any:  # noqa: N802  (a class made on demand: uvicorn is imported only by serve)
    return _server_class()(config)


@contextlib.contextmanager
def _book(config: Path | None) -> Iterator[Any]:
    from stoq.store import NotMigrated, Store, StoreError
    from stoq.web.auth import TokenBook

    settings = _settings(config)
    try:
        store = Store.open(settings.resolved_database_url())
    except (NotMigrated, StoreError) as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    try:
        yield TokenBook(store)
    except StoreError as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    finally:
        store.close()


@tokens_app.command("create")
def tokens_create(name: Annotated[str, typer.Argument(help="Who or what the token is for (letters, digits, _ . @ -).")],
                  config: ConfigOpt = None) -> None:
    """Create a token and print its secret on stdout, once: only its sha256 is stored."""
    from stoq.web.auth import TokenError

    with _book(config) as book:
        try:
            token, secret = book.create(name)
        except TokenError as exc:
            raise fail(str(exc), ExitCode.USAGE) from None
    typer.echo(secret)
    say(f"token {name} (id {token.token_id}) created: the line above is its secret, shown only now; "
        "send it as Authorization: Bearer <secret>")


@tokens_app.command("list")
def tokens_list(fmt: Annotated[str, typer.Option("--format", "-f", metavar="text|json", help="Output format.")] = "text",
                config: ConfigOpt = None) -> None:
    """List the tokens (id, name, created, revoked): never their secrets, which are not stored."""
    if fmt not in ("text", "json"):
        raise fail(f"--format must be text or json, not {fmt!r}", ExitCode.USAGE)
    with _book(config) as book:
        tokens = [t.as_dict() for t in book.list()]
    if fmt == "json":
        typer.echo(orjson.dumps(tokens).decode())
        return
    for t in tokens:
        typer.echo(f"{t['token_id']}  {safe(t['name'])}  created {t['created_at']}  "
                   + (f"revoked {t['revoked_at']}" if t["revoked_at"] else "live"))


@tokens_app.command("revoke")
def tokens_revoke(name: Annotated[str, typer.Argument(help="The token's name (or id).")], config: ConfigOpt = None) -> None:
    """Revoke a token: its next request is refused (401)."""
    with _book(config) as book:
        revoked = book.revoke(name)
    if not revoked:
        raise fail(f"no live token named {name!r} (`stoq tokens list`)", ExitCode.NOT_FOUND)
    for t in revoked:
        say(f"revoked token {t.name} (id {t.token_id})")
