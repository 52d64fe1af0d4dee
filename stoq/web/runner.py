"""The scanning process of ``stoq serve`` in embedded mode: ``python -m stoq.web.runner JOB.json``,
or ``--wait PARENT_PID``: load stoq and the plugins first, then read the job's path on stdin (the
server keeps one such process warm per scanning slot, so that a submission starts at once).

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


def warm_up() -> None:
    """Loads what every scan needs (stoq's modules, the installed plugins) before the job is known."""
    import stoq.cli.scan  # noqa: F401  (run_embedded and what it imports)
    from stoq.registry import Registry

    Registry.discover()  # imports every plugin's module; the engine's own discovery then costs little


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--wait":  # a spare: warm up, then wait for the job's path
        from stoq.lifetime import die_with_parent

        die_with_parent(int(argv[1]))
        warm_up()
        line = sys.stdin.readline().strip()
        if not line:
            return 0  # the server stopped before it had a job for this process
        return run(Path(line))
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m stoq.web.runner JOB.json | --wait PARENT_PID", file=sys.stderr)
        return 2
    return run(Path(argv[0]))


def run(path: Path) -> int:
    """Scans the job at ``path`` as ``stoq scan`` would; returns its exit code."""
    job = orjson.loads(path.read_bytes())
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
