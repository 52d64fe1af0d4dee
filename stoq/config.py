"""Configuration: one precedence, written down once.

    built-in defaults  <  stoq.toml  <  STOQ_* environment  <  command-line options

``stoq.toml`` is the first of: ``--config PATH``, ``$STOQ_CONFIG``, ``./stoq.toml``,
``<user config dir>/stoq/stoq.toml``. It has a ``[stoq]`` table of core settings and one
``[plugins.NAME]`` table per plugin::

    [stoq]
    max_depth = 4
    workers = ["yara", "peinfo"]

    [plugins.yara]
    rules = "/srv/rules/index.yar"

Environment: a core setting is ``STOQ_<SETTING>`` (``STOQ_MAX_DEPTH=4``, ``STOQ_DATABASE_URL=...``,
list settings comma-separated); a plugin option is ``STOQ_<PLUGIN>__<OPTION>`` (two underscores:
``STOQ_YARA__RULES=/srv/rules/index.yar``). On the command line: ``--max-depth 4`` and
``-o yara.rules=/srv/rules/index.yar``.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

APP = "stoq"

#: The worker set used when neither ``--workers``, ``STOQ_WORKERS`` nor ``stoq.toml`` names one (stoQ v3's
#: ``always_dispatch``): workers that are cheap on every payload, or routed to the payloads they fit
#: (``peinfo`` declines what is not ``MZ``; ``exif`` what is not an image, a document, media or an
#: executable; ``iocextract`` declares the text types). Why these and what
#: each costs: docs/plugins.md (the default worker set) and docs/performance.md.
DEFAULT_WORKERS: tuple[str, ...] = ("yara", "peinfo", "exif", "entropy", "xorsearch", "iocextract")
#: The value of ``workers`` (``--workers none``, ``STOQ_WORKERS=none``) that selects no worker at all.
NO_WORKERS = "none"


def default_workers() -> list[str]:
    """The built-in default of ``workers``: ``DEFAULT_WORKERS``, unless the development variable
    ``STOQDEV_DEFAULT_WORKERS`` (the test suite sets it to ``none``, so that each test names the workers
    it runs; see DEVELOPERS.md) replaces it. It is the lowest layer: stoq.toml, STOQ_WORKERS and
    ``--workers`` still override it."""
    dev = os.environ.get("STOQDEV_DEFAULT_WORKERS", "")
    if not dev:
        return list(DEFAULT_WORKERS)
    names = split_list(dev)
    return [] if [n.lower() for n in names] == [NO_WORKERS] else names


class ConfigError(Exception):
    """A setting or plugin option that cannot be used, with a message naming it."""


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


class Settings(BaseModel):
    """Core settings; every field is also ``STOQ_<NAME>`` and, for most, a command-line option."""

    model_config = ConfigDict(extra="forbid")

    database_url: str = Field("", description="SQLAlchemy URL of the result store (default: SQLite in the user data dir).")
    archive: str = Field("", description="Where the payload archive is: a directory for pack and directory (default: in the user data dir), else the archiver's URL (postgresql://..., s3://bucket/prefix, mongodb://host/db).")
    archiver: str = Field("pack", pattern=r"^[a-z0-9_-]{1,64}$", description="Archiver plugin that stores payloads: pack (pack files, fast), directory (a file per payload), none, postgres (a PostgreSQL table), s3 (an S3 bucket, the cluster default), gridfs (MongoDB GridFS), or any installed archiver (stoq list).")
    workers: list[str] = Field(default_factory=default_workers,
                               description="The worker set: workers run on every payload (or, for a worker that "
                                           "declares MIME types, on those); 'none' for no worker.")
    connectors: list[str] = Field(default_factory=list, description="Connector plugins that receive every finished document, besides the result store.")
    dispatch_rules: str = Field("", description="YARA dispatch rule file (default: the bundled rules; 'none' disables).")
    max_depth: int = Field(8, ge=0, description="Deepest level of extracted children (root is 0).")
    max_children: int = Field(1000, ge=0, description="Most extracted payloads in one scan.")
    max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="Most bytes of extracted payloads in one scan.")
    max_scan_seconds: float = Field(600, ge=0, description="Seconds a scan may run: a child begun later is "
                                                           "listed but not analysed, flagged limit:scan-time "
                                                           "(0: no limit).")
    max_file_bytes: int = Field(1024 * 1024 * 1024, ge=0, description="Largest input file analysed; a larger one is only hashed and typed (flag limit:file-bytes).")
    timeout: float = Field(60.0, gt=0, description="Seconds one plugin may spend on one payload.")
    jobs: int = Field(0, ge=0, description="Embedded worker processes (0: one per core).")
    broker_url: str = Field("", description="Celery broker; empty means embedded mode.")
    result_backend: str = Field("", description="Celery result backend (Redis).")
    batch_max: int = Field(256, ge=1, le=1024, description="Cluster: most payload references in one task; batches grow to this with the backlog and shrink to one when idle.")
    sweep_after: float = Field(3600.0, gt=0, description="Cluster: seconds a scan's wave may wait for its answers before the sweeper closes the scan with error entries.")
    wave_resends: int = Field(1, ge=0, description="Cluster: times the sweeper sends a wave's unanswered plugin tasks again, `sweep_after` seconds apart, before it closes the wave with `timeout` entries for them (0: close at once).")
    quarantine_after: int = Field(2, ge=2, description="Cluster: attempts of a payload whose plugin run kills its worker before it is quarantined.")
    recover_after: float = Field(900.0, gt=0, description="Cluster: seconds a submitted scan may stay unfinished, with no state in Redis, before the sweeper publishes it again from the ledger.")
    max_attempts: int = Field(3, ge=1, description="Cluster: publishes of a scan (the client's and the sweeper's) before the ledger gives it up as failed (lost).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Cluster: port on which a worker's main process serves the Prometheus metrics of all its pool processes at /metrics (0: none; docs/metrics.md).")
    metrics_address: str = Field("127.0.0.1", description="Cluster: address the worker's metrics port is bound to (0.0.0.0: every interface).")
    web_max_upload: int = Field(100 * 1024 * 1024, ge=1, description="stoq serve: largest request body in bytes (the files of one submission together); a larger one is refused with 413.")
    web_rate_limit: int = Field(600, ge=0, description="stoq serve: requests per minute per API token; more are refused with 429 and Retry-After (0: no limit).")
    web_scans: int = Field(2, ge=1, description="stoq serve, embedded: submissions scanned at once (each with `jobs` processes); more wait, pending.")
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Options per plugin.")

    @field_validator("workers", "connectors", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, list) and [str(v).lower() for v in value] == [NO_WORKERS]:
            return []  # --workers none: no worker (and --connectors none: no connector)
        return value

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{data_dir() / 'stoq.db'}"

    def resolved_archive(self) -> Path | str:
        """The archive's directory for the core's directory archivers (pack, directory, none), with
        its default; for any other archiver its URL (a str, unchanged). ``stoq.archive.open_configured``
        asks the archiver itself."""
        if self.archiver not in ("pack", "directory", "none"):
            return self.archive
        return Path(self.archive) if self.archive else data_dir() / "archive"

    def resolved_jobs(self) -> int:
        return self.jobs or (os.cpu_count() or 1)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validation_message(exc: ValidationError, owner: str | None, fields: Iterable[str]) -> str:
    """A pydantic error in the user's words: the option or setting, the value given and what is wrong
    with it; no pydantic class names or links. ``owner`` is the plugin (``None`` for core settings);
    ``fields`` the valid names, for an unknown one."""
    logging.getLogger(__name__).info("%s", exc)  # pydantic's own report, with -v
    known = sorted(fields)
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            what = f"plugin {owner!r} has no option {loc!r}" if owner else f"there is no setting {loc!r}"
            parts.append(f"{what}{did_you_mean(loc, known)}; valid: {', '.join(known)}")
            continue
        name = f"option {owner}.{loc}" if owner else f"setting {loc}"
        given = f"={error['input']!r}" if "input" in error and error["loc"] else ""
        parts.append(f"{name}{given}: {error['msg']}")
    return "; ".join(parts)


def split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def find_config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("STOQ_CONFIG"):
        return Path(env["STOQ_CONFIG"])
    for candidate in (Path.cwd() / "stoq.toml", Path(platformdirs.user_config_dir(APP, appauthor=False)) / "stoq.toml"):
        if candidate.is_file():
            return candidate
    return None


def parse_plugin_options(pairs: list[str]) -> dict[str, dict[str, str]]:
    """``["yara.rules=/x", "peinfo.max=3"]`` -> ``{"yara": {"rules": "/x"}, "peinfo": {"max": "3"}}``."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        plugin, dot, option = key.strip().partition(".")
        if not sep or not dot or not plugin or not option:
            raise ConfigError(f"option {pair!r} is not of the form PLUGIN.OPTION=VALUE")
        out.setdefault(plugin, {})[option] = value
    return out


