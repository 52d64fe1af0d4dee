"""Fuzz harness: the ``ole`` carver (plugins/ole.py, plugins/_ole.py, olefile, oletools' VBA reader):
OLE2 compound files, their streams, Ole10Native objects and macros."""

from _harness import Target, corpus, main

TARGET = Target("ole", "stoq_plugins.ole:OlePlugin", "application/msword",
                lambda: corpus("test.doc", "test.xls", "test.msi", "test_pe_object.doc"))

if __name__ == "__main__":
    main(TARGET)
