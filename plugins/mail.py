"""The ``email`` reader: headers, bodies and attachments of RFC 5322 messages (.eml).

The module is ``mail`` so that ``import email`` anywhere in the package is the standard library's.
"""

from __future__ import annotations

import re

from pydantic import Field

from stoq.plugin import Extracted, Payload, PluginOptions, ReaderPlugin, Result
from stoq_plugins._mail import Mail, parse, read_headers, read_msg, read_parts

#: A header field name and colon at the start of the payload (RFC 5322 2.2), or an mbox "From " line.
HEADER_START = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|From )")
SUFFIX = {"text/plain": "txt", "text/html": "html"}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: "__substg1" in UTF-16: an Outlook message's property streams (in the compound file's directory).
MSG_STREAM = "__substg1".encode("utf-16-le")


class EmailPlugin(ReaderPlugin):
    """Reads the headers, body parts and attachments of an e-mail message (RFC 5322 and MIME, or Outlook).

    A message is parsed by the standard library (``email.policy.default``); an Outlook .msg (MS-OXMSG)
    by olefile, its headers taken from its transport headers when it was sent, else from its MAPI
    properties. Output ``{"headers": {From, To, Cc, Subject, Date, Message-ID (first of each, None if
    absent), Received (how many)}, "parts" (leaf parts), "bodies", "attachments", "defects" (the
    parser's defect names)}``. Children: each text/plain or text/html body as UTF-8 (an .msg's HTML
    body as stored), named body_<n>.txt/.html; each other leaf part (attachment, inline image,
    attached message) as its decoded bytes under its own filename; meta ``content_type``,
    ``disposition``, ``charset`` (bodies) and ``part`` (position among leaves). Flags:
    ``limit:email-parts``, ``limit:email-header-bytes`` (a header value cut before parsing),
    ``corrupt:email-header`` (a header the policy could not parse: kept raw), ``corrupt:email`` (the
    parser recorded defects); for .msg also ``msg:attachment-not-carved`` (an attached message or a
    link) and the ``limit:ole-*`` and ``corrupt:ole*`` flags of the compound file's reading.
    """

    name = "email"
    version = "1.0"
    mimes = frozenset({"message/rfc822", "application/vnd.ms-outlook"})

    class Options(PluginOptions):
        max_parts: int = Field(500, ge=0, description="Most parts (bodies and attachments) extracted.")
        max_header_bytes: int = Field(64 * 1024, ge=1, description="Longest header value parsed, in "
                                                                   "characters (longer ones are cut).")

    def accepts(self, payload: Payload) -> bool:
        if payload.content.startswith(OLE_MAGIC):
            return MSG_STREAM in payload.content and super().accepts(payload)
        return (payload.mime in self.mimes or HEADER_START.match(payload.content) is not None) \
            and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        mail = Mail()
        if payload.content.startswith(OLE_MAGIC):
            read_msg(payload.content, mail, options.max_parts, options.max_header_bytes)
        else:
            message = parse(payload.content)
            read_headers(message, mail, options.max_header_bytes)
            read_parts(message, mail, options.max_parts)
        if mail.defects:
            mail.flag("corrupt:email")
        children = []
        for number, part in enumerate(mail.parts):
            name: str | None
            meta = {"content_type": part.content_type, "disposition": part.disposition, "part": number}
            if part.is_body:
                meta["charset"] = part.charset
                name = f"body_{number}.{SUFFIX[part.content_type]}"
            else:
                name = part.filename or (f"part_{number}.eml" if part.content_type == "message/rfc822" else None)
            children.append(Extracted(part.content, filename=name, meta=meta))
        bodies = sum(p.is_body for p in mail.parts)
        return Result(data={"headers": mail.headers, "parts": mail.leaves, "bodies": bodies,
                            "attachments": len(mail.parts) - bodies, "defects": sorted(mail.defects)},
                      children=children, flags=mail.flags)
