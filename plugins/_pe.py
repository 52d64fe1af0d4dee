"""PE metadata from a parsed ``pefile.PE``: the logic behind the ``peinfo`` plugin."""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

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


def sections(pe: pefile.PE, cap: int) -> tuple[list[dict[str, Any]], bool]:
    """One entry per section header, with the entropy and MD5 of its raw data; True if ``cap`` cut them."""
    return [{
        "name": text(section.Name.rstrip(b"\x00")),
        "virtual_address": section.VirtualAddress,
        "virtual_size": section.Misc_VirtualSize,
        "raw_size": section.SizeOfRawData,
        "entropy": section.get_entropy(),
        "md5": section.get_hash_md5(),
    } for section in pe.sections[:cap]], len(pe.sections) > cap


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


Capped = tuple[Any, bool]


def resources(pe: pefile.PE, cap: int, max_bytes: int) -> tuple[list[dict[str, Any]], bool, bool]:
    """Resource leaves (type, name, language, sublanguage, size, sha256); True if ``cap`` cut the list,
    True if ``max_bytes`` (hashed in all) left a ``sha256`` null. Data outside the file: sha256 null."""
    found: list[dict[str, Any]] = []
    hashed, bytes_cut = 0, False
    root = getattr(pe, "DIRECTORY_ENTRY_RESOURCE", None)
    for rtype in root.entries if root is not None else ():
        kind = text(str(rtype.name)) if rtype.name is not None else _name(pefile.RESOURCE_TYPE, rtype.struct.Id)
        for rname in getattr(getattr(rtype, "directory", None), "entries", ()):
            name: str | int = text(str(rname.name)) if rname.name is not None else rname.struct.Id
            for leaf in getattr(getattr(rname, "directory", None), "entries", ()):
                data = getattr(leaf, "data", None)
                if data is None:
                    continue
                if len(found) >= cap:
                    return found, True, bytes_cut
                size, digest = data.struct.Size, None
                try:
                    offset = pe.get_offset_from_rva(data.struct.OffsetToData)
                except pefile.PEFormatError:  # outside every section and the headers
                    offset = None
                if offset is None or offset + size > len(pe.__data__):
                    pass  # not in the file: no digest
                elif hashed + size > max_bytes:
                    bytes_cut = True
                else:
                    digest = hashlib.sha256(pe.__data__[offset:offset + size]).hexdigest()
                    hashed += size
                found.append({"type": kind, "name": name, "language": pefile.LANG.get(data.lang, data.lang),
                              "sublanguage": pefile.get_sublang_name_for_lang(data.lang, data.sublang),
                              "size": size, "sha256": digest})
    return found, False, bytes_cut


def version_info(pe: pefile.PE, cap: int) -> Capped:
    """StringFileInfo key -> value (every string table merged, first value kept), and the fixed file
    and product versions; None without a version resource. True if ``cap`` cut the strings."""
    fixed = getattr(pe, "VS_FIXEDFILEINFO", None)
    strings: dict[str, str] = {}
    cut = False
    for group in getattr(pe, "FileInfo", ()):
        for entry in group:
            for table in getattr(entry, "StringTable", ()) if getattr(entry, "Key", b"") == b"StringFileInfo" else ():
                for key, value in table.entries.items():
                    if len(strings) >= cap:
                        cut = True
                        break
                    strings.setdefault(text(key), text(value))
    if fixed is None and not strings:
        return None, False
    info: dict[str, Any] = {"strings": strings, "file_version": None, "product_version": None}
    if fixed:
        f = fixed[0]
        info["file_version"] = _version(f.FileVersionMS, f.FileVersionLS)
        info["product_version"] = _version(f.ProductVersionMS, f.ProductVersionLS)
    return info, cut


def _version(ms: int, ls: int) -> str:
    return f"{ms >> 16}.{ms & 0xFFFF}.{ls >> 16}.{ls & 0xFFFF}"


