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

rule pe_embedded
{
    meta:
        plugin = "carver:pe"
    strings:
        $mz = { 4D 5A }
    condition:
        for any i in (1..#mz) : (@mz[i] > 0 and uint32(@mz[i] + uint32(@mz[i] + 0x3C)) == 0x00004550)
}

// Base64 text from the first byte (the decoder checks the rest). A condition, not a regex:
// an unanchored regex without atoms costs a pass over every payload.
rule base64_text
{
    meta:
        plugin = "decoder:b64"
    condition:
        filesize >= 64 and for all i in (0..63) : (
            (uint8(i) >= 0x41 and uint8(i) <= 0x5A) or (uint8(i) >= 0x61 and uint8(i) <= 0x7A) or
            (uint8(i) >= 0x30 and uint8(i) <= 0x39) or uint8(i) == 0x2B or uint8(i) == 0x2F or
            uint8(i) == 0x2D or uint8(i) == 0x5F or uint8(i) == 0x0A or uint8(i) == 0x0D)
}

rule ascii85_adobe
{
    meta:
        plugin = "decoder:b85"
    condition:
        filesize >= 8 and uint16(0) == 0x7e3c and uint16(filesize - 2) == 0x3e7e
}

// The DOS stub XORed with one byte (YARA's xor modifier): the xor decoder finds the key itself.
// stoQ's `xor_This_program_key_<n>` rules (meta `key = <n>`) also work.
rule xor_This_program
{
    meta:
        plugin = "decoder:xor"
    strings:
        $stub = "This program cannot be run in DOS mode" xor(1-255)
    condition:
        $stub
}

rule rot47_This_program
{
    meta:
        plugin = "decoder:rot47"
    strings:
        $stub = "%9:D AC@8C2> 42??@E 36 CF? :? s~$ >@56"
    condition:
        $stub
}

// The DOS stub with its bits rotated: bitrot with `bits = N` rotates them back (left by N).

rule bitrot_This_program_1
{
    meta:
        plugin = "decoder:bitrot"
        bits = 1
    strings:
        $stub = { 2A 34 B4 B9 10 38 39 B7 B3 39 B0 B6 10 B1 B0 37 }
    condition:
        $stub
}

rule bitrot_This_program_2
{
    meta:
        plugin = "decoder:bitrot"
        bits = 2
    strings:
        $stub = { 15 1A 5A DC 08 1C 9C DB D9 9C 58 5B 08 D8 58 9B }
    condition:
        $stub
}

rule bitrot_This_program_3
{
    meta:
        plugin = "decoder:bitrot"
        bits = 3
    strings:
        $stub = { 8A 0D 2D 6E 04 0E 4E ED EC 4E 2C AD 04 6C 2C CD }
    condition:
        $stub
}

rule bitrot_This_program_4
{
    meta:
        plugin = "decoder:bitrot"
        bits = 4
    strings:
        $stub = { 45 86 96 37 02 07 27 F6 76 27 16 D6 02 36 16 E6 }
    condition:
        $stub
}

rule bitrot_This_program_5
{
    meta:
        plugin = "decoder:bitrot"
        bits = 5
    strings:
        $stub = { A2 43 4B 9B 01 83 93 7B 3B 93 0B 6B 01 1B 0B 73 }
    condition:
        $stub
}

rule bitrot_This_program_6
{
    meta:
        plugin = "decoder:bitrot"
        bits = 6
    strings:
        $stub = { 51 A1 A5 CD 80 C1 C9 BD 9D C9 85 B5 80 8D 85 B9 }
    condition:
        $stub
}

rule bitrot_This_program_7
{
    meta:
        plugin = "decoder:bitrot"
        bits = 7
    strings:
        $stub = { A8 D0 D2 E6 40 E0 E4 DE CE E4 C2 DA 40 C6 C2 DC }
    condition:
        $stub
}

// OLE2 compound files (Word, Excel, MSI...): streams, Ole10Native objects, VBA. Outlook .msg files
// (property streams) go to the email reader instead.
rule ole_compound_file
{
    meta:
        plugin = "carver:ole"
    strings:
        $property = "__substg1.0_" wide
    condition:
        uint32(0) == 0xe011cfd0 and uint32(4) == 0xe11ab1a1 and not $property
}

rule outlook_message
{
    meta:
        plugin = "reader:email"
    strings:
        $property = "__substg1.0_" wide
    condition:
        uint32(0) == 0xe011cfd0 and uint32(4) == 0xe11ab1a1 and $property
}

rule rtf_document
{
    meta:
        plugin = "carver:rtf"
    condition:
        uint32(0) == 0x74725c7b
}

rule pdf_document
{
    meta:
        plugin = "reader:pdftext"
    strings:
        $pdf = "%PDF-"
    condition:
        // not a tar, ar or cpio archive whose first member is a PDF, nor a zstd frame (raw literals):
        // decompress opens those, and pdftext reads the member (it would parse the whole archive to fail)
        $pdf in (0..1024) and not (uint32be(257) == 0x75737461 or uint32be(0) == 0x213c6172
                                   or uint32be(0) == 0x30373037 or uint32be(0) == 0x28b52ffd)
}

rule rfc822_message
{
    meta:
        plugin = "reader:email"
    strings:
        $received = "Received: "
        $return_path = "Return-Path: "
        $delivered_to = "Delivered-To: "
        $mime_version = "MIME-Version: "
        $message_id = "Message-ID: " nocase
    condition:
        $received at 0 or $return_path at 0 or $delivered_to at 0 or $mime_version at 0 or $message_id at 0
}

// Flash files at the start or embedded: FWS/CWS/ZWS, a version byte 1-64, a length from 13 bytes to
// 144 MiB (a top length byte below 9 keeps text, base64 included, out).
rule swf_file
{
    meta:
        plugin = "carver:swf"
    strings:
        $fws = "FWS"
        $cws = "CWS"
        $zws = "ZWS"
    condition:
        for any of ($fws, $cws, $zws) : (
            for any i in (1..#) : (uint8(@[i] + 3) >= 1 and uint8(@[i] + 3) <= 64 and uint32(@[i] + 4) >= 13 and uint32(@[i] + 4) < 0x09000000))
}

// Adobe XML Data Package (libmagic: text/xml): the XDP namespace or root element near the start,
// instead of routing every XML file to the xdp carver.
rule xdp_package
{
    meta:
        plugin = "carver:xdp"
    strings:
        $ns = "http://ns.adobe.com/xdp/"
        $root = "<xdp:xdp"
    condition:
        $ns in (0..4096) or $root in (0..4096)
}

// OpenPGP messages: armored, clear-signed, or binary packets that start a message (public-key or
// passphrase encrypted session key, one-pass signature, compressed data), old and new packet formats.
rule openpgp_message
{
    meta:
        plugin = "extractor:gpg"
    strings:
        $armor = "-----BEGIN PGP MESSAGE-----"
        $clear = "-----BEGIN PGP SIGNED MESSAGE-----"
    condition:
        $armor at 0 or $clear at 0 or
        (uint8(0) == 0x84 and uint8(2) == 3) or (uint8(0) == 0x85 and uint8(3) == 3) or
        (uint8(0) == 0xC1 and (uint8(2) == 3 or uint8(3) == 3)) or
        (uint8(0) == 0x8C and uint8(2) == 4) or (uint8(0) == 0xC3 and uint8(2) == 4) or
        (uint8(0) == 0x90 and uint8(1) == 0x0D and uint8(2) == 3) or
        (uint8(0) == 0xC4 and uint8(1) == 0x0D and uint8(2) == 3) or
        (uint8(0) == 0xA3 and uint8(1) <= 3) or (uint8(0) == 0xC8 and uint8(2) <= 3)
}

// Containers libmagic types as application/octet-stream: a fixed VHD (its footer is at the end) and
// a UDF-only image (volume recognition sequence). rpm and xar are also routed by MIME type.
rule vhd_disk
{
    meta:
        plugin = "extractor:decompress"
    strings:
        $cookie = "conectix"
    condition:
        $cookie at 0 or $cookie at filesize - 512
}

rule udf_image
{
    meta:
        plugin = "extractor:decompress"
    strings:
        $bea = "BEA01"
        $nsr2 = "NSR02"
        $nsr3 = "NSR03"
    condition:
        filesize > 36864 and $bea in (32769..65536) and ($nsr2 in (32769..73728) or $nsr3 in (32769..73728))
}

rule rpm_package
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint32(0) == 0xdbeeabed
}

rule xar_archive
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint32be(0) == 0x78617221
}

// LZH/LHA (a method such as -lh5- at offset 2), ACE (**ACE** at 7) and Apple disk images (the UDIF
// trailer, koly, 512 bytes from the end): libmagic names a .dmg after its first chunk, or not at all.
rule lzh_archive
{
    meta:
        plugin = "extractor:decompress"
    condition:
        uint16be(2) == 0x2d6c and uint8(6) == 0x2d
}

rule ace_archive
{
    meta:
        plugin = "extractor:decompress"
    strings:
        $ace = "**ACE**"
    condition:
        $ace at 7
}

rule apple_disk_image
{
    meta:
        plugin = "extractor:decompress"
    condition:
        filesize >= 512 and uint32be(filesize - 512) == 0x6b6f6c79
}