def absolute(value: Any, base: Path) -> Any:
    """A relative path (text) made absolute against ``base``; ``~`` expanded; anything else as is."""
    if not isinstance(value, str) or not value:
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(base, expanded))


def load_settings(config_file: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None,
                  plugin_options: Mapping[str, Mapping[str, Any]] | None = None,
                  path_options: Callable[[str], Collection[str]] | None = None) -> Settings:
    """Builds the settings from every layer, lowest first. ``overrides`` are command-line values
    (``None`` means not given).

    ``path_options(plugin)`` names a plugin's options that are paths (the command line passes it): a
    relative one is then made absolute where it was written, against the directory of ``stoq.toml``
    for a value from that file, against the current directory for ``STOQ_*`` and ``-o`` values, so
    that it means the same file wherever the plugin runs (a cluster worker has another directory).
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    plugins: dict[str, dict[str, Any]] = {}

    def paths_from(layer: Mapping[str, Any], plugin: str, base: Path) -> dict[str, Any]:
        if path_options is None:
            return dict(layer)
        named = path_options(plugin)
        return {k: absolute(v, base) if k in named else v for k, v in layer.items()}

    path = find_config_file(config_file, env)
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        merged.update(table.get("stoq", {}))
        for name, opts in table.get("plugins", {}).items():
            plugins.setdefault(name, {}).update(paths_from(opts, name, path.absolute().parent))

    fields = Settings.model_fields
    for key, value in env.items():
        if not key.startswith("STOQ_") or key == "STOQ_CONFIG":
            continue
        rest = key[5:]
        if "__" in rest:
            plugin, _, option = rest.partition("__")
            plugins.setdefault(plugin.lower(), {}).update(paths_from({option.lower(): value}, plugin.lower(), Path.cwd()))
        elif rest.lower() in fields and rest.lower() != "plugins":
            merged[rest.lower()] = value

    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    for name, opts in (plugin_options or {}).items():
        plugins.setdefault(name, {}).update(paths_from(opts, name, Path.cwd()))
    merged["plugins"] = plugins
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, None, (f for f in Settings.model_fields if f != "plugins"))) from exc
