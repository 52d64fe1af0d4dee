"""The ``file`` connector: each finished document as its own JSON file in dated folders, or appended
to a dated JSON Lines file; written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin
from stoq_plugins._files import append_lines, dated_dir, write_atomically


class FileConnector(ConnectorPlugin):
    """Writes each finished document to ``DIR/YYYY/MM/DD/<scan_id>.json`` (or appends it to
    ``DIR/YYYY/MM/DD.jsonl``), dated by the scan's date.

    A document file is written to a temporary file in its folder, fsynced and renamed into place (a
    reader never sees half a document; writing one again replaces it: idempotent by scan id). JSON
    Lines are appended under an exclusive ``flock`` with one ``write`` per line, then fsynced.
    """

    name = "file"
    version = "1.0"

    class Options(ConnectorOptions):
        """Where and how the documents are written."""

        directory: Path | None = Field(None, description="Root folder (required; created if missing).")
        layout: Literal["document", "jsonl"] = Field("document", description="document: one YYYY/MM/DD/<scan_id>.json per scan; jsonl: appended to YYYY/MM/DD.jsonl.")
        indent: bool = Field(False, description="Indent each document file (layout document).")

    def setup(self) -> None:
        if self.options.directory is None:
            raise ValueError("file.directory is not set (-o file.directory=/var/lib/stoq/results)")
        self.options.directory.mkdir(parents=True, exist_ok=True)

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        root: Path = self.options.directory
        if self.options.layout == "document":
            for doc in documents:
                write_atomically(dated_dir(root, doc["date"]) / f"{doc['scan_id']}.json", doc, self.options.indent)
            return
        by_file: dict[Path, list[dict[str, Any]]] = {}
        for doc in documents:
            folder = dated_dir(root, doc["date"])
            by_file.setdefault(folder.with_name(folder.name + ".jsonl"), []).append(doc)
        for path, docs in by_file.items():
            append_lines(path, docs)