def debug(pe: pefile.PE, cap: int) -> Capped:
    """Debug directory entries (type, time stamp); a CodeView RSDS entry adds ``pdb`` (path, GUID, age,
    and ``symbol_id``, the symbol-server key). True if ``cap`` cut the list."""
    entries = getattr(pe, "DIRECTORY_ENTRY_DEBUG", [])
    found = []
    for entry in entries[:cap]:
        item: dict[str, Any] = {"type": _name(pefile.DEBUG_TYPE, entry.struct.Type),
                                "timestamp": entry.struct.TimeDateStamp}
        cv = entry.entry
        if cv is not None and getattr(cv, "CvSignature", None) == b"RSDS":
            start = cv.get_file_offset() + 4
            guid = uuid.UUID(bytes_le=bytes(pe.__data__[start:start + 16]))
            item["pdb"] = {"path": text(cv.PdbFileName.split(b"\x00", 1)[0]), "guid": str(guid), "age": cv.Age,
                           "symbol_id": cv.Signature_String}
        elif cv is not None and getattr(cv, "CvSignature", None) == b"NB10":
            item["pdb"] = {"path": text(cv.PdbFileName.split(b"\x00", 1)[0]), "guid": None, "age": cv.Age,
                           "symbol_id": None}
        found.append(item)
    return found, len(entries) > cap


