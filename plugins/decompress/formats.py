"""Which container format a payload is, for ``decompress``: by MIME type, else by magic bytes."""

from __future__ import annotations

from stoq.plugin import Payload

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
    "application/x-lzh-compressed": "lzh",
    "application/x-lha": "lzh",
    "application/x-ace-compressed": "ace",
    "application/x-apple-diskimage": "dmg",
}
#: Containers libmagic names that no reader here handles: routed to ``decompress``, which flags them
#: ``unsupported:FORMAT`` rather than leave them unread in silence.
UNSUPPORTED: dict[str, str] = {
    "application/x-arj": "arj",
    "application/x-stuffit": "stuffit",
    "application/x-stuffitx": "stuffit",
    "application/x-compress": "compress",
    "application/x-zoo": "zoo",
    "application/x-arc": "arc",
    "application/vnd.ms-htmlhelp": "chm",
    "application/x-squashfs": "squashfs",
}
#: The format each bundled dispatch rule naming ``decompress`` looks for (for the flag of one not read).
RULE_FORMATS: dict[str, str] = {
    "zip_local_header": "zip", "gzip_stream": "gzip", "bzip2_stream": "bzip2", "xz_stream": "xz", "tar_ustar": "tar",
    "vhd_disk": "vhd", "udf_image": "udf", "rpm_package": "rpm", "xar_archive": "xar", "lzh_archive": "lzh",
    "ace_archive": "ace", "apple_disk_image": "dmg",
}
#: Container format by leading bytes, for payloads dispatched under another MIME type.
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"), (b"LZIP", "lzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"), (b"MSCF\x00\x00\x00\x00", "cab"), (b"!<arch>\n", "ar"), (b"070701", "cpio"),
    (b"070702", "cpio"), (b"070707", "cpio"), (b"\xed\xab\xee\xdb", "rpm"), (b"xar!\x00\x1c", "xar"),
)

#: LZH/LHA compression methods (bytes 4-5 of ``-lh5-`` and the like at offset 2), as unar reads them.
LZH_METHODS = frozenset({b"h0", b"h1", b"h2", b"h3", b"h4", b"h5", b"h6", b"h7", b"hd", b"zs", b"z4", b"z5"})


def detect(payload: Payload) -> str | None:
    """The payload's container format: by MIME type, else by magic bytes (None if neither)."""
    if payload.content[-512:-504] == b"koly\x00\x00\x00\x04":
        return "dmg"  # (an Apple disk image's trailer: libmagic names it after its first chunk, zlib say)
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
    if payload.content[7:14] == b"**ACE**":
        return "ace"
    if payload.content[2:4] == b"-l" and payload.content[6:7] == b"-" and payload.content[4:6] in LZH_METHODS:
        return "lzh"
    if payload.content[257:262] == b"ustar":
        return "tar"
    return disk_image(payload.content)  # udf (no ISO 9660 descriptors first) or vhd, else None


def declares_members(fmt: str, data: bytes) -> bool:
    """True if the container's own headers show at least one member (lzh: a first member header): a tool
    that reads none of it then cannot read the format."""
    if fmt == "lzh":
        return data[:1] != b"\x00" and data[2:4] == b"-l"
    return False


def unsupported(payload: Payload) -> str | None:
    """The format to name in ``unsupported:FORMAT`` for a payload routed here that ``detect`` cannot read:
    by its MIME type (``UNSUPPORTED``), else by the dispatch rule that sent it (its format, or its name)."""
    if payload.mime in UNSUPPORTED:
        return UNSUPPORTED[payload.mime]
    return RULE_FORMATS.get(payload.dispatch_rules[0], payload.dispatch_rules[0]) if payload.dispatch_rules else None


def declared_size(data: bytes) -> int | None:
    """The size a 7z or cab header says its archive has (None for other input)."""
    if data.startswith(b"7z\xbc\xaf\x27\x1c") and len(data) >= 32:
        return 32 + int.from_bytes(data[12:20], "little") + int.from_bytes(data[20:28], "little")
    if data.startswith(b"MSCF") and len(data) >= 12:
        return int.from_bytes(data[8:12], "little")
    return None


def disk_image(data: bytes) -> str | None:
    """``udf`` (a volume recognition sequence from 32 KiB: BEA01 then NSR02 or NSR03, descriptors 2 or 4 KiB
    apart, ISO 9660 ones perhaps first), ``vhd`` (a fixed disk's footer, or a dynamic disk's copy of it
    first) or None."""
    if data[:8] == b"conectix" or data[-512:-504] == b"conectix":
        return "vhd"
    ids = [data[32769 + 2048 * i:32774 + 2048 * i] for i in range(16)]
    if b"BEA01" in ids and {b"NSR02", b"NSR03"} & set(ids[ids.index(b"BEA01"):]):
        return "udf"
    return None
