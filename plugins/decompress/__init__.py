"""The ``decompress`` extractor (entry point ``stoq_plugins.decompress:DecompressPlugin``) and its helpers:

- ``plugin``: the plugin class, its options, and which reader a format goes to;
- ``formats``: which container format a payload is (MIME type, magic bytes, dispatch rule);
- ``budget``: the caps of one extraction, the bomb rule, the members and flags collected under them;
- ``streams``: gzip, bzip2, xz, lzma, zlib and zstd streams, in process;
- ``zip``, ``tar``, ``ar``, ``ace``: those archives, in process;
- ``tools``: the formats read by external tools (7z, unar, bsdtar, bsdcat), sandboxed.
"""

from stoq_plugins.decompress.plugin import FORMATS, DecompressPlugin, detect

__all__ = ["FORMATS", "DecompressPlugin", "detect"]
