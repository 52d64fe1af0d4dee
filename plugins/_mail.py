"""Reading RFC 5322 messages for the ``email`` reader with the standard library's ``email`` package
(``policy.default``): chosen headers under a size cap, and the leaf parts under a count cap.

Headers are taken raw and cut before the policy parses them, so a huge header costs no more than
``max_header_bytes``. Parts are walked without recursion; an attached message (message/rfc822) is one
leaf, whose own parts its own scan reads.
"""

from __future__ import annotations

import email.errors
import email.parser
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

from stoq_plugins._ole import read_streams

HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
BODY_TYPES = ("text/plain", "text/html")
#: Surrogates that surrogateescape did not make (it makes U+DC80..U+DCFF).
OTHER_SURROGATES = re.compile("[\ud800-\udc7f\udd00-\udfff]")


@dataclass(slots=True)
class Part:
    """One leaf part: decoded bytes, name, type and what kind of child it is."""

    content: bytes
    filename: str | None
    content_type: str
    disposition: str | None
    charset: str | None
    is_body: bool


@dataclass(slots=True)
class Mail:
    headers: dict[str, Any] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    leaves: int = 0
    defects: set[str] = field(default_factory=set)
    flags: list[str] = field(default_factory=list)

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)


def clean(text: str) -> str:
    """``text`` without the lone surrogates the parser uses for raw 8-bit bytes (they are not UTF-8):
    bytes that form UTF-8 are decoded, others become U+FFFD."""
    text = OTHER_SURROGATES.sub("\ufffd", text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse(content: bytes) -> EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(content)  # type: ignore[return-value]


def read_headers(message: Message, mail: Mail, max_header_bytes: int) -> None:
    """The first value of each of ``HEADERS`` (None if absent), and the number of Received headers."""
    raw: dict[str, str] = {}
    received = 0
    for field_name, field_value in message.raw_items():
        key = field_name.strip().lower()
        received += key == "received"
        for wanted in HEADERS:
            if key == wanted.lower() and wanted not in raw:
                raw[wanted] = field_value
    for name in HEADERS:
        value = raw.get(name)
        if value is None:
            mail.headers[name] = None
            continue
        if len(value) > max_header_bytes:
            mail.flag("limit:email-header-bytes")
            value = value[:max_header_bytes]
        try:
            mail.headers[name] = clean(str(email.policy.default.header_fetch_parse(name, value)))
        # the policy's parser gave up; CPython's address parser raises AttributeError on some malformed
        # lists (``To: :;e``, found by tests/fuzz/fuzz_email.py)
        except (email.errors.HeaderParseError, ValueError, IndexError, AttributeError):
            mail.flag("corrupt:email-header")
            mail.headers[name] = clean(value)
    mail.headers["Received"] = received


def _text(part: Message) -> tuple[bytes, str | None]:
    """A text part's content as UTF-8 (charset "utf-8"), or its bytes as sent when its charset is unknown."""
    try:
        return part.get_content().encode("utf-8", "replace"), "utf-8"  # type: ignore[attr-defined]
    except LookupError:
        return _decoded(part), part.get_content_charset()


def _decoded(part: Message) -> bytes:
    """The part's bytes with its transfer encoding undone (the parser records bad encoding as defects)."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def read_parts(message: Message, mail: Mail, max_parts: int) -> None:
    """Leaf parts in document order: text/plain and text/html bodies (not attachments) as UTF-8, every
    other leaf (attachments, inline images, attached messages) as its decoded bytes."""
    stack: list[Message] = [message]
    while stack:
        part = stack.pop()
        mail.defects.update(type(d).__name__ for d in part.defects)
        content_type = part.get_content_type()
        if part.is_multipart() and content_type != "message/rfc822":
            stack.extend(reversed(part.get_payload()))  # type: ignore[arg-type]
            continue
        mail.leaves += 1
        if len(mail.parts) >= max_parts:
            mail.flag("limit:email-parts")
            continue
        disposition = part.get_content_disposition()
        raw_name = part.get_filename()
        filename = clean(raw_name) if raw_name is not None else None
        is_body = content_type in BODY_TYPES and disposition != "attachment" and filename is None
        charset = None
        if is_body:
            content, charset = _text(part)
        elif content_type == "message/rfc822":
            inner = part.get_payload()
            attached = inner[0] if isinstance(inner, list) and inner else None
            content = attached.as_bytes() if isinstance(attached, Message) else b""
        else:
            content = _decoded(part)
        mail.parts.append(Part(content, filename, content_type, disposition, charset, is_body))


# Outlook .msg (MS-OXMSG): MAPI properties as streams of an OLE2 compound file, read with olefile.

#: Property tags of the message (``__substg1.0_<tag><type>``): strings are 001F (UTF-16) or 001E (8-bit).
MSG_TRANSPORT_HEADERS, MSG_SUBJECT, MSG_SENDER_NAME, MSG_SENDER_EMAIL = "007D", "0037", "0C1A", "0C1F"
MSG_SENDER_SMTP, MSG_DISPLAY_TO, MSG_DISPLAY_CC, MSG_MESSAGE_ID = "5D01", "0E04", "0E03", "1035"
MSG_BODY, MSG_HTML = "1000", "1013"
#: Attachment properties: data (binary), long and short file names, MIME type.
MSG_ATTACH_DATA, MSG_ATTACH_LONG, MSG_ATTACH_SHORT, MSG_ATTACH_MIME = "3701", "3707", "3704", "370E"
MSG_MAX_STREAMS = 100_000


def _string(streams: dict[str, bytes], prefix: str, tag: str) -> str | None:
    data = streams.get(f"{prefix}__substg1.0_{tag}001F")
    if data is not None:
        return clean(data.decode("utf-16-le", "surrogatepass").rstrip("\x00"))
    data = streams.get(f"{prefix}__substg1.0_{tag}001E")
    return data.rstrip(b"\x00").decode("cp1252", "replace") if data is not None else None


def read_msg(content: bytes, mail: Mail, max_parts: int, max_header_bytes: int) -> None:
    """Headers (from the transport headers when the message was sent, else from MAPI properties),
    bodies and attachments of an Outlook message. Raises OSError when olefile cannot open it."""
    ole = read_streams(content, MSG_MAX_STREAMS, len(content), len(content) * 4)
    for name in ole.flags:
        mail.flag(name)
    streams = {s.path: s.content for s in ole.streams if s.content is not None}
    transport = _string(streams, "", MSG_TRANSPORT_HEADERS) or ""
    read_headers(email.parser.Parser(policy=email.policy.default).parsestr(transport, headersonly=True),
                 mail, max_header_bytes)
    sender = _string(streams, "", MSG_SENDER_SMTP) or _string(streams, "", MSG_SENDER_EMAIL)
    name = _string(streams, "", MSG_SENDER_NAME)
    fallback = {"Subject": _string(streams, "", MSG_SUBJECT), "To": _string(streams, "", MSG_DISPLAY_TO),
                "Cc": _string(streams, "", MSG_DISPLAY_CC), "Message-ID": _string(streams, "", MSG_MESSAGE_ID),
                "From": f"{name} <{sender}>" if name and sender else name or sender}
    for header, value in fallback.items():
        if mail.headers.get(header) is None and value:
            mail.headers[header] = value[:max_header_bytes]
    text = _string(streams, "", MSG_BODY)
    html = streams.get(f"__substg1.0_{MSG_HTML}0102")
    bodies = [(b, t, c) for b, t, c in ((text.encode("utf-8") if text else None, "text/plain", "utf-8"),
                                        (html, "text/html", None)) if b]  # binary HTML: charset unknown
    attachments = sorted({p.split("/", 1)[0] for p in streams if p.startswith("__attach_version1.0_#")})
    for body, content_type, charset in bodies:
        mail.leaves += 1
        if len(mail.parts) >= max_parts:
            mail.flag("limit:email-parts")
            continue
        mail.parts.append(Part(body, None, content_type, None, charset, True))
    for storage in attachments:
        mail.leaves += 1
        prefix = storage + "/"
        data = streams.get(f"{prefix}__substg1.0_{MSG_ATTACH_DATA}0102")
        if data is None:  # an embedded message (3701000D storage) or a linked file: nothing to carve
            mail.flag("msg:attachment-not-carved")
            continue
        if len(mail.parts) >= max_parts:
            mail.flag("limit:email-parts")
            continue
        filename = _string(streams, prefix, MSG_ATTACH_LONG) or _string(streams, prefix, MSG_ATTACH_SHORT)
        mime = _string(streams, prefix, MSG_ATTACH_MIME) or "application/octet-stream"
        mail.parts.append(Part(data, filename, mime, "attachment", None, False))
