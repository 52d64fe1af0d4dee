"""Content-addressed payload archive: bytes stored and fetched by sha256.

The directory archive lays a payload at ``ROOT/ab/cd/abcd...`` (sha256 in hex). Writes go to a
temporary file in the same directory and are renamed into place, so a reader never sees a partial
payload and two processes writing the same payload do not conflict. An archive is shared by the
embedded worker processes and, over a shared filesystem, by the workers of a cluster.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
import tempfile
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArchiveError(Exception):
    """A payload could not be stored or is not in the archive."""


class DirectoryArchive:
    """Payload store in a local (or NFS) directory, keyed by sha256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ArchiveError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, sha256: str, content: bytes) -> None:
        target = self.path(sha256)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise ArchiveError(f"payload {sha256} is not in the archive {self.root}") from exc

    def delete(self, sha256: str) -> None:
        with suppress(FileNotFoundError):
            self.path(sha256).unlink()

