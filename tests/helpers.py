"""Paths and checks shared by the tests (imported as ``helpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
BENCH_RULES = SHARED / "bench" / "rules200.yar"
SCHEMA = json.loads((ROOT / "docs" / "scan-document.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
PG_URL = os.environ.get("STOQ_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
EXPECTED_CHILDREN: dict[str, Any] = json.loads((CORPUS / "expected_children.json").read_text())

#: The Debian package of each external program the tests or the bundled plugins run (a test checks
#: that it covers every plugin's declared tools and that .ci/apt-packages lists them all).
TOOL_PACKAGES = {
    "7z": "p7zip-full", "unar": "unar", "lsar": "unar", "bsdtar": "libarchive-tools", "bsdcat": "libarchive-tools",
    "gpg": "gnupg", "gpgconf": "gnupg", "lzip": "lzip", "zstd": "zstd", "rpmbuild": "rpm",
    "genisoimage": "genisoimage", "mkudffs": "udftools", "qemu-img": "qemu-utils", "mkfs.fat": "dosfstools",
    "mmd": "mtools", "mcopy": "mtools", "file": "file", "ssdeep": "ssdeep", "tlsh": "tlsh-tools",
    "exiftool": "libimage-exiftool-perl", "clamd": "clamav-daemon",
    "tmux": "tmux", "hexdump": "bsdextrautils",  # the shell's terminal test, and its hexdump's reference
    "objdump": "binutils",
}


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name not in ("README.md", "expected_children.json"))


def validate(doc: dict[str, Any]) -> None:
    """Fails the test with every schema violation of ``doc``, and checks what the schema cannot say."""
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    assert doc["payloads"] == len(doc["results"])
    ids = [p["payload_id"] for p in doc["results"]]
    assert len(set(ids)) == len(ids)
    seen: set[str] = set()
    for p in doc["results"]:  # parents before children
        assert (p["parent_id"] is None) == (p["depth"] == 0)
        if p["parent_id"] is not None:
            assert p["parent_id"] in seen
        seen.add(p["payload_id"])
    assert b"\\u0000" not in json.dumps(doc).encode()


def make_zip(members: dict[str, bytes]) -> bytes:
    """A deflated zip of ``members`` (name -> bytes), built with the standard library."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def pg_admin() -> Any:
    """An autocommit SQLAlchemy engine on the test PostgreSQL database (it must be reachable)."""
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the services, one set per xdist worker
# `make test` runs the suite on several pytest-xdist workers at once (--dist loadfile: a module's tests
# stay on one worker). The tests name Redis databases, PostgreSQL databases and RabbitMQ queues as a
# serial run can: each worker other than gw0 gets services of its own, reached through these helpers,
# and gw0 (like a serial run) uses the machine's. tests/conftest.py starts and removes them.

#: The xdist worker running this process ("gw0", "gw1", ...), "" in a serial run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
#: "" in a serial run and on gw0; "_gw1", ... on the other workers: appended to their service names.
WORKER_SUFFIX = f"_{XDIST_WORKER}" if XDIST_WORKER not in ("", "gw0") else ""
#: Where conftest.py puts the port of the worker's own ``redis-server`` (inherited by what the tests start).
REDIS_PORT_VAR = "STOQTEST_REDIS_PORT"
#: The worker's RabbitMQ virtual host: the default one ("/") in a serial run and on gw0.
AMQP_VHOST = f"stoq-tests{WORKER_SUFFIX}" if WORKER_SUFFIX else "/"


def redis_port() -> int:
    """The port of the Redis the tests use: 6379 (the machine's) in a serial run and on gw0, the
    worker's own ``redis-server`` on the other xdist workers."""
    return int(os.environ.get(REDIS_PORT_VAR) or 6379)


def redis_url(db: int) -> str:
    """``redis://`` URL of database ``db`` of the tests' Redis (``redis_port``)."""
    return f"redis://127.0.0.1:{redis_port()}/{db}"


def amqp_url() -> str:
    """The RabbitMQ on 127.0.0.1:5672 (guest), in this worker's virtual host (``AMQP_VHOST``). A test
    using it is marked ``rabbitmq`` (one that restarts the node, ``rabbitmq(exclusive=True)``)."""
    return f"amqp://guest:guest@127.0.0.1:5672/{'/' if AMQP_VHOST == '/' else AMQP_VHOST}"


def database(name: str) -> str:
    """This worker's name for the PostgreSQL database ``name`` (``name`` + ``WORKER_SUFFIX``): a module
    running on another worker meanwhile never uses, drops or recreates it. Applying it again is harmless."""
    return name if name.endswith(WORKER_SUFFIX) else name + WORKER_SUFFIX


def pg_url(name: str) -> str:
    """The URL of this worker's PostgreSQL database ``name`` (``database``) on ``PG_URL``'s server."""
    return PG_URL.rsplit("/", 1)[0] + "/" + database(name)


#: The lock files of ``shared_lock`` (one directory for every session, whatever its base temp).
LOCKS = Path(tempfile.gettempdir()) / f"stoq-tests-locks-{os.getuid()}"


@contextlib.contextmanager
def shared_lock(name: str, exclusive: bool = False) -> Iterator[None]:
    """Holds the lock ``name`` shared (many holders at once) or ``exclusive`` (alone), across the xdist
    workers. A turnstile (``name.gate``, taken before the lock and let go once it is held) keeps an
    exclusive holder from waiting forever behind workers that keep taking it shared."""
    LOCKS.mkdir(exist_ok=True)
    with open(LOCKS / f"{name}.gate", "a+") as gate, open(LOCKS / f"{name}.lock", "a+") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
