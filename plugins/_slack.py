"""Slack for the ``slack`` connector and the Slack bot: a scan document's summary in a few lines, the
filter deciding which documents are posted, and the bot that scans files shared in a channel.

The bot (``python -m stoq_plugins._slack``) connects through Socket Mode (slack_sdk's
``SocketModeClient``: an outbound websocket, no public HTTP endpoint needed). For each ``message`` event
carrying files (subtype ``file_share``) in a channel it may serve, it asks ``files.info`` for each file,
downloads ``url_private_download`` with the bot token (sent only to Slack's own hosts, or to the Web API
host configured), scans the bytes with the embedded engine under this process's stoq settings, and
replies in the message's thread with the summary (``chat.postMessage``). Tokens come from
``STOQ_SLACK__API_KEY`` (the bot token, ``xoxb-``) and ``STOQ_SLACK__APP_TOKEN`` (``xapp-``, Socket Mode).
"""

from __future__ import annotations

import os
import threading
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterable

from stoq.terminal import safe

#: Most characters of a posted summary (Slack cuts a message's text at 40,000).
TEXT_MAX = 3000


def rules(doc: dict[str, Any]) -> list[str]:
    """The YARA rules that matched any payload of the document, sorted."""
    return sorted({m.get("rule", "") for r in doc.get("results", [])
                   for m in ((r.get("workers") or {}).get("yara") or {}).get("matches", []) if isinstance(m, dict)})


def flags(doc: dict[str, Any]) -> list[str]:
    return sorted({f for r in doc.get("results", []) for f in r.get("flags", [])})


def wanted(doc: dict[str, Any], only_flags: Iterable[str], only_yara: bool) -> bool:
    """Posted when no filter is set, else when a YARA rule matched (``only_yara``) or a payload has a flag
    starting with one of ``only_flags`` (``vtmis:detected``, ``clamav:``...)."""
    prefixes = tuple(only_flags)
    if not prefixes and not only_yara:
        return True
    return bool(only_yara and rules(doc)) or any(f.startswith(prefixes) for f in flags(doc) if prefixes)


def summary(doc: dict[str, Any]) -> str:
    """Plain text: the root file, its type, size and sha256, the payload count, the YARA rules, flags and errors."""
    results = doc.get("results") or [{}]
    root = results[0]
    lines = [f"stoq scan {doc.get('scan_id')}: {root.get('filename') or '(no name)'} "
             f"({root.get('mime')}, {root.get('size')} B) sha256 {root.get('sha256')}",
             f"{len(results)} payload(s); YARA: {', '.join(rules(doc)) or 'none'}; flags: {', '.join(flags(doc)) or 'none'}; "
             f"errors: {len(doc.get('errors') or [])}"]
    text = "\n".join(safe(line) for line in lines)  # names from files: control characters escaped
    return text if len(text) <= TEXT_MAX else text[:TEXT_MAX - 3] + "..."


def download(url: str, token: str, api_url: str, max_bytes: int, timeout: float = 60) -> bytes:
    """A file's bytes from Slack; the token goes only to ``*.slack.com`` or the configured API's host."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not (host == "slack.com" or host.endswith(".slack.com") or host == urllib.parse.urlsplit(api_url).hostname):
        raise ValueError(f"file URL on an unexpected host {host!r}: the token is not sent there")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        content = response.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise ValueError(f"file larger than {max_bytes} bytes")
    return content


class Bot:
    """Handles Slack events: files shared in a message are scanned, the summary posted in its thread."""

    def __init__(self, web: Any, scan: Callable[[bytes, str], dict[str, Any]], *, channels: Iterable[str] = (),
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.web, self.scan, self.channels, self.max_bytes = web, scan, set(channels), max_bytes

    def handle(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Scans the files of a ``message`` event of subtype ``file_share``; returns the documents."""
        if event.get("type") != "message" or event.get("subtype") != "file_share" or event.get("bot_id"):
            return []
        channel = event.get("channel", "")
        if self.channels and channel not in self.channels:
            return []
        docs = []
        for shared in event.get("files") or []:
            info = self.web.files_info(file=shared["id"])["file"]
            if int(info.get("size") or 0) > self.max_bytes:
                text = f"stoq: {safe(info.get('name', ''))} is larger than {self.max_bytes} bytes: not scanned"
            else:
                content = download(info["url_private_download"], self.web.token, self.web.base_url, self.max_bytes)
                docs.append(self.scan(content, info.get("name") or shared["id"]))
                text = summary(docs[-1])
            self.web.chat_postMessage(channel=channel, thread_ts=event.get("ts"), text=text)
        return docs

    def on_request(self, client: Any, request: Any) -> None:
        """SocketModeClient listener: acknowledges the envelope, then handles its event."""
        from slack_sdk.socket_mode.response import SocketModeResponse

        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "events_api":
            self.handle(request.payload.get("event") or {})


def main() -> None:
    """Runs the bot until killed: Socket Mode with the tokens of the environment, embedded scans."""
    from slack_sdk import WebClient
    from slack_sdk.socket_mode import SocketModeClient

    from stoq.config import load_settings
    from stoq.engine import Engine

    settings = load_settings()
    opts = settings.plugins.get("slack", {})
    web = WebClient(token=os.environ.get("STOQ_SLACK__API_KEY", opts.get("api_key", "")),
                    base_url=opts.get("url", "https://slack.com/api/"))
    engine = Engine(settings)
    bot = Bot(web, lambda content, name: engine.scan(content, name, {"kind": "slack"}),
              channels=[c for c in str(opts.get("bot_channels", "")).split(",") if c])
    client = SocketModeClient(app_token=os.environ.get("STOQ_SLACK__APP_TOKEN", opts.get("app_token", "")), web_client=web)
    client.socket_mode_request_listeners.append(bot.on_request)
    client.connect()
    threading.Event().wait()


if __name__ == "__main__":
    main()
