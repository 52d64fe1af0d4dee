"""The ``exif`` worker: ExifTool's metadata of images, documents, executables, audio and video."""

from __future__ import annotations

import re

from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin
from stoq_plugins._exiftool import EXIFTOOL, ExifTool, OutputLimit

MiB = 1 << 20
#: MIME types (libmagic's) ExifTool is run on by default; one ending in ``*`` is a prefix.
TYPES = ("image/*", "audio/*", "video/*", "font/*", "application/pdf", "application/postscript", "application/rtf",
         "text/rtf", "application/msword", "application/vnd.ms-excel*", "application/vnd.ms-powerpoint*",
         "application/vnd.ms-word*", "application/vnd.ms-office", "application/vnd.openxmlformats-officedocument.*",
         "application/vnd.oasis.opendocument.*", "application/x-msi", "application/vnd.microsoft.portable-executable",
         "application/x-dosexec", "application/x-executable", "application/x-pie-executable",
         "application/x-sharedlib", "application/x-mach-binary", "application/x-ms-shortcut",
         "application/x-shockwave-flash", "application/ogg", "application/x-matroska")
#: What ExifTool says of the scratch copy rather than of the payload: its name, place, dates, mode.
OURS = ("SourceFile", "System:FileName", "System:Directory", "System:FileModifyDate", "System:FileAccessDate",
        "System:FileInodeChangeDate", "System:FilePermissions")
SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")


class ExifPlugin(WorkerPlugin):
    """Reads a payload's metadata with ExifTool: EXIF, XMP, IPTC, ICC, PDF, Office, PE version info, media tags.

    One ``exiftool -stay_open`` process per worker process (``stoq_plugins._exiftool``) reads each
    payload from a private scratch copy (named ``payload`` plus the payload's own extension, which
    ExifTool uses to type a few formats) with ``-j -G1`` (JSON, each tag named ``Group:Tag`` with its
    family-1 group: ``IFD0:Make``, ``ExifIFD:DateTimeOriginal``, ``XMP-dc:Creator``) and, with
    ``numeric`` (default), ``-n`` (values as stored: ``0.004`` not ``1/250``, GPS in signed degrees).
    Output ``{"tags": {Group:Tag: value}}`` without what describes the scratch copy rather than the
    payload (``SourceFile`` and the ``System`` group's name, directory, dates and permissions;
    ``System:FileSize`` stays). Runs on the MIME types of ``types``. Flags: ``exif:error`` (ExifTool
    reported ``ExifTool:Error``, such as an unknown or damaged format), ``exif:warning``
    (``ExifTool:Warning``), ``limit:exif-size`` (payload over ``max_bytes``: not read),
    ``limit:exif-output`` (answer over ``max_output_bytes``: ExifTool killed, no tags). An ExifTool that
    does not answer within ``timeout`` is killed: the payload gets an ``ExifToolTimeout`` error entry and
    the next one a fresh ExifTool; one that died gets an ``ExifToolError`` entry, likewise.
    """

    name = "exif"
    version = "1.0"
    tools = (EXIFTOOL,)

    class Options(PluginOptions):
        types: list[str] = Field(list(TYPES), description="MIME types run on (an entry ending in * is a prefix; "
                                                          "* alone: every payload).")
        numeric: bool = Field(True, description="Values as stored (-n) rather than ExifTool's printed forms.")
        timeout: float = Field(20.0, gt=0, description="Seconds ExifTool may take on one payload before it is "
                                                       "killed and restarted.")
        max_bytes: int = Field(256 * MiB, ge=0, description="Largest payload read, in bytes (limit:exif-size).")
        max_output_bytes: int = Field(4 * MiB, ge=1024, description="Most bytes of ExifTool's JSON answer "
                                                                    "(limit:exif-output).")

    def __init__(self, options: PluginOptions | None = None) -> None:
        super().__init__(options)
        self.exiftool = ExifTool()

    def setup(self) -> None:
        self.worker_started()

    def worker_started(self) -> None:
        ExifTool.remove_stale()  # scratch copies of a killed worker's ExifTool

    def accepts(self, payload: Payload) -> bool:
        mime = payload.mime
        return super().accepts(payload) and any(
            mime.startswith(t[:-1]) if t.endswith("*") else mime == t for t in self.options.types)

    def scan(self, payload: Payload, options: Options) -> Result:
        if payload.size > options.max_bytes:
            return Result(data={"tags": {}}, flags=["limit:exif-size"])
        found = SUFFIX.search(payload.filename or "")
        args = ["-G1", "-n"] if options.numeric else ["-G1"]
        try:
            tags, _ = self.exiftool.read(payload.content, found.group() if found else "", args, options.timeout,
                                         options.max_output_bytes)
        except OutputLimit:
            return Result(data={"tags": {}}, flags=["limit:exif-output"])
        for key in OURS:
            tags.pop(key, None)
        flags = [flag for flag, key in (("exif:error", "ExifTool:Error"), ("exif:warning", "ExifTool:Warning"))
                 if key in tags]
        return Result(data={"tags": tags}, flags=flags)
