"""Plugin base classes and the types plugins exchange with the framework.

A plugin is a plain class: a few class attributes, an ``Options`` model and one method. It never
imports Celery, never times itself and never catches errors to turn them into prose: it raises, and the
framework (``stoq.runner``) records the failure against the plugin and the payload.

```python
class Hello(WorkerPlugin):
    \"\"\"Says hello to every payload.\"\"\"
    name = "hello"
    version = "1.0"

    class Options(PluginOptions):
        greeting: str = Field("hello", description="What to say.")

    def scan(self, payload: Payload, options: Options) -> Result:
        return Result(data={"said": options.greeting})
```
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Category = Literal["worker", "carver", "extractor", "decoder", "reader", "connector", "archiver", "source"]

#: Categories whose plugins analyse a payload (and may return children).
SCAN_CATEGORIES: tuple[str, ...] = ("worker", "carver", "extractor", "decoder", "reader")
#: Scan categories whose purpose is to produce children; skipped at the depth limit.
EXTRACTING_CATEGORIES: frozenset[str] = frozenset({"carver", "extractor", "decoder", "reader"})


class PluginOptions(BaseModel):
    """Typed options of a plugin: subclass it as ``Options`` inside the plugin class.

    Each field has a default and a ``description``. Values given as text (``stoq.toml``, ``STOQ_*``,
    ``-o name.option=value``, YARA dispatch meta) are coerced to the field's type; for list fields a
    comma-separated string is split.
    """

    # defer_build: the validator of a plugin's options is built when first used, not when the plugin
    # is discovered (a cost at every start, for plugins a scan may never configure).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ToolMissing(Exception):
    """An external program a plugin needs is not installed. The framework records it as its own kind
    of error entry and flags the payload ``tool:missing``, never as a traceback."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"{tool} is not installed (Debian: apt-get install {package})")
        self.tool, self.package = tool, package


#: Where plugins look for the external programs they run: a fixed list, not the caller's ``PATH``
#: (a directory early in a user's PATH must not stand in for ``7z``). ``STOQ_TOOL_PATH`` replaces it.
DEFAULT_TOOL_PATH = "/usr/bin:/bin"


def tool_path() -> str:
    """The directories searched for external programs, PATH-style: ``STOQ_TOOL_PATH`` or /usr/bin:/bin."""
    return os.environ.get("STOQ_TOOL_PATH") or DEFAULT_TOOL_PATH


class Tool(NamedTuple):
    """An external program a plugin runs: its command, the Debian package that installs it, and the
    arguments that make it print its version (``stoq doctor`` shows that output's first line)."""

    command: str
    package: str
    version: tuple[str, ...] = ("--version",)

    def missing(self) -> ToolMissing:
        return ToolMissing(self.command, self.package)


_CALL = threading.local()


