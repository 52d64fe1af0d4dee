"""slack: the connector posts summaries to a fake Slack Web API (slack_sdk's WebClient with ``base_url``),
only for the documents its filter wants, retrying a 429; the bot's handler downloads a shared file through
the fake API with the bot token, scans it with a real embedded engine and replies in the thread."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from intelfake import FakeService, Seen, reply

from stoq.config import load_settings
from stoq.engine import Engine
from stoq_plugins._slack import Bot, summary
from stoq_plugins.slack import SlackConnector

slack_sdk = pytest.importorskip("slack_sdk")

TOKEN = "xoxb-test-bot-token-42"
OK = reply(200, {"ok": True, "channel": "C1", "ts": "1.2"})


def document(scan_id: str, flags: list[str], rules: list[str]) -> dict[str, Any]:
    return {"scan_id": scan_id, "errors": [], "results": [
        {"filename": "a.exe", "mime": "application/x-dosexec", "size": 3, "sha256": "ab" * 32, "flags": flags,
         "workers": {"yara": {"matches": [{"rule": r} for r in rules]}}},
        {"filename": "b", "mime": "text/plain", "size": 1, "sha256": "cd" * 32, "flags": [], "workers": {}}]}


def connector(fake: FakeService, **options: Any) -> SlackConnector:
    plugin = SlackConnector(SlackConnector.Options(url=fake.url + "/api/", api_key=TOKEN, channel="C1", **options))
    plugin.setup()
    return plugin


def posted(fake: FakeService) -> list[dict[str, Any]]:
    return [json.loads(s.body) for s in fake.seen if s.path == "/api/chat.postMessage"]


def test_every_document_is_posted_with_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    docs = [document("s1", [], []), document("s2", ["vtmis:detected"], ["evil_pe"])]
    with FakeService({("POST", "/api/chat.postMessage"): OK}) as fake:
        connector(fake).save(docs)
    assert posted(fake) == [{"channel": "C1", "text": summary(d)} for d in docs]
    assert summary(docs[1]) == (f"stoq scan s2: a.exe (application/x-dosexec, 3 B) sha256 {'ab' * 32}\n"
                                "2 payload(s); YARA: evil_pe; flags: vtmis:detected; errors: 0")
    assert all(s.method == "POST" and s.headers["authorization"] == f"Bearer {TOKEN}" for s in fake.seen)
    assert TOKEN not in caplog.text


def test_the_filter_posts_only_flagged_or_yara_documents() -> None:
    docs = [document("plain", ["limit:ioc-size"], []), document("flag", ["clamav:infected"], []),
            document("yara", [], ["r1"])]
    with FakeService({("POST", "/api/chat.postMessage"): OK}) as fake:
        connector(fake, only_flags=["clamav:", "vtmis:detected"]).save(docs)
        connector(fake, only_yara=True).save(docs)
    assert [p["text"].split(":")[0] for p in posted(fake)] == ["stoq scan flag", "stoq scan yara"]


def test_a_429_is_retried_after_its_retry_after() -> None:
    limited = reply(429, {"ok": False, "error": "ratelimited"}, Retry_After="1")
    with FakeService({("POST", "/api/chat.postMessage"): [limited, OK]}) as fake:
        connector(fake).save([document("s", [], [])])
    assert len(posted(fake)) == 2


def test_a_bad_token_fails_the_delivery() -> None:
    with FakeService({("POST", "/api/chat.postMessage"): reply(200, {"ok": False, "error": "invalid_auth"})}) as fake:
        with pytest.raises(slack_sdk.errors.SlackApiError, match="invalid_auth"):
            connector(fake).save([document("s", [], [])])


def test_no_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="slack.channel is not set"):
        SlackConnector().setup()


def test_the_bot_scans_a_shared_file_and_replies_in_its_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"hello from slack\n" * 10
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    def info(seen: Seen) -> Any:
        return reply(200, {"ok": True, "file": {"id": "F1", "name": "note.txt", "size": len(content),
                                                 "url_private_download": f"{fake.url}/files-pri/T1-F1/download/note.txt"}})

    routes = {("POST", "/api/files.info"): info, ("POST", "/api/chat.postMessage"): OK,
              ("GET", "/files-pri/T1-F1/download/note.txt"): lambda seen: (200, content, {})}
    with FakeService(routes) as fake:
        web = slack_sdk.WebClient(token=TOKEN, base_url=fake.url + "/api/")
        settings = load_settings(env={"STOQ_ARCHIVER": "none", "STOQ_WORKERS": "hash"})
        engine = Engine(settings)
        bot = Bot(web, lambda data, name: engine.scan(data, name, {"kind": "slack"}), channels=["C1"])
        event = {"type": "message", "subtype": "file_share", "channel": "C1", "ts": "1700000000.000100",
                 "files": [{"id": "F1"}]}
        assert bot.handle(event | {"channel": "C2"}) == []  # a channel it does not serve
        (doc,) = bot.handle(event)
    assert doc["results"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert doc["results"][0]["filename"] == "note.txt" and "hash" in doc["results"][0]["workers"]
    assert [(s.method, s.path) for s in fake.seen] == [
        ("POST", "/api/files.info"), ("GET", "/files-pri/T1-F1/download/note.txt"), ("POST", "/api/chat.postMessage")]
    assert fake.seen[1].headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(fake.seen[2].body) == {"channel": "C1", "thread_ts": "1700000000.000100", "text": summary(doc)}


def test_the_token_is_not_sent_to_another_host() -> None:
    from stoq_plugins._slack import download

    with pytest.raises(ValueError, match="unexpected host"):
        download("http://files.example.org/x", TOKEN, "https://slack.com/api/", 10)


def test_the_bot_over_socket_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """slack_sdk's SocketModeClient against a fake Slack: apps.connections.open (with the app token) gives
    the URL of a local websocket server, which sends the hello and an events_api envelope of a shared
    file; the bot acknowledges the envelope, scans the file and replies in the thread."""
    import threading

    from slack_sdk.socket_mode import SocketModeClient
    from websockets.sync.server import serve

    content = b"shared over socket mode\n"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    acks: list[dict[str, Any]] = []
    event = {"type": "message", "subtype": "file_share", "channel": "C9", "ts": "1700000001.000200",
             "files": [{"id": "F9"}]}

    def socket(conn: Any) -> None:
        conn.send(json.dumps({"type": "hello", "num_connections": 1, "debug_info": {"host": "fake"}}))
        conn.send(json.dumps({"envelope_id": "env-1", "type": "events_api", "accepts_response_payload": False,
                              "payload": {"type": "event_callback", "event": event}}))
        while not acks:
            message = json.loads(conn.recv(timeout=30))
            if "envelope_id" in message:
                acks.append(message)
        try:
            conn.recv(timeout=10)  # stay open until the client leaves
        except Exception:
            pass

    with serve(socket, "127.0.0.1", 0) as ws_server:
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        ws_url = f"ws://127.0.0.1:{ws_server.socket.getsockname()[1]}/link"
        routes = {("POST", "/api/apps.connections.open"): reply(200, {"ok": True, "url": ws_url}),
                  ("POST", "/api/files.info"): lambda seen: reply(200, {"ok": True, "file": {
                      "id": "F9", "name": "s.txt", "size": len(content),
                      "url_private_download": f"{fake.url}/files-pri/T1-F9/download/s.txt"}}),
                  ("GET", "/files-pri/T1-F9/download/s.txt"): lambda seen: (200, content, {}),
                  ("POST", "/api/chat.postMessage"): OK}
        with FakeService(routes) as fake:
            web = slack_sdk.WebClient(token=TOKEN, base_url=fake.url + "/api/")
            engine = Engine(load_settings(env={"STOQ_ARCHIVER": "none", "STOQ_WORKERS": "hash"}))
            docs: list[dict[str, Any]] = []
            bot = Bot(web, lambda data, name: docs.append(engine.scan(data, name, {"kind": "slack"})) or docs[-1])
            client = SocketModeClient(app_token="xapp-test-app-token", web_client=web)
            client.socket_mode_request_listeners.append(bot.on_request)
            client.connect()
            try:
                for _ in range(300):
                    if any(s.path == "/api/chat.postMessage" for s in fake.seen):
                        break
                    threading.Event().wait(0.1)
            finally:
                client.close()
    assert acks == [{"envelope_id": "env-1"}]
    opened = fake.seen[0]
    assert (opened.path, opened.headers["authorization"]) == ("/api/apps.connections.open", "Bearer xapp-test-app-token")
    (doc,) = docs
    assert doc["results"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    (reply_post,) = [json.loads(s.body) for s in fake.seen if s.path == "/api/chat.postMessage"]
    assert reply_post == {"channel": "C9", "thread_ts": "1700000001.000200", "text": summary(doc)}


def test_without_the_extra_the_connector_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "slack_sdk", None)  # as if not installed: its import fails
    with pytest.raises(ValueError, match=r"pip install 'stoq-analysis\[slack\]'"):
        SlackConnector(SlackConnector.Options(channel="C1")).setup()
