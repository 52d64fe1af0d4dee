"""A payload as analysts expect to receive one: inside a zip encrypted with the password
``infected``, never as raw bytes that a browser, a mail filter or a double click could act on.

The zip is AES-256 encrypted (WinZip AE-2, written by pyzipper): 7-Zip, WinRAR, PeaZip, Keka, The
Unarchiver, libarchive's ``bsdtar`` and pyzipper read it. (ZipCrypto, which Windows Explorer and
Info-ZIP ``unzip`` also read, has no writer in C reachable from Python here; in pure Python it runs
at ~0.3 MB/s.) The password keeps the file inert, not secret. The single member is named by the
payload's sha256: never by a name from a scanned file, which could be a path (zip-slip) or an
executable extension.
"""

from __future__ import annotations

import io

PASSWORD = b"infected"


def zipped(sha256: str, content: bytes) -> bytes:
    """``content`` as the only member (``sha256``) of an AES-256 zip with the password ``infected``."""
    import pyzipper

    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(PASSWORD)
        archive.setencryption(pyzipper.WZ_AES, nbits=256)
        archive.writestr(sha256, content)
    return buffer.getvalue()
