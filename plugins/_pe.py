"""PE metadata from a parsed ``pefile.PE``: the logic behind the ``peinfo`` plugin."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pefile

from stoq.model import iso, text


def _name(table: dict[Any, Any], value: int) -> str:
    """The symbolic name pefile knows for ``value``, else its hex form."""
    name = table.get(value)
    return name if isinstance(name, str) else hex(value)


def _flags(pairs: list[tuple[str, int]], value: int) -> list[str]:
    return [name for name, bit in pairs if value & bit]


def header(pe: pefile.PE) -> dict[str, Any]:
    """File and optional header fields: machine, time stamp, characteristics, kind, entry point."""
    fh, oh = pe.FILE_HEADER, pe.OPTIONAL_HEADER
    stamp = fh.TimeDateStamp
    return {
        "machine": _name(pefile.MACHINE_TYPE, fh.Machine),
        "timestamp": stamp,
        "compile_time": iso(datetime.fromtimestamp(stamp, timezone.utc)),
        "characteristics": _flags(pefile.image_characteristics, fh.Characteristics),
        "dll_characteristics": _flags(pefile.dll_characteristics, oh.DllCharacteristics),
        "is_dll": pe.is_dll(),
        "is_exe": pe.is_exe(),
        "is_driver": pe.is_driver(),
        "pe32_plus": oh.Magic == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS,
        "subsystem": _name(pefile.SUBSYSTEM_TYPE, oh.Subsystem),
        "entry_point": oh.AddressOfEntryPoint,
        "image_base": oh.ImageBase,
    }


def sections(pe: pefile.PE) -> list[dict[str, Any]]:
    """One entry per section header, with the entropy and MD5 of its raw data."""
    return [{
        "name": text(section.Name.rstrip(b"\x00")),
        "virtual_address": section.VirtualAddress,
        "virtual_size": section.Misc_VirtualSize,
        "raw_size": section.SizeOfRawData,
        "entropy": section.get_entropy(),
        "md5": section.get_hash_md5(),
    } for section in pe.sections]


def imports(pe: pefile.PE, cap: int) -> tuple[dict[str, list[str]], bool]:
    """DLL name -> imported function names (``ord<n>`` for ordinals); True if ``cap`` cut the list."""
    found: dict[str, list[str]] = {}
    count = 0
    for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", ()):
        names = found.setdefault(text(entry.dll or b""), [])
        for imp in entry.imports:
            if count >= cap:
                return found, True
            names.append(text(imp.name) if imp.name is not None else f"ord{imp.ordinal}")
            count += 1
    return found, False


def exports(pe: pefile.PE, cap: int) -> tuple[list[dict[str, Any]], bool]:
    """Exported symbols (name or null, ordinal, address); True if ``cap`` cut the list."""
    directory = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    symbols = directory.symbols if directory is not None else []
    listed = [{"name": None if sym.name is None else text(sym.name), "ordinal": sym.ordinal,
               "address": sym.address} for sym in symbols[:cap]]
    return listed, len(symbols) > cap


def overlay(pe: pefile.PE, size: int) -> dict[str, int] | None:
    """Where data past the last section starts, and how much of it there is."""
    start = pe.get_overlay_data_start_offset()
    return None if start is None else {"offset": start, "size": size - start}
