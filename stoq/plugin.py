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
    # is discovered (~3 ms per plugin at every start, for plugins a scan may never configure).
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


class ArchiverPlugin(Plugin):
    """Stores payload bytes by sha256 and gives them back."""

    category: ClassVar[Category] = "archiver"

    def put(self, sha256: str, content: bytes) -> None:
        raise NotImplementedError

    def get(self, sha256: str) -> bytes:
        raise NotImplementedError


class SourcePlugin(Plugin):
    """Produces payloads to scan (a watched directory, a queue)."""

    category: ClassVar[Category] = "source"
