// Default rules of the `yara` plugin: a few generic, cheap indicators. Point the plugin's `rules`
// option at your own rule file for real work.

rule pe_file : executable
{
    meta:
        description = "Windows PE executable (MZ header with a PE signature where e_lfanew points)"
    condition:
        uint16(0) == 0x5A4D and uint32(0x3C) < filesize and uint32(uint32(0x3C)) == 0x00004550
}

rule elf_file : executable
{
    meta:
        description = "ELF executable or shared object"
    condition:
        uint32(0) == 0x464C457F
}

rule embedded_pe : executable
{
    meta:
        description = "A DOS stub message past the start of the file: an executable embedded in another file"
    strings:
        $stub = "This program cannot be run in DOS mode"
    condition:
        $stub in (2..filesize) and not (uint16(0) == 0x5A4D and #stub == 1)
}

rule eicar_test_file : test
{
    meta:
        description = "EICAR anti-virus test string"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar
}
