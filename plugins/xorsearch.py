"""The ``xorsearch`` worker: strings and executables hidden under single-byte XOR, ROL and ADD keys."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from stoq.plugin import Extracted, Payload, PluginOptions, Result, WorkerPlugin

#: Searched by default: the DOS stub's message and URLs (``MZ``/``PE`` headers are always looked for).
DEFAULT_STRINGS = ("This program", "http")


class XorsearchPlugin(WorkerPlugin):
    """Finds strings and PE headers encoded with a single-byte XOR, ROL or ADD key, and decodes the PEs.

    Output: ``{"examined", "hits": [{"method", "key", "offset", "string"}], "executables": [{"method",
    "key", "offset"}]}`` in offset order; encoding is ``x ^ key``, ``x`` rotated left by ``key`` bits, or
    ``x + key`` (mod 256); key 0 (plain text) only with ``plain``. From each executable header found
    (``MZ`` whose ``e_lfanew`` leads to ``PE\\0\\0``), the payload decoded from there on is a child. Flags:
    ``limit:xorsearch-hits`` (``max_hits`` cut the hits or the headers), ``limit:xorsearch-children``,
    ``limit:xorsearch-size``, ``limit:bytes`` (a child would pass the scan's ``max_bytes``: not decoded).
    """

    name = "xorsearch"
    version = "1.0"

    class Options(PluginOptions):
        strings: list[str] = Field(list(DEFAULT_STRINGS), description="Strings searched (UTF-8, 3 bytes or more).")
        plain: bool = Field(False, description="Also report key 0: the strings and headers found unencoded.")
        max_size: int = Field(64 * 1024 * 1024, ge=1, description="Most bytes searched, from the start.")
        max_hits: int = Field(100, ge=0, description="Most string hits reported, and most executable headers.")
        max_children: int = Field(8, ge=0, description="Most decoded executables emitted as children.")

        @field_validator("strings")
        @classmethod
        def _long_enough(cls, value: list[str]) -> list[str]:
            short = [s for s in value if len(s.encode()) < 3]
            if short:
                raise ValueError(f"strings of fewer than 3 bytes match almost anywhere under some key: {short}")
            return value

    def setup(self) -> None:
        import stoq_plugins._xorsearch  # noqa: F401  numpy, before a pool forks (every command loads this module)

    def scan(self, payload: Payload, options: Options) -> Result:
        from stoq_plugins._xorsearch import array, decoded_from, find_executables, find_strings

        data = array(payload.content[:options.max_size])
        flags: list[str] = ["limit:xorsearch-size"] if payload.size > options.max_size else []
        hits: list[dict[str, Any]] = []
        for hit in find_strings(data, list(dict.fromkeys(s.encode() for s in options.strings)), options.plain):
            if len(hits) >= options.max_hits:
                flags.append("limit:xorsearch-hits")
                break
            hits.append({"method": hit.method, "key": hit.key, "offset": hit.offset, "string": hit.pattern.decode()})
        hits.sort(key=lambda h: (h["offset"], h["method"], h["key"], h["string"]))
        executables = find_executables(data, options.plain, options.max_hits)
        if len(executables) > options.max_hits:
            executables = executables[:options.max_hits]
            flags += [] if "limit:xorsearch-hits" in flags else ["limit:xorsearch-hits"]
        children: list[Extracted] = []
        left = payload.bytes_left  # what the scan may still extract: no child decoded past it
        for e in executables[:options.max_children]:
            if left is not None and len(data) - e.offset > left:
                flags.append("limit:bytes")
                break
            children.append(Extracted(decoded_from(data, e.offset, e.method, e.key),
                                      meta={"method": e.method, "key": e.key, "offset": e.offset}))
            left = None if left is None else left - (len(data) - e.offset)
        if len(executables) > options.max_children:
            flags.append("limit:xorsearch-children")
        return Result(data={"examined": len(data), "hits": hits, "executables": [
            {"method": e.method, "key": e.key, "offset": e.offset} for e in executables]}, children=children, flags=flags)
