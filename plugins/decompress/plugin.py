"""The ``decompress`` extractor: members of archives (zip, tar, 7z, rar, lzh, ace, cab, iso, udf, vhd, dmg, cpio,
ar, rpm, xar) and contents of compressed streams (gzip, bzip2, xz, lzma, zlib, lzip, zstd)."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import Extracted, ExtractorPlugin, Payload, PluginOptions, Result, ToolMissing
from stoq_plugins._scratch import remove_stale
from stoq_plugins.decompress.ace import unpack_ace
from stoq_plugins.decompress.ar import unpack_ar
from stoq_plugins.decompress.budget import BOMB_AFTER, BOMB_RATIO, LZMA_MEMORY, TOOL_MEMORY, Caps, Unpacker
from stoq_plugins.decompress.formats import FORMATS, UNSUPPORTED, declares_members, detect, unsupported
from stoq_plugins.decompress.streams import STREAM_FORMATS, unpack_stream
from stoq_plugins.decompress.tar import unpack_tar
from stoq_plugins.decompress.tools import TOOLS, ToolError, unpack_tool
from stoq_plugins.decompress.zip import unpack_zip

MiB = 1 << 20
__all__ = ["FORMATS", "DecompressPlugin", "detect"]


class DecompressPlugin(ExtractorPlugin):
    """Extracts archive members and compressed streams' contents, within byte and member caps.

    zip, tar, ar (deb), gzip, bzip2, xz, lzma, zlib, zstd (``zstandard``) and ace (acefile) are read in
    process; 7z, cab, iso (9660/udf), udf, vhd and dmg (the files of their filesystem, else the disk image)
    and zip with WinZip AES members by ``7z``, rar and lzh by ``unar``, cpio, rpm and xar by ``bsdtar``,
    lzip (and zstd without ``zstandard``) by ``bsdcat``, each run on a copy in a scratch directory under
    the same caps (``tools``). rpm, xar, udf, vhd and dmg are recognised by their magic
    bytes (dmg by its trailer first). Containers libmagic names that nothing here reads
    (``UNSUPPORTED``), and payloads a dispatch rule sent here that are no format read here, are accepted
    and flagged ``unsupported:FORMAT``, as is an lzh archive of which unar reads none of the members its
    headers declare.

    Output: ``{"format", "members" (regular-file members examined), "extracted" (children),
    "decompressed" (bytes decompressed, kept or not: what the scan's byte budget is charged)}``; each
    child's meta holds member, size, compressed_size, modified, encrypted and crc (None where the
    format or tool has none). Decompressed bytes are counted as they come: no declared size is
    trusted; a member that decompresses at a ratio no real file has (``bomb_ratio`` past ``bomb_after``
    bytes, measured against the compressed bytes read so far where the reader says, else the member's
    or the whole input's compressed size) is abandoned early. Zip entries that overlap another are not
    extracted. Flags: ``limit:member-bytes``, ``limit:total-bytes``, ``limit:members``, ``ratio:high``,
    ``ratio:bomb`` (a member abandoned by that rule), ``limit:tool-time`` (a tool killed after
    ``tool_timeout``), ``zip:overlapping-entries``, ``zip:unsupported-method``,
    ``zip:unrecoverable-member``, ``password:none-worked``, ``password:unsupported-encryption``,
    ``corrupt:truncated``, ``corrupt:data``, ``corrupt:member`` (a member not read whole),
    ``corrupt:central-directory`` (zip members then recovered from local headers), ``tool:missing`` (a zip's
    AES members left unread: 7z is not installed), ``unsupported:FORMAT``. Input of which nothing can be
    read raises; a format whose tool is not installed is a ``tool-missing`` error.
    """

    name = "decompress"
    version = "1.0"
    mimes = frozenset(FORMATS) | frozenset(UNSUPPORTED)
    tools = tuple(TOOLS.values())

    class Options(PluginOptions):
        passwords: list[str] = Field(["infected", "password"],
                                     description="Passwords tried on encrypted members (zip, 7z, rar).")
        max_member_bytes: int = Field(256 * MiB, ge=0, description="Largest member extracted, in bytes.")
        max_total_bytes: int = Field(512 * MiB, ge=0,
                                     description="Most bytes decompressed from one payload, all members together.")
        max_members: int = Field(1000, ge=0, description="Most members extracted from one payload.")
        ratio_flag: float = Field(100, ge=0, description="Flag ratio:high when a member's size exceeds its "
                                                         "compressed size times this.")
        bomb_ratio: float = Field(BOMB_RATIO, ge=0,
                                  description="Abandon a member, flagged ratio:bomb, once it has decompressed to more "
                                              "than this many times the compressed bytes read for it (0: never).")
        bomb_after: int = Field(BOMB_AFTER, ge=0, description="Bytes a member may decompress to before bomb_ratio "
                                                              "applies.")
        tool_timeout: float = Field(60, gt=0, description="Seconds an external extractor may run.")
        max_lzma_memory: int = Field(LZMA_MEMORY, ge=0,
                                     description="Most decoder memory an xz or LZMA stream may ask for, in "
                                                 "bytes (its dictionary; a zstd frame's window too); a stream "
                                                 "asking more is flagged limit:lzma-memory and not decompressed.")
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
        # the scan's own byte budget, when it has less left, caps this payload too (flagged limit:bytes)
        budget_cap = payload.bytes_left is not None and payload.bytes_left < options.max_total_bytes
        total_cap = payload.bytes_left if budget_cap and payload.bytes_left is not None else options.max_total_bytes
        unpacker = Unpacker(Caps(options.max_member_bytes, total_cap, options.max_members,
                                   options.ratio_flag, tuple(p.encode() for p in options.passwords),
                                   options.max_lzma_memory, options.tool_memory, options.bomb_ratio,
                                   options.bomb_after))
        if fmt == "zip":
            unpack_zip(payload.content, unpacker)
            read = unpacker.flags  # WinZip AES: 7z reads it all, unless entries overlap (a zip bomb)
            if "password:unsupported-encryption" in read and "zip:overlapping-entries" not in read:
                by_tool = Unpacker(unpacker.caps)
                try:
                    unpack_tool("zip", payload.content, payload.filename, by_tool, options.tool_timeout)
                    by_tool.unread += unpacker.extracted  # (zipfile's attempt counts too)
                    unpacker = by_tool
                except ToolError:  # 7z cannot open it: keep what zipfile read, flagged
                    pass  # password:unsupported-encryption
                except ToolMissing:  # the same, and say why the AES members were not read
                    unpacker.flag("tool:missing")
        elif fmt == "tar":
            unpack_tar(payload.content, unpacker)
        elif fmt == "ar":
            unpack_ar(payload.content, unpacker)
        elif fmt == "ace":
            unpack_ace(payload.content, unpacker)
        elif fmt in STREAM_FORMATS:  # (zstd too, by the zstandard library, when it is installed)
            unpack_stream(fmt, payload.content, payload.filename, unpacker)
        else:
            unpack_tool(fmt, payload.content, payload.filename, unpacker, options.tool_timeout)
            if not unpacker.listed and not unpacker.flags and declares_members(fmt, payload.content):
                unpacker.flag(f"unsupported:{fmt}")  # the tool read no member of what declares some
        children = [Extracted(m.content, filename=m.name, meta={
            "member": m.name, "size": len(m.content), "compressed_size": m.compressed_size,
            "modified": m.modified, "encrypted": m.encrypted, "crc": m.crc,
        }) for m in unpacker.members]
        flags = [("limit:bytes" if budget_cap and f == "limit:total-bytes" else f) for f in unpacker.flags]
        return Result(data={"format": fmt, "members": unpacker.listed, "extracted": len(children),
                            "decompressed": unpacker.extracted},
                      children=children, flags=flags, extracted_bytes=unpacker.extracted)
