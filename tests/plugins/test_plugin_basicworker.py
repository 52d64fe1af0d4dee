"""The ``basicworker`` example plugin, in process (no broker): its counts against ``wc`` and ``tr`` on every
corpus file, its option, and its flag. docs/plugin-development.md shows this file as the pattern."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest
from pydantic import ValidationError

from stoq.plugin import Payload
from stoq_plugins.basicworker import BasicWorkerPlugin

from helpers import corpus_files


def count(command: str, path: Path) -> int:
    """What a shell pipeline prints for the file on its stdin, as a number."""
    with path.open("rb") as stdin:
        return int(subprocess.run(["sh", "-c", command], stdin=stdin, capture_output=True, check=True,
                                  env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout)


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_counts_match_wc_and_tr(path: Path, make_payload: Callable[..., Payload]) -> None:
    content = path.read_bytes()
    plugin = BasicWorkerPlugin()
    plugin.setup()
    result = plugin.scan(make_payload(content), BasicWorkerPlugin.Options())
    assert result.data == {
        "size": count("wc -c", path),
        "lines": count("wc -l", path),
        "nul_bytes": count("tr -cd '\\000' | wc -c", path),
        "printable": count("tr -cd '\\011\\012\\015\\040-\\176' | wc -c", path),
        "head": content[:16].hex(),
    }
    assert result.children == [] and result.flags == ([] if content else ["basicworker:empty"])


def test_head_bytes_option_and_empty_flag(make_payload: Callable[..., Payload]) -> None:
    plugin = BasicWorkerPlugin()
    data = plugin.scan(make_payload(b"MZ\x90\x00\nline\n"), BasicWorkerPlugin.Options(head_bytes=3)).data
    assert data == {"size": 10, "lines": 2, "nul_bytes": 1, "printable": 8, "head": "4d5a90"}
    empty = plugin.scan(make_payload(b""), BasicWorkerPlugin.Options())
    assert empty.data["size"] == 0 and empty.flags == ["basicworker:empty"]


def test_options_are_typed_and_bounded() -> None:
    assert BasicWorkerPlugin.Options.model_validate({"head_bytes": "32"}).head_bytes == 32  # text is coerced
    with pytest.raises(ValidationError):
        BasicWorkerPlugin.Options(head_bytes=-1)
