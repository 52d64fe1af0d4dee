#!/usr/bin/env python3
"""Cost of the exif and clamav workers, and of iocextract on the text children of pdftext and email:
each plugin's ``scan`` called in process (set up once, no engine) on a few corpus files, median of 5
runs per file. clamav talks to a clamd started here (a one-signature database in a temporary directory:
the cost of the protocol and of clamd's parsers, not of a full signature set). Needs ``exiftool`` and
``clamd``.

Usage: bench/exif_clamav.py [CORPUS]   (prints Markdown tables on stdout)
"""

from __future__ import annotations

import email
import email.policy
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import median, payload
from stoq.plugin import Payload
from stoq_plugins._pdf import extract
from stoq_plugins.clamav import ClamavPlugin
from stoq_plugins.exif import ExifPlugin
from stoq_plugins.iocextract import IocextractPlugin

EXIF_FILES = ("test.jpg", "test.png", "test.pdf", "test.docx", "test.doc", "test.exe")
CLAMAV_FILES = ("test.txt", "test.jpg", "test.pdf", "test.exe", "test.zip", "test.docx")


def table(title: str, plugin: object, items: list[tuple[str, Payload]]) -> None:
    print(f"\n{title}\n\n| payload | bytes | ms/payload | MB/s |\n|---|---|---|---|")
    for label, item in items:
        took = median(lambda: plugin.scan(item, plugin.options))  # type: ignore[attr-defined]
        print(f"| {label} | {item.size} | {took * 1000:.2f} | {item.size / took / 1e6:.1f} |")


def start_clamd(root: Path) -> subprocess.Popen[bytes]:
    (root / "db").mkdir()
    (root / "db" / "own.ndb").write_text("Bench.Marker:0:*:" + b"stoq-bench-marker".hex() + "\n")
    (root / "clamd.conf").write_text(f"LocalSocket {root / 's'}\nDatabaseDirectory {root / 'db'}\n"
                                     f"Foreground yes\nLogFile {root / 'log'}\n")
    proc = subprocess.Popen(["clamd", "-c", str(root / "clamd.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(root / "s"))
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("clamd did not start")


def main() -> None:
    corpus = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "../shared/corpus")

    exif = ExifPlugin()
    exif.setup()
    first = time.perf_counter()
    exif.scan(payload((corpus / "test.jpg").read_bytes(), "test.jpg"), exif.options)
    print(f"exif: first payload, ExifTool started: {(time.perf_counter() - first) * 1000:.0f} ms")
    table("exif (one stay-open ExifTool)", exif, [(n, payload((corpus / n).read_bytes(), n)) for n in EXIF_FILES])
    exif.exiftool.stop()

    with tempfile.TemporaryDirectory() as tmp:
        clamd = start_clamd(Path(tmp))
        try:
            clamav = ClamavPlugin(ClamavPlugin.Options(socket=str(Path(tmp) / "s")))
            table("clamav (clamd on a UNIX socket, one-signature database)", clamav,
                  [(n, payload((corpus / n).read_bytes(), n)) for n in CLAMAV_FILES])
        finally:
            clamd.terminate()
            clamd.wait()

    pdf_text = extract((corpus / "test.pdf").read_bytes(), "", 500, 10_000_000, 64 << 20)["text"]
    message = email.message_from_bytes((corpus / "test.eml").read_bytes(), policy=email.policy.default)
    bodies = [part.get_content() for part in message.walk()
              if part.get_content_type() in ("text/plain", "text/html") and not part.is_attachment()]
    items = [("test.pdf.txt (pdftext)", payload(pdf_text.encode(), "test.pdf.txt"))]
    items += [(f"body_{i} of test.eml (email)", payload(b.encode(), None)) for i, b in enumerate(bodies)]
    table("iocextract on reader text", IocextractPlugin(), items)


if __name__ == "__main__":
    main()
