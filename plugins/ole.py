"""The ``ole`` carver: streams, packaged files and VBA macros of OLE2 compound files (doc, xls, ppt, msi)."""

from __future__ import annotations

import struct

from pydantic import Field

from stoq.plugin import CarverPlugin, Extra, Extracted, Payload, PluginOptions, Result
from stoq_plugins._ole import NATIVE_STREAM, parse_native, read_macros, read_streams

MiB = 1 << 20
MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class OlePlugin(CarverPlugin):
    """Carves the streams of OLE2 compound files, the files packaged in them and their VBA macro source.

    Every stream is a child named by its storage path joined with "/" (meta ``stream``, ``size``). An
    ``\\x01Ole10Native`` stream (an object embedded with the Packager) also yields the packaged file as
    a child named by its label (meta ``ole10native``: label, path, temp_path, size). With ``vba`` the
    source of each VBA module, read by oletools' olevba, is a child named by the module (meta
    ``vba_module``, ``vba_stream``). Output ``{"streams" (listed), "extracted" (streams read),
    "macros": [{"module", "stream", "size"}], "vba_keywords": [{"type", "keyword", "description"}]}``.
    Flags: ``limit:ole-streams``, ``limit:ole-stream-size``, ``limit:ole-total-bytes``,
    ``limit:vba-modules``, ``corrupt:ole`` (defects olefile tolerated), ``corrupt:ole-stream`` (a
    stream not read whole), ``corrupt:ole10native`` (a package header that does not fit its stream).
    A payload olefile cannot open raises.
    """

    name = "ole"
    extras = (Extra("oletools", "stoq-analysis[oletools]", "no VBA macro source (flag vba:unavailable)"),)
    version = "1.0"
    mimes = frozenset({"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
                       "application/x-msi", "application/CDFV2", "application/x-ole-storage"})

    class Options(PluginOptions):
        max_streams: int = Field(1000, ge=0, description="Most streams extracted from one compound file.")
        max_stream_bytes: int = Field(64 * MiB, ge=0, description="Largest stream extracted, in bytes.")
        max_total_bytes: int = Field(256 * MiB, ge=0,
                                     description="Most stream bytes extracted from one compound file.")
        vba: bool = Field(True, description="Extract VBA macro source and olevba's keyword analysis.")
        max_vba_modules: int = Field(200, ge=0, description="Most VBA modules extracted.")
        max_vba_keywords: int = Field(500, ge=0, description="Most olevba analysis entries reported.")

    def accepts(self, payload: Payload) -> bool:
        return payload.content.startswith(MAGIC) and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        ole = read_streams(payload.content, options.max_streams, options.max_stream_bytes,
                           options.max_total_bytes)
        children: list[Extracted] = []
        for stream in ole.streams:
            if stream.content is None:
                continue
            meta = {"stream": stream.path, "size": stream.size}
            native = None
            if stream.path.rsplit("/", 1)[-1] == NATIVE_STREAM:
                try:
                    native = parse_native(stream.content)
                except (ValueError, struct.error):  # the header does not fit the stream
                    ole.flag("corrupt:ole10native")
            if native is not None:
                meta["ole10native"] = {"label": native.label, "path": native.path,
                                       "temp_path": native.temp_path, "size": native.declared_size}
            children.append(Extracted(stream.content, filename=stream.path, meta=meta))
            if native is not None:
                name = native.label or native.path.replace("\\", "/").rsplit("/", 1)[-1] or None
                children.append(Extracted(native.content, filename=name, meta={
                    "stream": stream.path, "ole10native": meta["ole10native"]}))
                if len(native.content) < native.declared_size:
                    ole.flag("corrupt:ole10native")
        macros: list[dict] = []
        keywords: list[dict] = []
        found = read_macros(payload.content, options.max_vba_modules, options.max_vba_keywords) if options.vba else None
        if options.vba and found is None:
            ole.flag("vba:unavailable")  # oletools (the optional extra) is not installed
        if found is not None:
            modules, keywords, capped = found
            if capped:
                ole.flag("limit:vba-modules")
            for module in modules:
                if module["code"] is None:  # olevba found the module but could not decompress its code
                    macros.append({"module": module["module"], "stream": module["stream"], "size": None})
                    ole.flag("corrupt:vba")
                    continue
                macros.append({"module": module["module"], "stream": module["stream"],
                               "size": len(module["code"])})
                children.append(Extracted(module["code"], filename=module["module"], meta={
                    "vba_module": module["module"], "vba_stream": module["stream"]}))
        return Result(data={"streams": ole.listed, "extracted": sum(s.content is not None for s in ole.streams),
                            "macros": macros, "vba_keywords": keywords},
                      children=children, flags=ole.flags)
