"""The ``peinfo`` worker: headers, sections, imports and exports of Windows PE files."""

from __future__ import annotations

import pefile
from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin
from stoq_plugins import _pe


class PeinfoPlugin(WorkerPlugin):
    """Reports the headers, sections, imphash, imports, exports and overlay of a PE file.

    Output: machine, timestamp and compile_time, characteristics, is_dll/is_exe/is_driver, subsystem,
    entry_point, image_base, sections (name, addresses, sizes, entropy, md5), imphash, imports (DLL ->
    function names, ``ord<n>`` for ordinals), exports, overlay (offset, size or null) and the number of
    pefile warnings. Flags: ``limit:pe-imports``, ``limit:pe-exports``. A malformed PE raises.
    """

    name = "peinfo"
    version = "1.0"

    class Options(PluginOptions):
        max_imports: int = Field(2000, ge=0, description="Most imported functions listed (all DLLs together).")
        max_exports: int = Field(2000, ge=0, description="Most exported symbols listed.")

    def accepts(self, payload: Payload) -> bool:
        return payload.content[:2] == b"MZ" and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        # From bytes pefile holds no file or mapping, so no close(): it would run a full gc.collect().
        pe = pefile.PE(data=payload.content)  # a malformed file raises PEFormatError: recorded upstream
        imports, imports_cut = _pe.imports(pe, options.max_imports)
        exports, exports_cut = _pe.exports(pe, options.max_exports)
        data = {
            **_pe.header(pe),
            "sections": _pe.sections(pe),
            "imphash": pe.get_imphash(),
            "imports": imports,
            "exports": exports,
            "overlay": _pe.overlay(pe, payload.size),
            "warnings": len(pe.get_warnings()),
        }
        flags = (["limit:pe-imports"] if imports_cut else []) + (["limit:pe-exports"] if exports_cut else [])
        return Result(data=data, flags=flags)
