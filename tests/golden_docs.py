"""Golden scan documents and the dispatch map of the corpus (issue 14), shared by the tests
(``tests/test_golden.py``) and the command that regenerates them (``scripts/golden --regen``).

Every file of ``../shared/corpus`` is scanned once, in process, with the default settings: the default
worker set (``stoq.config.DEFAULT_WORKERS``), the bundled dispatch rules, extraction on. Each document is
normalised (what changes from run to run or machine to machine replaced by stable tokens) and kept as
``tests/golden/<sha256 of the file>.json``; what dispatch ran on each root (and on the children of a few
containers) is kept as ``tests/data/dispatch_map.json``.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import magic

from helpers import CORPUS, ROOT, corpus_files
from stoq.config import DEFAULT_WORKERS, load_settings
from stoq.engine import Engine
from stoq.registry import Registry

GOLDEN_DIR = ROOT / "tests" / "golden"
DISPATCH_MAP = ROOT / "tests" / "data" / "dispatch_map.json"
#: What the goldens were made with, outside this repository's pinned Python packages: libmagic's
#: answers (``mime``) change with its version, so the comparison is skipped on another one.
ENVIRONMENT = GOLDEN_DIR / "_environment.json"
#: The programs the corpus's containers need: without one, a document holds a ``tool-missing`` error
#: instead of the members, so the golden tests are skipped (``pytest.mark.tools``), never regenerated so.
TOOLS = ("7z", "unar", "lsar", "bsdtar", "bsdcat", "gpg", "exiftool")
#: Containers whose children's plugins the dispatch map lists too.
CHILDREN_OF = ("test.zip", "test.7z", "test.tar", "test.eml", "test_pe_object.doc", "test.pdf", "test.txt.gpg")
#: Core steps that can have error entries: not plugins dispatch chose.
CORE_STEPS = frozenset({"libmagic", "dispatch", "archive", "stoq"})


def environment() -> dict[str, Any]:
    return {"libmagic": magic.version()}


def every_worker() -> list[str]:
    """The bundled workers (``stoq_plugins``), by name."""
    return sorted(c.name for c in Registry.discover().scan_plugins()
                  if c.category == "worker" and c.__module__.startswith("stoq_plugins."))


def engine(workers: Sequence[str] = DEFAULT_WORKERS) -> Engine:
    """An engine with the default settings (the worker set named explicitly, so that the tests'
    ``STOQDEV_DEFAULT_WORKERS=none`` does not apply); nothing is archived."""
    settings = load_settings(env={"STOQ_ARCHIVER": "none", "STOQ_ARCHIVE": tempfile.gettempdir()},
                             overrides={"workers": ",".join(workers)})
    return Engine(settings)


def scan_corpus(workers: Sequence[str] = DEFAULT_WORKERS) -> dict[str, dict[str, Any]]:
    """File name -> its scan document (not normalised), every corpus file, in name order."""
    eng = engine(workers)
    return {p.name: eng.scan(p.read_bytes(), p.name, {"path": p.name}) for p in corpus_files()}


_TMP = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/[^\s'\"]*")


def _strings(value: Any, replace: dict[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in replace.items():
            value = value.replace(old, new)
        return _TMP.sub("<tmp>", value)
    if isinstance(value, list):
        return [_strings(v, replace) for v in value]
    if isinstance(value, dict):
        return {_strings(k, replace): _strings(v, replace) for k, v in value.items()}
    return value


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without what depends on the run: payload ids become ``payload-N`` (N its place in
    ``results``, parents first), the scan id and date fixed tokens, paths of this checkout, of the
    corpus and of temporary directories tokens too. Everything else is kept as the scan made it."""
    ids = {r["payload_id"]: f"payload-{i}" for i, r in enumerate(doc["results"])}
    out = dict(doc, scan_id="<scan-id>", date="<date>")
    out["results"] = [dict(r, payload_id=ids[r["payload_id"]], parent_id=ids.get(r["parent_id"]),
                           duplicate_of=ids.get(r["duplicate_of"])) for r in doc["results"]]
    out["errors"] = [dict(e, payload_id=ids.get(e["payload_id"], e["payload_id"])) for e in doc["errors"]]
    return _strings(out, {str(CORPUS.resolve()): "<corpus>", str(CORPUS): "<corpus>", str(ROOT): "<root>"})


def render(value: Any) -> str:
    """Stable JSON for review: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def ran(doc: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The plugins that ran on one payload: those that answered and those that failed on it (a
    plugin whose ``accepts`` declined it did not run)."""
    failed = {e["plugin"] for e in doc["errors"] if e["payload_id"] == record["payload_id"]} - CORE_STEPS
    return sorted(set(record["workers"]) | failed)


def root_map(docs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """File name -> the plugins run on it."""
    return {name: ran(doc, doc["results"][0]) for name, doc in docs.items()}


def dispatch_map(docs: dict[str, dict[str, Any]], every: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """From the documents of the default settings (``docs``): ``roots``, file name -> plugins run on it;
    ``children``, for the containers of CHILDREN_OF, the path of each child (file names from the root,
    `` > ``-joined; ``#N`` on a repeated one) -> plugins. From those of every bundled worker enabled
    (``every``): ``every_worker.roots``, file name -> plugins run on it."""
    roots = root_map(docs)
    children: dict[str, dict[str, list[str]]] = {}
    for name in CHILDREN_OF:
        doc = docs[name]
        by_id = {r["payload_id"]: r for r in doc["results"]}
        listed: dict[str, list[str]] = {}
        for record in doc["results"][1:]:
            chain, r = [], record
            while r is not None and r["parent_id"] is not None:
                chain.append(r["filename"] or f"({r['extracted_by']})")
                r = by_id.get(r["parent_id"])
            key, n = " > ".join(reversed(chain)), 1
            while (key if n == 1 else f"{key} #{n}") in listed:
                n += 1
            listed[key if n == 1 else f"{key} #{n}"] = ran(doc, record)
        children[name] = listed
    return {"about": "The plugins the default dispatch runs on each corpus file (and, for a few containers, on "
                     "their children; every_worker: with every bundled worker enabled). Made by scripts/golden "
                     "--regen: see DEVELOPERS.md.",
            "workers": list(DEFAULT_WORKERS), "roots": roots, "children": children,
            "every_worker": {"workers": every_worker(), "roots": root_map(every)}}


def differences(want: Any, got: Any, path: str = "$") -> Iterator[str]:
    """Where two JSON values differ, as JSON paths with both values."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in got:
                yield f"{path}.{key}: missing now (golden: {json.dumps(want[key])[:200]})"
            elif key not in want:
                yield f"{path}.{key}: new (now: {json.dumps(got[key])[:200]})"
            else:
                yield from differences(want[key], got[key], f"{path}.{key}")
    elif isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got)):
            yield from differences(a, b, f"{path}[{i}]")
        if len(want) != len(got):
            yield f"{path}: {len(want)} items in the golden, {len(got)} now"
    elif want != got or type(want) is not type(got):
        yield f"{path}: golden {json.dumps(want)[:200]} != now {json.dumps(got)[:200]}"
