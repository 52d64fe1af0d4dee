"""The scanning process of ``stoq serve`` in embedded mode: ``python -m stoq.web.runner JOB.json``.

The server never forks its own (threaded) process to scan: each submission is scanned by this
process, which runs exactly what ``stoq scan`` runs (``stoq.cli.scan.run_embedded``: the supervised
pool, the result store, the connectors), on the uploaded files with the scan ids the server has
already answered with. It dies with the server. Its exit code is ``stoq scan``'s; what it says on
stderr (an unreadable file, a configuration error) becomes the ``error`` of the scans it could not
store.

JOB.json: ``{"parent": PID, "settings": {...}, "roots": [{"path", "scan_id", "meta", "shown"}]}``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m stoq.web.runner JOB.json", file=sys.stderr)
        return 2
    job = orjson.loads(Path(argv[0]).read_bytes())
    from stoq.lifetime import die_with_parent

    die_with_parent(int(job["parent"]))
    import typer

    from stoq.cli.output import Format, Writer
    from stoq.cli.scan import run_embedded
    from stoq.config import Settings
    from stoq.submission import Root

    settings = Settings.model_validate(job["settings"])
    roots = [Root(Path(r["path"]), r["scan_id"], dict(r.get("meta") or {}), r.get("shown")) for r in job["roots"]]
    with open(os.devnull, "wb") as out:
        try:
            code = run_embedded(settings, roots, Writer(Format.jsonl, out=out), True, False)  # type: ignore[arg-type]
        except typer.Exit as exc:
            code = exc.exit_code
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
