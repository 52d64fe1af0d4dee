"""The ``emailer`` connector against a real SMTP server (aiosmtpd's Controller, started here): the exact
message, the sandboxed templates, and the server stopped during a scan, then restarted (catch-up)."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from fake_services import free_port
from helpers import CORPUS

from stoq.plugin import PartialDelivery
from stoq_plugins.emailer import EmailerConnector


class Inbox:
    """aiosmtpd handler: keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.mail: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mail.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


@pytest.fixture
def smtp() -> Any:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def doc(scan_id: str, name: str = "invoice.zip") -> dict[str, Any]:
    payload = {"payload_id": "p0", "parent_id": None, "depth": 0, "filename": name, "extracted_by": None,
               "meta": {}, "duplicate_of": None, "size": 12, "md5": "0" * 32, "sha1": "1" * 40, "sha256": "a" * 64,
               "sha512": "2" * 128, "mime": "application/zip", "workers": {"yara": {"matches": [{"rule": "Evil"}]}},
               "flags": ["limit:members"]}
    child = payload | {"payload_id": "p1", "parent_id": "p0", "depth": 1, "filename": "a.exe", "size": 3,
                       "sha256": "b" * 64, "mime": "application/x-dosexec", "workers": {}, "flags": []}
    return {"schema_version": "1.1", "scan_id": scan_id, "date": "2026-12-06T06:00:00Z",
            "source": {"path": f"/in/{name}"}, "payloads": 2, "results": [payload, child],
            "errors": [{"payload_id": "p1", "plugin": "pe", "kind": "error", "message": "bad header"}]}


def connector(port: int, **options: Any) -> EmailerConnector:
    plugin = EmailerConnector(EmailerConnector.Options(host="127.0.0.1", port=port, sender="stoq@lab.test",
                                                       to=["soc@lab.test", "ir@lab.test"], **options))
    plugin.setup()
    return plugin


def test_one_message_per_document_with_the_bundled_summary(smtp: Any) -> None:
    controller, inbox = smtp
    connector(controller.port).save([doc("s1"), doc("s2", "bad\nname\x1b.doc")])
    assert [(f, t) for f, t, _ in inbox.mail] == [("stoq@lab.test", ["soc@lab.test", "ir@lab.test"])] * 2
    first, second = (m for _, _, m in inbox.mail)
    assert first["Subject"] == "stoq: /in/invoice.zip: 2 payload(s), 1 error(s)"
    assert first["Message-ID"] == "<s1@stoq>" and first["X-Stoq-Scan-Id"] == "s1"
    assert first.get_content().replace("\r\n", "\n") == (
        "stoq scanned /in/invoice.zip on 2026-12-06T06:00:00Z.\n"
        "Scan s1: 2 payload(s), 1 error(s).\n\n"
        f"invoice.zip  application/zip  12 B  sha256:{'a' * 64}  YARA: Evil  flags: limit:members\n"
        f"  a.exe  application/x-dosexec  3 B  sha256:{'b' * 64}\n\n"
        "! error in pe: bad header\n")
    # A hostile name stays on one line in the subject and the body.
    assert second["Subject"] == "stoq: /in/bad\\nname\\x1b.doc: 2 payload(s), 1 error(s)"
    assert "bad\\nname\\x1b.doc  application/zip" in second.get_content()


def test_templates_are_sandboxed(smtp: Any, tmp_path: Path) -> None:
    controller, inbox = smtp
    (tmp_path / "evil.j2").write_text("{{ doc.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe"):
        connector(controller.port, template=str(tmp_path / "evil.j2")).save([doc("s1")])
    assert inbox.mail == []


def test_the_server_away_fails_the_rest_of_the_batch() -> None:
    with pytest.raises(PartialDelivery) as caught:
        connector(free_port(), timeout=2).save([doc("s1"), doc("s2")])
    assert caught.value.failed == ["s1", "s2"] and "ConnectionRefusedError" in str(caught.value)


def test_stopped_during_a_scan_then_restarted(run_stoq: Any, tmp_path: Path) -> None:
    """The SMTP server answers the first scan, is stopped for the next files, restarted: `stoq connectors
    catch-up` mails the rest; every scan is mailed at least once (here exactly once)."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    opts = ["--connectors", "emailer", "-o", "emailer.host=127.0.0.1", "-o", f"emailer.port={port}",
            "-o", "emailer.sender=stoq@lab.test", "-o", "emailer.to=soc@lab.test", "-o", "emailer.timeout=2"]
    controller.start()
    try:
        proc = run_stoq("scan", str(CORPUS / "test.txt"), *opts)
        assert proc.returncode == 0, proc.stderr
        first = json.loads(proc.stdout)["scan_id"]
    finally:
        controller.stop()
    files = [CORPUS / "test.zip", CORPUS / "test.html", CORPUS / "test.json"]
    proc = run_stoq("scan", *map(str, files), *opts)
    assert proc.returncode == 5
    later = [json.loads(line)["scan_id"] for line in proc.stdout.splitlines()]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        proc = run_stoq("connectors", "catch-up", "--now")
        assert proc.returncode == 0, proc.stderr
        mailed = [m["X-Stoq-Scan-Id"] for _, _, m in inbox.mail]
        assert mailed[0] == first and sorted(mailed[1:]) == sorted(later)
        assert len(mailed) == len(set(mailed)) == 4
    finally:
        controller.stop()
