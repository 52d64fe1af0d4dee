"""The ``decompress`` extractor: members of archives (zip, tar, 7z, rar, lzh, ace, cab, iso, udf, vhd, dmg, cpio,
ar, rpm, xar) and contents of compressed streams (gzip, bzip2, xz, lzma, zlib, lzip, zstd)."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import Extracted, ExtractorPlugin, Payload, PluginOptions, Result
from stoq_plugins._ace import unpack_ace
from stoq_plugins._archive import LZMA_MEMORY, TOOL_MEMORY, Limits, Unpacker, unpack_stream, unpack_tar
from stoq_plugins._formats import FORMATS, UNSUPPORTED, declares_members, detect, unsupported
from stoq_plugins._scratch import remove_stale
from stoq_plugins._tools import TOOL_FORMATS, ToolError, unpack_tool
from stoq_plugins._zip import unpack_zip

MiB = 1 << 20
__all__ = ["FORMATS", "DecompressPlugin", "detect"]


class DecompressPlugin(ExtractorPlugin):
    """Extracts archive members and compressed streams' contents, within byte and member caps.

    zip, tar, gzip, bzip2, xz, lzma, zlib and ace (acefile) are read in process; 7z, cab, iso (9660/udf),
    udf, vhd and dmg (the files of their filesystem, else the disk image) and zip with WinZip AES members
    by ``7z``, rar and lzh by ``unar``, cpio, ar (deb), rpm and xar by ``bsdtar``, lzip and zstd by
    ``bsdcat``, each run on a copy in a scratch directory under the same caps (``stoq_plugins._tools``).
    rpm, xar, udf, vhd and dmg are recognised by their magic bytes (dmg by its trailer first). Containers
    libmagic names that nothing here reads (``UNSUPPORTED``), and payloads a dispatch rule sent here that
    are no format read here, are accepted and flagged ``unsupported:FORMAT``, as is an lzh archive of
    which unar reads none of the members its headers declare.

    Output: ``{"format", "members" (regular-file members examined), "extracted" (children)}``; each
    child's meta holds member, size, compressed_size, modified, encrypted and crc (None where the
    format or tool has none). Decompressed bytes are counted as they come: no declared size is
    trusted. Zip entries that overlap another are not extracted. Flags: ``limit:member-bytes``,
    ``limit:total-bytes``, ``limit:members``, ``ratio:high``, ``limit:tool-time`` (a tool killed after
    ``tool_timeout``), ``zip:overlapping-entries``, ``zip:unsupported-method``,
    ``zip:unrecoverable-member``, ``password:none-worked``, ``password:unsupported-encryption``,
    ``corrupt:truncated``, ``corrupt:data``, ``corrupt:member`` (a member not read whole),
    ``corrupt:central-directory`` (zip members then recovered from local headers), ``unsupported:FORMAT``.
    Input of which nothing can be read raises.
    """

    name = "decompress"
    version = "1.0"
    mimes = frozenset(FORMATS) | frozenset(UNSUPPORTED)

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
        self.worker_started()

    def worker_started(self) -> None:
        remove_stale("tool")  # scratch directories of workers killed during an extraction

    def accepts(self, payload: Payload) -> bool:
        return super().accepts(payload) and (detect(payload) is not None or unsupported(payload) is not None)

    def scan(self, payload: Payload, options: Options) -> Result:
        fmt = detect(payload)
        name = unsupported(payload) if fmt is None else None
        if name is not None:  # routed here (MIME type, dispatch rule), read by nothing: said, not silent
            return Result(data={"format": name, "members": 0, "extracted": 0}, flags=[f"unsupported:{name}"])
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
        elif fmt == "ace":
            unpack_ace(payload.content, unpacker)
        elif fmt in TOOL_FORMATS:
            unpack_tool(fmt, payload.content, payload.filename, unpacker, options.tool_timeout)
            if not unpacker.listed and not unpacker.flags and declares_members(fmt, payload.content):
                unpacker.flag(f"unsupported:{fmt}")  # the tool read no member of what declares some
        else:
            unpack_stream(fmt, payload.content, payload.filename, unpacker)
        children = [Extracted(m.content, filename=m.name, meta={
            "member": m.name, "size": len(m.content), "compressed_size": m.compressed_size,
            "modified": m.modified, "encrypted": m.encrypted, "crc": m.crc,
        }) for m in unpacker.members]
        return Result(data={"format": fmt, "members": unpacker.listed, "extracted": len(children)},
                      children=children, flags=list(unpacker.flags))
