"""The ``intake`` source: submission messages from a RabbitMQ queue or a Redis stream
(docs/sources/intake.md). ``stoq intake`` finds it through its entry point and drives it; the message,
the transports and the submission are stoq's (``stoq.intake``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from stoq.plugin import PluginOptions, SourcePlugin


class IntakeSource(SourcePlugin):
    """Consumes submission messages from a RabbitMQ queue or a Redis stream; bad ones are dead-lettered.

    Configured like any plugin (``[plugins.intake]``, ``STOQ_INTAKE__MAX_INLINE``, ``-o intake.batch=16``);
    the command's own options (``--batch``, ``--max-inline``) win.
    """

    name = "intake"
    version = "1.0"

    class Options(PluginOptions):
        batch: int = Field(64, ge=1, le=1024, description="Messages taken and submitted together.")
        max_inline: int = Field(1 << 20, ge=0, le=16 << 20, description="Largest inline content (content_b64), bytes decoded.")

    def intake(self, settings: Any, paths_under: list[Path], meta: dict[str, str],
               submit: Callable[[Any, list[Any]], tuple[list[str], dict[str, str]]], spool: Path) -> Any:
        """The message handler (``stoq.intake.Intake``) with these options."""
        from stoq.intake import Intake

        return Intake(settings, paths_under, self.options.max_inline, meta, submit, spool)
