"""Original stoQ's ``iocregex`` reader role: the text children of ``pdftext`` and ``email`` are routed to
``iocextract`` when it is in the worker set (it is in the default set): its ``mimes`` route it to
every text payload, these children included, and to nothing else. Expected IOCs are ioc-finder's own ``find_iocs`` on the text that pdfminer.six and the
standard library's e-mail parser give, independently of the plugins."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

from ioc_finder import find_iocs
from pdfminer.high_level import extract_text

from helpers import CORPUS, validate

Run = Callable[..., subprocess.CompletedProcess[bytes]]
TYPES = ("urls", "domains", "ipv4s", "ipv6s", "email_addresses", "md5s", "sha1s", "sha256s", "cves")


def expected(text: str) -> dict[str, list[str]]:
    """ioc-finder's answer per type, sorted; URLs without trailing sentence punctuation (iocextract's
    documented tidying)."""
    found = find_iocs(text, included_ioc_types=list(TYPES))
    return {t: sorted({v.rstrip(".,;:!?") if t == "urls" else v for v in found[t]}) for t in TYPES}


def scan(run_stoq: Run, path: Path) -> dict[str, Any]:
    proc = run_stoq("scan", str(path), "--format", "json", "--no-store", "--workers", "iocextract")
    assert proc.returncode == 0, proc.stderr.decode()
    (doc,) = json.loads(proc.stdout)
    validate(doc)
    return doc


def iocs_by_child(doc: dict[str, Any], origin: str) -> dict[str, dict[str, list[str]]]:
    return {p["filename"]: p["workers"]["iocextract"]["iocs"] for p in doc["results"]
            if p["extracted_by"] == origin and "iocextract" in p["workers"]}


def body_texts(raw: bytes) -> list[str]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return [part.get_content() for part in message.walk()
            if part.get_content_type() in ("text/plain", "text/html") and not part.is_attachment()]


def test_pdf_text_child_goes_to_iocextract(run_stoq: Run) -> None:
    doc = scan(run_stoq, CORPUS / "test.pdf")
    want = expected(extract_text(str(CORPUS / "test.pdf")))
    assert want["urls"]  # the corpus PDF has some to find
    assert iocs_by_child(doc, "pdftext") == {"test.pdf.txt": want}
    assert "iocextract" not in doc["results"][0]["workers"]  # the PDF itself is not text


def test_email_bodies_go_to_iocextract(run_stoq: Run) -> None:
    raw = (CORPUS / "test.eml").read_bytes()
    doc = scan(run_stoq, CORPUS / "test.eml")
    plain, html = body_texts(raw)
    assert iocs_by_child(doc, "email") == {"body_0.txt": expected(plain), "body_1.html": expected(html)}
    assert expected(html)["urls"]
    others = [p for p in doc["results"] if p["extracted_by"] == "email" and not p["mime"].startswith("text/")]
    assert others and all("iocextract" not in p["workers"] for p in others)  # the image and the .doc are not text


def test_defanged_iocs_in_a_generated_email(run_stoq: Run, tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.org", "b@example.org", "report"
    message.set_content("Payload at hxxp://files[.]example[.]com/dl/x.exe and 198.51.100[.]7, see CVE-2021-44228.\n"
                        "md5 44d88612fea8a8f36de82e1278abb02f, contact admin[@]files[.]example[.]com.\n")
    path = tmp_path / "generated.eml"
    path.write_bytes(bytes(message))
    doc = scan(run_stoq, path)
    (plain,) = body_texts(path.read_bytes())
    want = expected(plain)
    assert iocs_by_child(doc, "email") == {"body_0.txt": want}
    assert want["urls"] == ["http://files.example.com/dl/x.exe"] and want["ipv4s"] == ["198.51.100.7"]
    assert want["cves"] == ["CVE-2021-44228"] and want["md5s"] == ["44d88612fea8a8f36de82e1278abb02f"]
    assert want["email_addresses"] == ["admin@files.example.com"]
