"""``stoq shell``: work on one file interactively, on the embedded engine (see docs/shell.md)."""

from __future__ import annotations


import typer

from stoq.cli import app
from stoq.cli.scan import ConfigOpt, DepthOpt, OptionOpt, WorkersOpt, settings_from


@app.command()
def shell(workers: WorkersOpt = None, option: OptionOpt = None, max_depth: DepthOpt = None,
          config: ConfigOpt = None) -> None:
    """Interactive shell: read a file, run plugins on it one at a time, scan it, step into its children."""
    from stoq.shell.repl import run_shell

    settings = settings_from(config, workers, option, max_depth, None)
    raise typer.Exit(run_shell(settings))


__all__ = ["shell"]