def time_left() -> float | None:
    """Seconds left of the framework's time limit on the plugin call running in this thread (None
    outside one): a plugin whose library has a timeout of its own sets it below this, so that the
    library stops first and the plugin can say so (the framework cannot stop native code in time)."""
    deadline = getattr(_CALL, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


def set_call_deadline(deadline: float | None) -> None:
    """Called by the framework around each plugin call (``time.monotonic()`` seconds, or None after)."""
    _CALL.deadline = deadline


class Extra(NamedTuple):
    """An optional Python package a plugin uses when it is installed: the module it imports, what to
    install (``pip install 'stoq-analysis[oletools]'``), and what the plugin cannot do without it."""

    module: str
    install: str
    without: str


@dataclass(frozen=True, slots=True)
class Payload:
    """What a plugin sees of one payload: its bytes and what the framework knows of them."""

    content: bytes
    payload_id: str
    filename: str | None
    mime: str
    sha256: str
    depth: int
    meta: dict[str, Any] = field(default_factory=dict)
    #: YARA dispatch rules that sent this payload to the plugin (names), if any.
    dispatch_rules: tuple[str, ...] = ()
    #: Bytes the scan may still extract (what is left of its ``max_bytes``), None where unknown. An
    #: extractor stops decompressing there: every byte it produces counts, kept or not.
    bytes_left: int | None = None
    #: Where the root file came from (its source ``path``: the file named to ``stoq scan`` or ``stoq
    #: submit``), on the root payload only; None for extracted payloads and sources without a path.
    source_path: str | None = None

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(slots=True)
class Extracted:
    """A child payload produced by a plugin: its bytes, a name, and what the plugin knows of it."""

    content: bytes
    filename: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Result:
    """What a scan plugin returns: its output, children, and named soft-failure flags."""

    data: Any = None
    children: list[Extracted] = field(default_factory=list)
    #: Named tokens (``limit:members``, ``password:none-worked``...) added to the payload's flags.
    flags: list[str] = field(default_factory=list)
    #: Bytes the plugin produced while extracting, kept as children or not (members decompressed and
    #: then dropped at a cap included): counted against the scan's ``max_bytes``. None: the children's sizes.
    extracted_bytes: int | None = None


class Plugin:
    """Base of every plugin: identity, typed options and an optional one-time ``setup``.

    Subclasses set ``name`` (unique across categories: it is also the plugin's queue), ``version`` and
    ``category``; the description defaults to the first line of the class docstring.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    category: ClassVar[Category]
    description: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    #: External programs the plugin runs (``stoq doctor`` looks for each on ``tool_path()``).
    tools: ClassVar[tuple[Tool, ...]] = ()
    #: Optional Python packages the plugin does more with.
    extras: ClassVar[tuple[Extra, ...]] = ()
    #: Names of options that are paths of files the plugin reads (rule files, keyrings).
    files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: PluginOptions | None = None) -> None:
        #: The configured options (an instance of the plugin's ``Options``).
        self.options: Any = options if options is not None else self.Options()

    def setup(self) -> None:
        """Prepare expensive state (compile rules, open handles). Called once before first use."""

    def worker_started(self) -> None:
        """Called in each new worker process that inherited this set-up instance (the embedded pool's
        workers, replacements of killed ones included): per-process housekeeping, such as removing
        what a killed predecessor left behind."""

    @classmethod
    def summary(cls) -> str:
        """The one-line description: ``description`` or the docstring's first line."""
        if cls.description:
            return cls.description
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class ScanPlugin(Plugin):
    """A plugin that analyses a payload: worker, carver, extractor, decoder or reader.

    ``mimes`` routes payloads of those MIME types to the plugin without being asked (used by
    extractors: a zip goes to ``decompress``). ``accepts`` is a cheap filter applied to every
    payload the plugin is dispatched to; a declined payload is skipped, not an error.
    """

    category: ClassVar[Category] = "worker"
    mimes: ClassVar[frozenset[str]] = frozenset()
    #: Largest payload the plugin is given, in bytes (None: no limit of its own).
    max_size: ClassVar[int | None] = None

    def accepts(self, payload: Payload) -> bool:
        return self.max_size is None or payload.size <= self.max_size

    # ``options`` is the plugin's own ``Options`` instance; subclasses annotate it with that class.
    def scan(self, payload: Payload, options: Any) -> Result | dict[str, Any] | None:
        raise NotImplementedError


class WorkerPlugin(ScanPlugin):
    """Analyses a payload and reports on it (YARA, PE metadata...)."""

    category: ClassVar[Category] = "worker"


class CarverPlugin(ScanPlugin):
    """Finds payloads embedded at offsets inside another (a PE in a document)."""

    category: ClassVar[Category] = "carver"


class ExtractorPlugin(ScanPlugin):
    """Unpacks containers and compressed streams into their members."""

    category: ClassVar[Category] = "extractor"


class DecoderPlugin(ScanPlugin):
    """Decodes an encoded payload (base64, XOR...) into a child."""

    category: ClassVar[Category] = "decoder"


class ReaderPlugin(ScanPlugin):
    """Reads the text of a document (PDF text, e-mail bodies) as children or output."""

    category: ClassVar[Category] = "reader"


#: Traffic Light Protocol labels, least to most restricted (``white`` is TLP 1.0's name of ``clear``).
TLP_LEVELS: tuple[str, ...] = ("clear", "green", "amber", "amber+strict", "red")
TlpLabel = Literal["clear", "white", "green", "amber", "amber+strict", "red"]


class ConnectorOptions(PluginOptions):
    """Options every connector has (a connector's ``Options`` subclasses this)."""

    max_tlp: TlpLabel = Field("red", description="The most restricted TLP label this connector may receive "
                              "(source.meta.tlp; a document without one counts as clear, an unknown label as red). "
                              "Documents above it are withheld. Default red: every document.")


class PartialDelivery(Exception):
    """Raised by a connector's ``save`` when some documents were delivered and others were not: ``failed``
    holds the scan ids not delivered (only those are retried)."""

    def __init__(self, message: str, failed: Iterable[str]) -> None:
        super().__init__(message)
        self.failed = list(failed)


class ConnectorPlugin(Plugin):
    """Sends finished scan documents somewhere (a database, a file, a queue).

    ``save`` delivers a batch or raises: any exception means "none of these was delivered" (the batch
    is retried whole, so a backend should be idempotent by scan id where it can), ``PartialDelivery``
    names the ones that were not. The framework retries with backoff, keeps undelivered documents in
    the store's outbox and filters by TLP (``stoq.connectors``); a connector only delivers."""

    category: ClassVar[Category] = "connector"
    Options: ClassVar[type[PluginOptions]] = ConnectorOptions

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Releases connections (optional)."""


class ArchiveError(Exception):
    """A payload could not be stored or read, or is not in the archive (the archive's own words)."""


class ArchiveDamaged(ArchiveError):
    """The bytes an archive holds under a sha256 are not that payload's (a checksum does not match)."""


class ArchiveUnavailable(ArchiveError):
    """The archive's server cannot be reached (down, refused, timed out), after the archiver's retries."""


#: Where a locating archiver put a payload: (container, offset, length); a pack: (pack file, offset, length).
Location = tuple[str, int, int]


class ArchiverPlugin(Plugin):
    """Stores payload bytes by sha256 and gives them back: the payload archive (setting ``archiver``).

    One archiver is open per process, built from the setting ``archive`` (``location``: a directory
    when ``directory`` is set, else a URL the archiver parses, such as ``s3://bucket/prefix``) and its
    options (``-o NAME.OPTION=...``, ``STOQ_NAME__OPTION``). The client of a cluster writes roots and
    every worker reads them, so all must reach the same archive. Rules: keys are sha256 hex digests
    (refuse anything else); ``put`` of a payload already stored is a no-op; ``get`` with ``verify``
    hashes what it read and raises on a mismatch (the engine passes ``verify=False`` and hashes itself);
    failures are :class:`ArchiveError` with a message naming the archive (no passwords), never a
    crash; an instance made before a fork must not share a connection with its child (open them
    lazily, per process). ``flush`` makes buffered puts durable; ``close`` flushes and releases.
    """

    category: ClassVar[Category] = "archiver"
    #: ``archive`` names a local directory (default: ``archive/`` in the user data directory); when
    #: False it is a URL or other text, given to the archiver unchanged, with no default.
    directory: ClassVar[bool] = False
    #: Whether ``put_located`` hands out places that ``read_record`` reads without an index look-up
    #: (the pack archive): the embedded pool's parent and the cluster's client then archive roots and
    #: pass the places along.
    locates: ClassVar[bool] = False

    def __init__(self, location: str | os.PathLike[str] = "", options: PluginOptions | None = None) -> None:
        super().__init__(options)
        self.location = location
        #: The location as messages show it (a subclass hides a password here).
        self.display = str(location)

    def prepare(self) -> None:
        """Creates what the archive needs (a directory, a table) and checks it can be used: called
        once before any worker process forks. A failure is a configuration error (exit code 4)."""

    def exists(self, sha256: str) -> bool:
        raise NotImplementedError

    def put(self, sha256: str, content: bytes) -> None:
        raise NotImplementedError

    def get(self, sha256: str, verify: bool = True) -> bytes:
        raise NotImplementedError

    def delete(self, sha256: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Makes buffered puts durable (nothing to do for an archiver that writes through)."""

    def close(self) -> None:
        """Flushes and releases this process's connections or handles."""

    def put_located(self, sha256: str, content: bytes) -> Location | None:
        """Stores a payload and returns its place, for an archiver that ``locates``; else None."""
        self.put(sha256, content)
        return None

    def put_many_located(self, items: list[tuple[str, bytes]]) -> list[Location | None]:
        """:meth:`put_located` for several ``(sha256, content)`` (an archiver may batch them)."""
        return [self.put_located(sha256, content) for sha256, content in items]

    def read_record(self, where: Location, sha256: str) -> bytes:
        """The bytes at a place this archiver handed out for ``sha256`` (see ``locates``)."""
        raise ArchiveError(f"archiver {self.name!r} hands out no places")


class SourcePlugin(Plugin):
    """Produces payloads to scan (a watched directory, a queue)."""

    category: ClassVar[Category] = "source"
