// Default dispatch rules (stoQ's convention). A matching rule sends the payload to the plugins named
// in its `plugin` meta ("category:name", comma-separated). `save = "False"` keeps what that plugin
// extracts out of the archive. Every other meta key is passed to the plugin as an option.
// MIME routing (a plugin's `mimes`) already covers well-typed files; these rules catch containers
// that libmagic names otherwise (an OOXML file typed as application/octet-stream, say).

rule zip_local_header
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint32(0) == 0x04034b50
}

rule gzip_stream
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint16(0) == 0x8b1f
}

rule bzip2_stream
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint16(0) == 0x5a42 and uint8(2) == 0x68
}

rule xz_stream
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint32(0) == 0x587a37fd and uint16(4) == 0x005a
}

rule tar_ustar
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint32(257) == 0x61747375 and uint8(261) == 0x72
}
