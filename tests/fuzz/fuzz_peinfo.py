"""Fuzz harness: the ``peinfo`` worker (plugins/peinfo.py, plugins/_pe.py, pefile): PE headers,
sections, imports, exports, resources, version info."""

from _harness import Target, corpus, main

TARGET = Target("peinfo", "stoq_plugins.peinfo:PeinfoPlugin", "application/x-dosexec",
                lambda: corpus("test.exe", "test_xor.exe"))

if __name__ == "__main__":
    main(TARGET)
