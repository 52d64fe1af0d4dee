"""``stoq shell``: the interactive shell on the embedded engine (docs/shell.md).

``session`` holds the state and the operations (no terminal), ``commands`` parses a line and calls
them, ``render`` turns their results into escaped lines, ``repl`` is the prompt_toolkit front end.
"""
