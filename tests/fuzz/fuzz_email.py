"""Fuzz harness: the ``email`` reader (plugins/mail.py, plugins/_mail.py): RFC 822 messages, MIME
parts, encoded words and charsets; Outlook .msg through its OLE reader."""

from _harness import Target, corpus, main

MAIL = (b"From: =?utf-8?b?w6lsw6h2ZQ==?= <a@example.com>\r\nTo: b@example.com\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9llo\r\n"
        b"--XX\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAECAwQ=\r\n--XX--\r\n")

TARGET = Target("email", "stoq_plugins.mail:EmailPlugin", "message/rfc822", lambda: [MAIL] + corpus("test.eml"))

if __name__ == "__main__":
    main(TARGET)
