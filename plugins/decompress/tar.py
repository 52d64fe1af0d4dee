"""tar archives, read in process (and the pax stream ``bsdtar`` makes of cpio, rpm and xar archives)."""

from __future__ import annotations

import io
import tarfile

from stoq_plugins.decompress.budget import Member, Unpacker, timestamp


def unpack_tar(data: bytes, unpacker: Unpacker) -> None:
    """Regular files of a tar archive, and hard links to one read before it (a member of its own with the
    same bytes: bsdtar writes a xar's, cpio's or rpm's second name for one file that way). Symbolic
    links, devices and directories are skipped."""
    read: dict[str, bytes] = {}  # name -> bytes of the regular members kept, for hard links
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:  # not a tar: ReadError
        while True:
            try:
                info = archive.next()
            except tarfile.ReadError:
                unpacker.flag("corrupt:truncated")
                return
            if info is None:  # tarfile also ends quietly at a damaged header past the first
                rest = data[archive.offset:archive.offset + 512]
                if rest and rest != bytes(512):
                    unpacker.flag("corrupt:truncated" if len(rest) < 512 else "corrupt:data")
                return
            target = read.get(info.linkname) if info.islnk() else None
            if not info.isreg() and target is None:
                continue
            if not unpacker.admit():
                return
            sink = bytearray()
            reader = io.BytesIO(target) if target is not None else archive.extractfile(info)
            assert reader is not None  # a regular file always has one
            try:
                complete = unpacker.drain(reader.read, sink, None)  # (a link's copy counts against the caps too)
            except tarfile.ReadError:
                unpacker.flag("corrupt:truncated")
                return
            if complete:
                content = read[info.name] = bytes(sink)
                unpacker.members.append(Member(info.name, content, len(content) if target is not None else info.size,
                                               timestamp(info.mtime)))
