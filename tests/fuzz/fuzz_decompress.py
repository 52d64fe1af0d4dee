"""Fuzz harness: the ``decompress`` extractor (plugins/decompress/): zip, tar, gzip, bzip2, xz, cpio, ar
(deb), 7z and the other formats, by magic bytes (the external tools run too, under their limits)."""

import gzip
import io
import tarfile
import zipfile

from _harness import Target, corpus, main


def seeds() -> list[bytes]:
    small = io.BytesIO()
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", b"hello " * 20)
        z.writestr("d/b.bin", bytes(range(256)))
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("x.txt")
        info.size = 5
        t.addfile(info, io.BytesIO(b"12345"))
    return [small.getvalue(), tar.getvalue(), gzip.compress(b"stream " * 50)] + corpus(
        "test.zip", "test.gz", "test.bz2", "test.xz", "test.cpio", "test.deb", "test_empty.zip", "test.7z", "test.tar")


TARGET = Target("decompress", "stoq_plugins.decompress:DecompressPlugin", "application/octet-stream", seeds)

if __name__ == "__main__":
    main(TARGET)
