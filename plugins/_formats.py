"""Which container format a payload is, for ``decompress``: by MIME type, else by magic bytes."""

from __future__ import annotations

from stoq.plugin import Payload
from stoq_plugins._tools import disk_image

#: Container format by MIME type.
FORMATS: dict[str, str] = {
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "zip",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "zip",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "zip",
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/x-tar": "tar",
    "application/x-rpm": "rpm",
    "application/x-xar": "xar",
    "application/x-virtualbox-vhd": "vhd",
    "application/x-lzma": "lzma",
    "application/zlib": "zlib",
    "application/x-lzip": "lzip",
    "application/zstd": "zstd",
    "application/x-7z-compressed": "7z",
    "application/x-rar": "rar",
    "application/vnd.rar": "rar",
    "application/x-rar-compressed": "rar",
    "application/vnd.ms-cab-compressed": "cab",
    "application/x-iso9660-image": "iso",
    "application/x-cpio": "cpio",
    "application/x-archive": "ar",
    "application/vnd.debian.binary-package": "ar",
}
#: Container format by leading bytes, for payloads dispatched under another MIME type.
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"), (b"LZIP", "lzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"), (b"MSCF\x00\x00\x00\x00", "cab"), (b"!<arch>\n", "ar"), (b"070701", "cpio"),
    (b"070702", "cpio"), (b"070707", "cpio"), (b"\xed\xab\xee\xdb", "rpm"), (b"xar!\x00\x1c", "xar"),
)


def detect(payload: Payload) -> str | None:
    """The payload's container format: by MIME type, else by magic bytes (None if neither)."""
    fmt = FORMATS.get(payload.mime)
    if fmt is not None:
        return fmt
    head = payload.content[:8]
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    if payload.content[32769:32774] == b"CD001":
        return "iso"
    if head[:2] in (b"\xc7\x71", b"\x71\xc7") and b"TRAILER!!!" in payload.content[-1024:]:
        return "cpio"  # old binary cpio: a 2-byte magic, so its trailer is asked for too
    if payload.content[257:262] == b"ustar":
        return "tar"
    return disk_image(payload.content)  # udf (no ISO 9660 descriptors first) or vhd, else None
