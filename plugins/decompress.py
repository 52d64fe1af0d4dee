"""The ``decompress`` extractor: members of archives (zip, tar, 7z, rar, cab, iso, udf, vhd, cpio, ar, rpm,
xar) and contents of compressed streams (gzip, bzip2, xz, lzma, zlib, lzip, zstd)."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import Extracted, ExtractorPlugin, Payload, PluginOptions, Result
from stoq_plugins._archive import LZMA_MEMORY, TOOL_MEMORY, Limits, Unpacker, unpack_stream, unpack_tar
from stoq_plugins._scratch import remove_stale
from stoq_plugins._tools import TOOL_FORMATS, ToolError, disk_image, unpack_tool
from stoq_plugins._zip import unpack_zip

MiB = 1 << 20

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


class DecompressPlugin(ExtractorPlugin):
    """Extracts archive members and compressed streams' contents, within byte and member caps.

    zip, tar, gzip, bzip2, xz, lzma and zlib are read in process; 7z, cab, iso (9660/udf), udf, vhd (the
    files of its filesystem, else the disk image) and zip with WinZip AES members by ``7z``, rar by
    ``unar``, cpio, ar (deb), rpm and xar by ``bsdtar``, lzip and zstd by ``bsdcat``, each run on a copy
    in a scratch directory under the same caps (``stoq_plugins._tools``). rpm, xar, udf and vhd are
    recognised by their magic bytes (they are not in ``mimes``).

    Output: ``{"format", "members" (regular-file members examined), "extracted" (children)}``; each
    child's meta holds member, size, compressed_size, modified, encrypted and crc (None where the
    format or tool has none). Decompressed bytes are counted as they come: no declared size is
    trusted. Zip entries that overlap another are not extracted. Flags: ``limit:member-bytes``,
    ``limit:total-bytes``, ``limit:members``, ``ratio:high``, ``limit:tool-time`` (a tool killed after
    ``tool_timeout``), ``zip:overlapping-entries``, ``zip:unsupported-method``,
    ``zip:unrecoverable-member``, ``password:none-worked``, ``password:unsupported-encryption``,
    ``corrupt:truncated``, ``corrupt:data``, ``corrupt:member`` (a member not read whole),
    ``corrupt:central-directory`` (zip members then recovered from local headers). Input of which
    nothing can be read raises.
    """

    name = "decompress"
    version = "1.0"
    mimes = frozenset(FORMATS)

    class Options(PluginOptions):
        passwords: list[str] = Field(["infected", "password"],
                                     description="Passwords tried on encrypted members (zip, 7z, rar).")
        max_member_bytes: int = Field(256 * MiB, ge=0, description="Largest member extracted, in bytes.")
        max_total_bytes: int = Field(512 * MiB, ge=0,
                                     description="Most bytes decompressed from one payload, all members together.")
        max_members: int = Field(1000, ge=0, description="Most members extracted from one payload.")
        ratio_flag: float = Field(100, ge=0, description="Flag ratio:high when a member's size exceeds its "
                                                         "compressed size times this.")
        tool_timeout: float = Field(60, gt=0, description="Seconds an external extractor may run.")
        max_lzma_memory: int = Field(LZMA_MEMORY, ge=0,
                                     description="Most decoder memory an xz or LZMA stream may ask for, in "
                                                 "bytes (its dictionary); a stream asking more is flagged "
                                                 "limit:lzma-memory and not decompressed.")
        tool_memory: int = Field(TOOL_MEMORY, ge=64 * MiB,
                                 description="Address space an external extractor may use, in bytes "
                                             "(RLIMIT_AS); a tool that runs out is flagged limit:tool-memory.")

    def setup(self) -> None:
        remove_stale("tool")  # scratch directories of workers killed during an extraction

    def accepts(self, payload: Payload) -> bool:
        return super().accepts(payload) and detect(payload) is not None

    def scan(self, payload: Payload, options: Options) -> Result:
        fmt = detect(payload)
        if fmt is None:
            raise ValueError(f"not a supported container (MIME type {payload.mime})")
        unpacker = Unpacker(Limits(options.max_member_bytes, options.max_total_bytes, options.max_members,
                                   options.ratio_flag, tuple(p.encode() for p in options.passwords),
                                   options.max_lzma_memory, options.tool_memory))
        if fmt == "zip":
            unpack_zip(payload.content, unpacker)
            flags = unpacker.flags  # WinZip AES: 7z reads it all, unless entries overlap (a zip bomb)
            if "password:unsupported-encryption" in flags and "zip:overlapping-entries" not in flags:
                by_tool = Unpacker(unpacker.limits)
                try:
                    unpack_tool("zip", payload.content, payload.filename, by_tool, options.tool_timeout)
                    unpacker = by_tool
                except (ToolError, FileNotFoundError):  # 7z cannot open it, or is not installed:
                    pass  # keep what zipfile read, flagged password:unsupported-encryption
        elif fmt == "tar":
            unpack_tar(payload.content, unpacker)
        elif fmt in TOOL_FORMATS:
            unpack_tool(fmt, payload.content, payload.filename, unpacker, options.tool_timeout)
        else:
            unpack_stream(fmt, payload.content, payload.filename, unpacker)
        children = [Extracted(m.content, filename=m.name, meta={
            "member": m.name, "size": len(m.content), "compressed_size": m.compressed_size,
            "modified": m.modified, "encrypted": m.encrypted, "crc": m.crc,
        }) for m in unpacker.members]
        return Result(data={"format": fmt, "members": unpacker.listed, "extracted": len(children)},
                      children=children, flags=list(unpacker.flags))
