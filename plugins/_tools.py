"""Transitional: ``plugins/_gpg.py`` imports ``kill_group`` from here. The tool-process helpers live in
``stoq_plugins._process`` (decompress's external tools are in ``stoq_plugins.decompress.tools``); delete
this module once ``_gpg.py`` imports ``stoq_plugins._process``."""

from stoq_plugins._process import WATCH_EVERY, exit_fd, kill_group, wait_tool

__all__ = ["WATCH_EVERY", "exit_fd", "kill_group", "wait_tool"]
