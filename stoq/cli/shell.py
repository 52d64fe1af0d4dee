"""``stoq shell``: work on one file interactively, on the embedded engine (see docs/shell.md)."""

from __future__ import annotations

import typer

from stoq.cli import ExitCode, app, fail
from stoq.cli.options import command_line_settings
from stoq.cli.scan import ConfigOpt, DepthOpt, OptionOpt, WorkersOpt


@app.command()
def shell(workers: WorkersOpt = None, option: OptionOpt = None, max_depth: DepthOpt = None,
          config: ConfigOpt = None) -> None:
    """Interactive shell: read a file, run plugins on it one at a time, scan it, step into its children."""
    from stoq.shell.repl import run_shell
    from stoq.shell.session import Session, ShellError

    settings = command_line_settings(config, {"workers": workers, "max_depth": max_depth}, option,
                                     warn_unselected=False)  # `run PLUGIN` runs any plugin
    session = Session(settings)
    try:
        session.engine  # a bad configuration (workers, rules, archive) is said now, exit code 4
    except ShellError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    raise typer.Exit(run_shell(session))


__all__ = ["shell"]