def rich_header(pe: pefile.PE, cap: int) -> Capped:
    """The Rich header's entries (product id, build, count) and its MD5 (pefile's ``get_rich_header_hash``,
    over the header's clear data); None without one. True if ``cap`` cut the entries."""
    rich = getattr(pe, "RICH_HEADER", None)
    if rich is None:
        return None, False
    values = rich.values
    pairs = [(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
    entries = [{"comp_id": comp, "product_id": comp >> 16, "build": comp & 0xFFFF, "count": count}
               for comp, count in pairs[:cap]]
    return {"entries": entries, "checksum": rich.checksum, "md5": pe.get_rich_header_hash()}, len(pairs) > cap


def tls_callbacks(pe: pefile.PE, cap: int) -> Capped:
    """The TLS callbacks' virtual addresses (the null-terminated array at AddressOfCallBacks); None without
    a TLS directory. True if ``cap`` cut the list."""
    tls = getattr(pe, "DIRECTORY_ENTRY_TLS", None)
    if tls is None:
        return None, False
    wide = pe.OPTIONAL_HEADER.Magic == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS
    read = pe.get_qword_at_rva if wide else pe.get_dword_at_rva
    at = tls.struct.AddressOfCallBacks - pe.OPTIONAL_HEADER.ImageBase
    found: list[int] = []
    while tls.struct.AddressOfCallBacks and at >= 0:
        address = read(at + len(found) * (8 if wide else 4))
        if not address:  # the terminating null, or outside the file
            return found, False
        if len(found) >= cap:
            return found, True
        found.append(address)
    return found, False


def signature(pe: pefile.PE, cap: int) -> Capped:
    """The security directory (Authenticode): where it is, its WIN_CERTIFICATE revision and type, and
    with the optional ``cryptography`` package the certificates of its PKCS#7 (subject, issuer, serial)
    and ``signer``, the subject of the one certificate that issued no other. None without one."""
    offset, size = _directory(pe, "IMAGE_DIRECTORY_ENTRY_SECURITY")
    if not offset or not size:
        return None, False
    data = pe.__data__
    info: dict[str, Any] = {"offset": offset, "size": size, "within_file": offset + size <= len(data),
                            "revision": None, "certificate_type": None, "certificates": None, "signer": None}
    if offset + 8 > len(data):
        return info, False
    length, info["revision"], info["certificate_type"] = struct.unpack_from("<IHH", data, offset)
    blob = bytes(data[offset + 8:offset + min(length, size)])
    certs = _certificates(blob) if info["certificate_type"] == 2 else None  # WIN_CERT_TYPE_PKCS_SIGNED_DATA
    if certs is None:
        return info, False
    issuers = {c["issuer"] for c in certs if c["issuer"] != c["subject"]}
    leaves = [c["subject"] for c in certs if c["subject"] not in issuers]
    info["certificates"], info["signer"] = certs[:cap], leaves[0] if len(leaves) == 1 else None
    return info, len(certs) > cap


def _certificates(blob: bytes) -> list[dict[str, Any]] | None:
    """The certificates a DER PKCS#7 carries, or None without ``cryptography`` or when it cannot read it."""
    try:
        from cryptography.hazmat.primitives.serialization import pkcs7
    except ImportError:
        return None
    try:
        certs = pkcs7.load_der_pkcs7_certificates(blob)
    except ValueError:
        return None
    return [{"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
             "serial": format(c.serial_number, "x")} for c in certs]


def is_dotnet(pe: pefile.PE) -> bool:
    """True when the COM descriptor (CLR header) directory is set: a .NET assembly."""
    address, size = _directory(pe, "IMAGE_DIRECTORY_ENTRY_COM_DESCRIPTOR")
    return bool(address and size)


def _directory(pe: pefile.PE, name: str) -> tuple[int, int]:
    """(VirtualAddress, Size) of a data directory; (0, 0) when the header declares fewer directories."""
    index = pefile.DIRECTORY_ENTRY[name]
    table = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    return (table[index].VirtualAddress, table[index].Size) if index < len(table) else (0, 0)


#: What pefile and the readers above raise on a damaged structure: the part is left out, as a warning.
PARSE_ERRORS = (pefile.PEFormatError, struct.error, ValueError, IndexError, KeyError, AttributeError, TypeError)


@dataclass(frozen=True)
class Caps:
    """The bounds of one ``describe``: most items per list, most resource bytes hashed."""

    imports: int
    exports: int
    resources: int
    resource_bytes: int
    items: int
    warnings: int


def describe(pe: pefile.PE, size: int, caps: Caps) -> tuple[dict[str, Any], list[str]]:
    """Everything ``peinfo`` reports of a parsed PE, and its flags. A part that fails to parse is null
    and its failure is one more warning; any warning flags ``pe:malformed``."""
    flags: list[str] = []
    failed: list[str] = []

    def part(name: str, flag: str | tuple[str, ...], read: Callable[[], tuple[Any, ...]], empty: Any = None) -> Any:
        try:
            value, *cuts = read()
        except PARSE_ERRORS as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            return empty
        flags.extend(f for f, cut in zip((flag,) if isinstance(flag, str) else flag, cuts) if cut)
        return value

    data = {
        **(part("header", "", lambda: (header(pe),)) or {}),
        "sections": part("sections", "limit:pe-sections", lambda: sections(pe, caps.items), []),
        "imphash": part("imphash", "", lambda: (pe.get_imphash(),)),
        "imports": part("imports", "limit:pe-imports", lambda: imports(pe, caps.imports), {}),
        "exports": part("exports", "limit:pe-exports", lambda: exports(pe, caps.exports), []),
        "overlay": part("overlay", "", lambda: (overlay(pe, size),)),
        "resources": part("resources", ("limit:pe-resources", "limit:pe-resource-bytes"),
                          lambda: resources(pe, caps.resources, caps.resource_bytes), []),
        "version_info": part("version_info", "limit:pe-version-strings", lambda: version_info(pe, caps.items)),
        "debug": part("debug", "limit:pe-debug", lambda: debug(pe, caps.items), []),
        "rich_header": part("rich_header", "limit:pe-rich", lambda: rich_header(pe, caps.items)),
        "tls_callbacks": part("tls_callbacks", "limit:pe-tls-callbacks", lambda: tls_callbacks(pe, caps.items)),
        "signature": part("signature", "limit:pe-certificates", lambda: signature(pe, caps.items)),
        "dotnet": part("dotnet", "", lambda: (is_dotnet(pe),)),
    }
    warnings = [*pe.get_warnings(), *failed]
    data["warning_count"] = len(warnings)
    data["warnings"] = [text(w) for w in warnings[:caps.warnings]]
    if warnings:
        flags.append("pe:malformed")
    if len(warnings) > caps.warnings:
        flags.append("limit:pe-warnings")
    return data, flags
