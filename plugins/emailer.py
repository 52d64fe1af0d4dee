"""The ``emailer`` connector: a summary of each finished scan, rendered with a Jinja2 template, by SMTP."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Iterable

from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin, PartialDelivery
from stoq.templates import compile_template, render

DEFAULT_SUBJECT = ("stoq: {{ doc.source.path | default('scan') | terminal }}: {{ doc.payloads }} payload(s), "
                   "{{ doc.errors | length }} error(s)")


class EmailerConnector(ConnectorPlugin):
    """Mails one message per finished document: the subject and the plain-text body rendered in
    Jinja2's sandbox (default body: ``builtin:email``), ``Message-ID: <scan id@stoq>`` and the header
    ``X-Stoq-Scan-Id`` (a mail system or a reader can drop a repeat by them), over SMTP (STARTTLS or
    TLS on request) with smtplib, one connection per batch."""

    name = "emailer"
    version = "1.0"

    class Options(ConnectorOptions):
        """The SMTP server, the addresses and the templates."""

        host: str = Field("localhost", description="SMTP server.")
        port: int = Field(25, ge=1, le=65535, description="SMTP port (587 with starttls, 465 with tls).")
        sender: str | None = Field(None, description="From address (required).")
        to: list[str] = Field(default_factory=list, description="Recipients (required), comma-separated.")
        subject: str = Field(DEFAULT_SUBJECT, description="Subject template (Jinja2, sandboxed; one line).")
        template: str = Field("builtin:email", description="Body template: a file, or builtin:NAME (email, markdown, payloads, csv).")
        starttls: bool = Field(False, description="Upgrade the connection with STARTTLS.")
        tls: bool = Field(False, description="Connect with TLS (SMTPS).")
        username: str | None = Field(None, description="SMTP AUTH user.")
        password: str | None = Field(None, description="SMTP AUTH password.", json_schema_extra={"secret": True})
        timeout: float = Field(30.0, gt=0, description="Seconds to connect and per command.")

    def setup(self) -> None:
        if not self.options.sender:
            raise ValueError("emailer.sender is not set (-o emailer.sender=stoq@example.org)")
        if not self.options.to:
            raise ValueError("emailer.to is not set (-o emailer.to=soc@example.org,ir@example.org)")
        from stoq.templates import environment

        self.body = compile_template(self.options.template)
        self.subject = environment().from_string(self.options.subject)

    def message(self, doc: dict[str, Any]) -> EmailMessage:
        """The message of one document."""
        msg = EmailMessage()
        msg["From"] = self.options.sender
        msg["To"] = ", ".join(self.options.to)
        msg["Subject"] = " ".join(render(self.subject, doc=doc).split())[:900]  # one line, whatever the names
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = f"<{doc['scan_id']}@stoq>"
        msg["X-Stoq-Scan-Id"] = doc["scan_id"]
        msg.set_content(render(self.body, doc=doc, index=0))
        return msg

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        docs = list(documents)
        messages = [self.message(doc) for doc in docs]  # a template error fails the batch before any mail
        o = self.options
        sent = 0
        try:
            smtp = (smtplib.SMTP_SSL(o.host, o.port, timeout=o.timeout, context=ssl.create_default_context())
                    if o.tls else smtplib.SMTP(o.host, o.port, timeout=o.timeout))
            with smtp:
                if o.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if o.username:
                    smtp.login(o.username, o.password or "")
                for msg in messages:
                    smtp.send_message(msg)
                    sent += 1
        except (OSError, smtplib.SMTPException) as exc:
            raise PartialDelivery(f"SMTP {o.host}:{o.port}: {type(exc).__name__}: {exc}",
                                  [d["scan_id"] for d in docs[sent:]]) from exc
