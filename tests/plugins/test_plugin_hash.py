"""The ``hash`` worker against the reference tools: Debian's ``ssdeep`` and ``tlsh`` (tlsh-tools) on every
corpus file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest
import tlsh

from stoq.plugin import Payload
from stoq_plugins.hash import HashPlugin

from helpers import corpus_files


def ssdeep_of(path: Path) -> str:
    """The ssdeep command's digest (``-s``: no warning for files too small to be meaningful)."""
    out = subprocess.run(["ssdeep", "-s", "-c", "-b", str(path)], capture_output=True, check=True, text=True).stdout
    return out.splitlines()[1].rsplit(",", 1)[0]


def tlsh_of(path: Path) -> str | None:
    """tlsh-tools' digest, or None when it computes none. Debian's tool (TLSH 3.4) prints the digest without
    the ``T1`` version prefix that TLSH 4 added: the body is the same. TLSH 3.4 wants 256 bytes where TLSH 4
    wants 50: between the two, the digest is the library's streaming API's (``Tlsh().update``, not the
    ``tlsh.hash`` the plugin calls)."""
    out = subprocess.run(["tlsh", "-f", str(path)], capture_output=True, text=True)
    if "\t" in out.stdout:
        return "T1" + out.stdout.split("\t")[0]
    size = path.stat().st_size
    if 50 <= size < 256:
        assert "file too small" in out.stderr + out.stdout
        streamed = tlsh.Tlsh()
        streamed.update(path.read_bytes())
        streamed.final()
        return str(streamed.hexdigest()) or None
    return None


@pytest.mark.tools("ssdeep", "tlsh")
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_digests_equal_the_reference_tools(path: Path, make_payload: Callable[..., Payload]) -> None:
    result = HashPlugin().scan(make_payload(path.read_bytes()), HashPlugin.Options())
    expected = tlsh_of(path)
    assert result.data["ssdeep"] == ssdeep_of(path)
    assert result.data["tlsh"] == expected
    assert result.data["skipped"] == ({} if expected else {"tlsh": "too-short" if path.stat().st_size < 50
                                                           else "too-uniform"})
    assert result.flags == []


@pytest.mark.parametrize(("content", "reason"), [(b"", "too-short"), (b"x" * 49, "too-short"),
                                                 (bytes(4096), "too-uniform"), (b"ab" * 100, "too-uniform")])
def test_no_tlsh_digest_says_why(content: bytes, reason: str, make_payload: Callable[..., Payload]) -> None:
    result = HashPlugin().scan(make_payload(content), HashPlugin.Options())
    assert result.data["tlsh"] is None and result.data["skipped"] == {"tlsh": reason}
    assert result.data["ssdeep"] is not None


def test_size_caps_skip_each_digest_with_a_flag(corpus: Path, make_payload: Callable[..., Payload]) -> None:
    content = (corpus / "test.exe").read_bytes()
    options = HashPlugin.Options(ssdeep_max_size=len(content) - 1)
    result = HashPlugin().scan(make_payload(content), options)
    assert result.data["ssdeep"] is None and result.data["tlsh"].startswith("T1")
    assert result.data["skipped"] == {"ssdeep": "too-large"} and result.flags == ["limit:hash-size"]
    result = HashPlugin().scan(make_payload(content), HashPlugin.Options(tlsh_max_size=len(content) - 1))
    assert result.data["tlsh"] is None and result.data["skipped"] == {"tlsh": "too-large"}
    assert result.flags == ["limit:hash-size"]
    exact = HashPlugin().scan(make_payload(content), HashPlugin.Options(ssdeep_max_size=len(content),
                                                                         tlsh_max_size=len(content)))
    assert exact.flags == [] and exact.data["skipped"] == {}
