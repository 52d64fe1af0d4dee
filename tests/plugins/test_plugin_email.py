"""The ``email`` reader (module ``stoq_plugins.mail``) on the corpus message, compared with the standard
library read here, on messages built here for caps, odd charsets and attached messages, and on Outlook
messages written here as compound files."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import struct
import sys
import time
from email.message import EmailMessage

import olefile
import pytest

from stoq.plugin import Payload, Result
from stoq_plugins.mail import EmailPlugin


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan(content: bytes, **options) -> Result:
    plugin = EmailPlugin(EmailPlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "message/rfc822", sha(content), 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def message(attachments: int = 1, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "bob@example.org, Carol <carol@example.org>"
    msg["Subject"] = "Quarterly report"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Plain body\n")
    msg.add_alternative("<p>HTML body</p>\n", subtype="html")
    for i in range(attachments):
        msg.add_attachment(bytes([i]) * (100 + i), maintype="application", subtype="octet-stream",
                           filename=f"file{i}.bin")
    return msg


def test_module_name_leaves_the_standard_library_email_alone() -> None:
    import stoq_plugins._mail as helper
    assert "stoq_plugins" not in email.__file__ and email.__file__.startswith(sys.base_prefix)
    assert helper.email.policy is email.policy and helper.email.__name__ == "email"


def test_corpus_message_matches_the_standard_library(corpus) -> None:
    data = (corpus / "test.eml").read_bytes()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    result = scan(data)
    headers = result.data["headers"]
    for name in ("From", "To", "Cc", "Subject", "Date", "Message-ID"):
        assert headers[name] == (str(msg[name]) if msg[name] is not None else None)
    assert headers["Subject"] == "Lorem Ipsum" and headers["Cc"] is None
    assert headers["Received"] == len(msg.get_all("Received")) == 5
    by_name = {c.filename: c for c in result.children}
    expected = [(a.get_filename(), sha(a.get_content())) for a in msg.iter_attachments()]
    assert expected and ("test.doc", sha((corpus / "test.doc").read_bytes())) in expected
    for filename, digest in expected:
        assert sha(by_name[filename].content) == digest
        assert by_name[filename].meta["disposition"] == "attachment"
    assert by_name["test.doc"].meta["content_type"] == "application/msword"
    assert by_name["image001.jpg"].meta["disposition"] == "inline"
    assert by_name["body_0.txt"].content.decode() == msg.get_body(("plain",)).get_content()
    assert by_name["body_1.html"].content.decode() == msg.get_body(("html",)).get_content()
    assert result.data["bodies"] == 2 and result.data["attachments"] == 2 and result.flags == []


def test_built_message_and_part_cap() -> None:
    msg = message(attachments=5, Cc="dave@example.org")
    result = scan(msg.as_bytes())
    names = [c.filename for c in result.children]
    assert names == ["body_0.txt", "body_1.html"] + [f"file{i}.bin" for i in range(5)]
    assert result.children[4].content == b"\x02" * 102
    assert result.data["headers"]["Cc"] == "dave@example.org" and result.data["headers"]["Received"] == 0
    result = scan(msg.as_bytes(), max_parts=3)
    assert len(result.children) == 3 and result.data["parts"] == 7 and result.flags == ["limit:email-parts"]


def test_long_header_is_cut_before_parsing() -> None:
    msg = message(attachments=0)
    subject = " ".join(["word"] * 1000)
    msg.replace_header("Subject", subject)
    result = scan(msg.as_bytes(), max_header_bytes=100)
    cut = result.data["headers"]["Subject"]
    assert subject.startswith(cut) and 90 <= len(cut) <= 100 and "limit:email-header-bytes" in result.flags
    assert scan(msg.as_bytes()).data["headers"]["Subject"] == subject


def test_attached_message_is_one_child_and_odd_charsets() -> None:
    inner = message(attachments=2)
    outer = message(attachments=0)
    outer.add_attachment(inner)
    result = scan(outer.as_bytes())
    [attached] = [c for c in result.children if c.meta["content_type"] == "message/rfc822"]
    assert email.message_from_bytes(attached.content, policy=email.policy.default)["Subject"] == "Quarterly report"
    assert len(result.children) == 3
    raw = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nSubject: caf\xc3\xa9 \xff\r\n"
           b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nbody \xe9\r\n")
    result = scan(raw)
    assert result.data["headers"]["From"] == "Jürgen <j@example.org>"
    assert result.data["headers"]["Subject"].startswith("café")
    [body] = result.children
    assert body.content == b"body \xe9\r\n" and body.meta["charset"] == "x-no-such-charset"


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.77])
def test_truncated_message_is_flagged_not_hung(corpus, cut: float) -> None:
    data = (corpus / "test.eml").read_bytes()
    started = time.monotonic()
    result = scan(data[:int(len(data) * cut)])
    assert "corrupt:email" in result.flags and result.data["defects"]
    assert time.monotonic() - started < 5


def test_non_message_is_declined(make_payload) -> None:
    assert not EmailPlugin().accepts(make_payload(b"\x89PNG\r\n\x1a\n"))
    assert EmailPlugin().accepts(make_payload(b"Received: from x\r\n"))


ENDOFCHAIN, FREESECT, FATSECT, NOSTREAM = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFF


def compound_file(tree: dict) -> bytes:
    """A version-3 compound file (MS-CFB) holding ``tree``: names to stream bytes or to sub-dicts
    (storages). Streams under 4096 bytes live in the mini stream, as the format requires."""
    entries: list[list] = []  # name, type, children, data

    def add(name: str, node: bytes | dict) -> int:
        index = len(entries)
        entries.append([name, 1 if isinstance(node, dict) else 2, [], node if isinstance(node, bytes) else b""])
        if isinstance(node, dict):
            for child in sorted(node, key=lambda n: (len(n), n.upper())):
                entries[index][2].append(add(child, node[child]))
        return index

    add("Root Entry", tree)
    entries[0][1] = 5
    mini, minifat, big, starts = bytearray(), [], [], {}
    for i, (_, kind, _, data) in enumerate(entries):
        if kind == 2 and len(data) < 4096:
            count = (len(data) + 63) // 64
            starts[i] = len(mini) // 64 if count else ENDOFCHAIN
            minifat += [len(minifat) + k + 1 for k in range(count - 1)] + [ENDOFCHAIN] * bool(count)
            mini += data.ljust(count * 64, b"\x00")
        elif kind == 2:
            big.append(i)
    minifat_bytes = struct.pack(f"<{len(minifat)}I", *minifat)
    sizes = [(len(entries) * 128 + 511) // 512, (len(minifat_bytes) + 511) // 512, (len(mini) + 511) // 512]
    sizes += [(len(entries[i][3]) + 511) // 512 for i in big]
    fat_sectors = 1
    while fat_sectors * 128 < fat_sectors + sum(sizes):
        fat_sectors += 1
    fat = [FATSECT] * fat_sectors
    firsts = []
    for count in sizes:
        firsts.append(len(fat) if count else ENDOFCHAIN)
        fat += [len(fat) + k + 1 for k in range(count - 1)] + [ENDOFCHAIN] * bool(count)
    fat += [FREESECT] * (fat_sectors * 128 - len(fat))
    starts.update(zip(big, firsts[3:]))
    right = {a: b for _, _, children, _ in entries for a, b in zip(children, children[1:])}
    directory = b""
    for i, (name, kind, children, data) in enumerate(entries):
        encoded = name.encode("utf-16-le") + b"\x00\x00"
        start, size = (firsts[2], len(mini)) if kind == 5 else (starts.get(i, 0), len(data))
        directory += struct.pack("<64sHBBIII16sIQQIQ", encoded, len(encoded), kind, 1, NOSTREAM,
                                 right.get(i, NOSTREAM), children[0] if children else NOSTREAM, b"", 0, 0, 0,
                                 start, size)
    empty = struct.pack("<64sHBBIII16sIQQIQ", b"", 0, 0, 0, NOSTREAM, NOSTREAM, NOSTREAM, b"", 0, 0, 0, 0, 0)
    directory += empty * (sizes[0] * 4 - len(entries))
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII109I", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"", 0x3E, 3, 0xFFFE,
                         9, 6, b"", 0, fat_sectors, firsts[0], 0, 4096, firsts[1], sizes[1], ENDOFCHAIN, 0,
                         *range(fat_sectors), *[FREESECT] * (109 - fat_sectors))
    body = [struct.pack(f"<{len(fat)}I", *fat), directory, minifat_bytes, bytes(mini)]
    body += [entries[i][3] for i in big]
    return header + b"".join(part.ljust((len(part) + 511) // 512 * 512, b"\x00") for part in body)


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def outlook_message(transport: str | None = None) -> tuple[bytes, bytes]:
    """An Outlook message with a text and an HTML body, a large attachment, and an attached message."""
    attachment = bytes(range(256)) * 40  # 10240 bytes: regular sectors
    tree: dict = {
        "__substg1.0_0037001F": utf16("Invoice 42"),
        "__substg1.0_0C1A001F": utf16("Alice"),
        "__substg1.0_5D01001F": utf16("alice@example.org"),
        "__substg1.0_0E04001F": utf16("Bob"),
        "__substg1.0_1000001F": utf16("Please find the invoice attached.\r\n"),
        "__substg1.0_10130102": b"<html><body>Please find it</body></html>",
        "__properties_version1.0": b"\x00" * 32,
        "__attach_version1.0_#00000000": {"__substg1.0_37010102": attachment,
                                          "__substg1.0_3707001F": utf16("invoice.pdf"),
                                          "__substg1.0_3704001E": b"INVOIC~1.PDF",
                                          "__substg1.0_370E001F": utf16("application/pdf")},
        "__attach_version1.0_#00000001": {"__substg1.0_3701000D": {"__substg1.0_0037001F": utf16("inner")}},
    }
    if transport is not None:
        tree["__substg1.0_007D001F"] = utf16(transport)
    return compound_file(tree), attachment


def test_outlook_message_from_properties() -> None:
    data, attachment = outlook_message()
    ole = olefile.OleFileIO(io.BytesIO(data))  # the file built here is a compound file olefile reads
    assert ole.openstream("__attach_version1.0_#00000000/__substg1.0_37010102").read() == attachment
    assert not ole.parsing_issues
    result = scan(data)
    headers = result.data["headers"]
    assert headers["Subject"] == "Invoice 42" and headers["From"] == "Alice <alice@example.org>"
    assert headers["To"] == "Bob" and headers["Cc"] is None and headers["Received"] == 0
    by_name = {c.filename: c for c in result.children}
    assert by_name["body_0.txt"].content == b"Please find the invoice attached.\r\n"
    assert by_name["body_1.html"].content == b"<html><body>Please find it</body></html>"
    assert by_name["invoice.pdf"].content == attachment
    assert by_name["invoice.pdf"].meta["content_type"] == "application/pdf"
    assert result.data["bodies"] == 2 and result.data["attachments"] == 1 and result.data["parts"] == 4
    assert result.flags == ["msg:attachment-not-carved"]
    assert [c.filename for c in scan(data, max_parts=1).children] == ["body_0.txt"]


def test_outlook_message_headers_come_from_transport_headers() -> None:
    transport = ("Received: from a by b; Mon, 1 Jan 2024 10:00:00 +0000\r\nReceived: from c by a\r\n"
                 "From: Alice Real <alice@example.net>\r\nTo: bob@example.org\r\nCc: carol@example.org\r\n"
                 "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <42@example.net>\r\n\r\n")
    data, _ = outlook_message(transport)
    headers = scan(data).data["headers"]
    assert headers == {"From": "Alice Real <alice@example.net>", "To": "bob@example.org",
                       "Cc": "carol@example.org", "Subject": "Invoice 42",
                       "Date": "Mon, 01 Jan 2024 10:00:00 +0000", "Message-ID": "<42@example.net>", "Received": 2}


def test_truncated_outlook_message_raises_or_is_flagged() -> None:
    data, _ = outlook_message()
    result = scan(data[:len(data) // 2])
    assert "corrupt:ole-stream" in result.flags and "invoice.pdf" not in {c.filename for c in result.children}
    plugin = EmailPlugin()
    with pytest.raises(OSError):  # olefile cannot open it
        plugin.scan(Payload(data[:1000], "t", None, "application/vnd.ms-outlook", "", 0), plugin.options)


def test_an_address_list_the_standard_parser_trips_on_is_kept_as_sent() -> None:
    """Found by fuzzing (tests/fuzz/fuzz_email.py): CPython's address parser raises AttributeError
    ("'Group' object has no attribute 'local_part'") on ``To: :;e``; the plugin keeps the raw value
    and flags the header, as for any header its parser gives up on."""
    with pytest.raises(AttributeError):  # the standard library's own answer, so the test keeps its point
        email.policy.default.header_fetch_parse("To", ":;e")
    result = scan(b"From: a@example.org\r\nTo: :;e\r\nSubject: s\r\n\r\nbody\r\n")
    assert result.data["headers"]["To"] == ":;e"
    assert result.data["headers"]["From"] == "a@example.org"
    assert "corrupt:email-header" in result.flags
