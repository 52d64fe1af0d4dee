"""The ``peinfo`` worker: headers, sections, imports, exports, resources, version, debug, signature of PEs."""

from __future__ import annotations

import pefile
from pydantic import Field

from stoq.plugin import Extra, Payload, PluginOptions, Result, WorkerPlugin
from stoq_plugins import _pe


class PeinfoPlugin(WorkerPlugin):
    """Reports the headers, sections, imports, exports, resources, version info, debug and signature of a PE.

    Output: machine, timestamp and compile_time, characteristics, is_dll/is_exe/is_driver, subsystem,
    entry_point, image_base, sections, imphash, imports, exports, overlay, resources, version_info,
    debug (CodeView PDB path, GUID, age), rich_header, tls_callbacks, signature (Authenticode), dotnet,
    warnings (pefile's, and the parts that could not be parsed). Flags: ``pe:malformed`` when there is a
    warning (a file pefile cannot parse at all gives only ``parse_error``), ``limit:pe-*`` when a list
    was cut (see docs/plugins/peinfo.md).
    """

    name = "peinfo"
    version = "1.1"
    extras = (Extra("cryptography", "pip install cryptography", "Authenticode certificates are not listed"),)

    class Options(PluginOptions):
        max_imports: int = Field(2000, ge=0, description="Most imported functions listed (all DLLs together).")
        max_exports: int = Field(2000, ge=0, description="Most exported symbols listed.")
        max_resources: int = Field(1000, ge=0, description="Most resources listed.")
        max_resource_bytes: int = Field(64 << 20, ge=0, description="Most resource bytes hashed, all together.")
        max_items: int = Field(256, ge=0, description="Most sections, version strings, debug entries, Rich "
                               "header entries, TLS callbacks and certificates listed (each).")
        max_warnings: int = Field(50, ge=0, description="Most warnings listed.")

    def accepts(self, payload: Payload) -> bool:
        return payload.content[:2] == b"MZ" and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        try:  # from bytes pefile holds no file or mapping, so no close(): it would run a full gc.collect()
            pe = pefile.PE(data=payload.content)
        except pefile.PEFormatError as exc:  # not even the headers: nothing else to read
            return Result(data={"parse_error": str(exc)}, flags=["pe:malformed"])
        caps = _pe.Caps(options.max_imports, options.max_exports, options.max_resources,
                        options.max_resource_bytes, options.max_items, options.max_warnings)
        data, flags = _pe.describe(pe, payload.size, caps)
        return Result(data=data, flags=flags)
