"""The ``rtf`` carver: objects embedded in RTF documents (``\\objdata``), and the files packaged in them."""

from __future__ import annotations

import struct

from pydantic import Field

from stoq.plugin import CarverPlugin, Extra, Extracted, Payload, PluginOptions, Result
from stoq_plugins._ole import parse_native, parse_ole1

MiB = 1 << 20


class RtfPlugin(CarverPlugin):
    """Carves the objects embedded in RTF documents and the files packaged in OLE Package objects.

    The RTF is tokenized by oletools' rtfobj (which reproduces Word's handling of odd hex digits and
    ``\\'hh`` inside ``\\objdata``). An object that is an embedded OLE1 object yields its native data
    (an OLE2 file for Office objects) as a child (meta ``offset``, ``class_name``, ``format_id``,
    ``size``); an OLE Package also yields the packaged file, named by its label (meta ``package``:
    label, path, temp_path, size). Any other object yields its decoded bytes (meta ``class_name``
    None). Output ``{"objects", "packages"}``. Flags: ``limit:rtf-objects``, ``limit:rtf-object-size``,
    ``corrupt:ole1`` (native data shorter than declared), ``corrupt:package`` (a package header that
    does not fit). A payload that is not RTF is declined.
    """

    name = "rtf"
    extras = (Extra("oletools", "stoq-analysis[oletools]", "the plugin cannot start"),)
    version = "1.0"
    mimes = frozenset({"text/rtf", "application/rtf"})

    def setup(self) -> None:
        from stoq_plugins import _rtfobj  # noqa: F401  (fails clearly without the oletools extra)

    class Options(PluginOptions):
        max_objects: int = Field(100, ge=0, description="Most embedded objects extracted from one document.")
        max_object_bytes: int = Field(64 * MiB, ge=0, description="Largest object extracted, in bytes.")

    def accepts(self, payload: Payload) -> bool:
        return payload.content.lstrip()[:4] == b"{\\rt" and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        from stoq_plugins._rtfobj import RtfObjects  # set up already: oletools is there

        parser = RtfObjects(payload.content, options.max_objects, options.max_object_bytes)
        parser.parse()
        flags = list(parser.flags)
        children: list[Extracted] = []
        packages = 0
        for number, (offset, raw) in enumerate(parser.found):
            try:
                obj = parse_ole1(raw)
            except (ValueError, struct.error):  # not OLE1: the bytes as they are
                children.append(Extracted(raw, filename=f"rtf_object_{number}.bin",
                                          meta={"offset": offset, "class_name": None, "size": len(raw)}))
                continue
            children.append(Extracted(obj.data, filename=f"rtf_object_{number}.bin", meta={
                "offset": offset, "class_name": obj.class_name, "format_id": obj.format_id,
                "size": obj.declared_size}))
            if len(obj.data) < obj.declared_size and "corrupt:ole1" not in flags:
                flags.append("corrupt:ole1")
            if obj.format_id != 2 or obj.class_name.lower() != "package":
                continue
            try:
                native = parse_native(obj.data, prefixed=False)
            except (ValueError, struct.error):
                if "corrupt:package" not in flags:
                    flags.append("corrupt:package")
                continue
            packages += 1
            package = {"label": native.label, "path": native.path, "temp_path": native.temp_path,
                       "size": native.declared_size}
            name = native.label or native.path.replace("\\", "/").rsplit("/", 1)[-1] or None
            children.append(Extracted(native.content, filename=name, meta={"offset": offset, "package": package}))
            if len(native.content) < native.declared_size and "corrupt:package" not in flags:
                flags.append("corrupt:package")
        return Result(data={"objects": len(parser.found), "packages": packages}, children=children, flags=flags)
