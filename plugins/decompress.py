"""The ``decompress`` extractor: members of zip and tar archives, contents of gzip, bzip2 and xz."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import Extracted, ExtractorPlugin, Payload, PluginOptions, Result
from stoq_plugins._archive import Limits, Unpacker, unpack_stream, unpack_tar
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
}
#: Container format by leading bytes, for payloads dispatched under another MIME type.
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
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
    return "tar" if payload.content[257:262] == b"ustar" else None


class DecompressPlugin(ExtractorPlugin):
    """Extracts zip and tar members and gzip, bzip2 and xz contents, within byte and member caps.

    Output: ``{"format", "members" (regular-file members examined), "extracted" (children)}``; each
    child's meta holds member, size, compressed_size, modified, encrypted and crc. Decompressed bytes
    are counted as they come: no declared size is trusted. Zip entries that overlap another are not
    extracted. Flags: ``limit:member-bytes``, ``limit:total-bytes``, ``limit:members``, ``ratio:high``,
    ``zip:overlapping-entries``, ``zip:unsupported-method``, ``zip:unrecoverable-member``,
    ``password:none-worked``, ``password:unsupported-encryption`` (WinZip AES), ``corrupt:truncated``,
    ``corrupt:data``, ``corrupt:member``, ``corrupt:central-directory`` (members then recovered from
    local headers). Input of which nothing can be read raises.
    """

    name = "decompress"
    version = "1.0"
    mimes = frozenset(FORMATS)

    class Options(PluginOptions):
        passwords: list[str] = Field(["infected", "password"],
                                     description="Passwords tried on ZipCrypto-encrypted zip members.")
        max_member_bytes: int = Field(256 * MiB, ge=0, description="Largest member extracted, in bytes.")
        max_total_bytes: int = Field(512 * MiB, ge=0,
                                     description="Most bytes decompressed from one payload, all members together.")
        max_members: int = Field(1000, ge=0, description="Most members extracted from one payload.")
        ratio_flag: float = Field(100, ge=0, description="Flag ratio:high when a member's size exceeds its "
                                                         "compressed size times this.")

    def accepts(self, payload: Payload) -> bool:
        return super().accepts(payload) and detect(payload) is not None

    def scan(self, payload: Payload, options: Options) -> Result:
        fmt = detect(payload)
        if fmt is None:
            raise ValueError(f"not a supported container (MIME type {payload.mime})")
        unpacker = Unpacker(Limits(options.max_member_bytes, options.max_total_bytes, options.max_members,
                                   options.ratio_flag, tuple(p.encode() for p in options.passwords)))
        if fmt == "zip":
            unpack_zip(payload.content, unpacker)
        elif fmt == "tar":
            unpack_tar(payload.content, unpacker)
        else:
            unpack_stream(fmt, payload.content, payload.filename, unpacker)
        children = [Extracted(m.content, filename=m.name, meta={
            "member": m.name, "size": len(m.content), "compressed_size": m.compressed_size,
            "modified": m.modified, "encrypted": m.encrypted, "crc": m.crc,
        }) for m in unpacker.members]
        return Result(data={"format": fmt, "members": unpacker.listed, "extracted": len(children)},
                      children=children, flags=list(unpacker.flags))
