"""The ``iocextract`` worker: exact IOCs on text written here (defanged forms with their refanged values
written out by hand), URLs of corpus files against an independent regex, ioc-finder's own answer on the
e-mail, the caps and their flags, and hostile input bounded by the plugin's size cap."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
from ioc_finder import find_iocs

from stoq.plugin import Payload
from stoq_plugins._ioc import IOC_TYPES
from stoq_plugins.iocextract import IocextractPlugin

Options = IocextractPlugin.Options

TEXT = (b"Beacon to hxxp://evil[.]example[.]com/gate.php?id=7 then hxxps://bad(.)example(.)org/x and "
        b"https://plain.example.net/a/b.\n"
        b"C2 at 203.0.113[.]7 and 198.51.100.23, v6 2001:db8::1; mail bob@evil[.]example[.]com\n"
        b"md5 d41d8cd98f00b204e9800998ecf8427e sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 sha256 "
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 exploits CVE-2021-44228.\n")

EXPECTED = {
    "urls": ["http://evil.example.com/gate.php?id=7", "https://bad.example.org/x", "https://plain.example.net/a/b"],
    "domains": ["bad.example.org", "evil.example.com", "plain.example.net"],
    "ipv4s": ["198.51.100.23", "203.0.113.7"],
    "ipv6s": ["2001:db8::1"],
    "email_addresses": ["bob@evil.example.com"],
    "md5s": ["d41d8cd98f00b204e9800998ecf8427e"],
    "sha1s": ["da39a3ee5e6b4b0d3255bfef95601890afd80709"],
    "sha256s": ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    "cves": ["CVE-2021-44228"],
}

#: URLs with a scheme, written independently of ioc-finder: up to whitespace, quotes, brackets or a comma,
#: without trailing punctuation.
URL = re.compile(r"(?:https?|ftp)://[^\s\"'<>(),]+")


def scan(payload: Payload, **options: object) -> tuple[dict, list[str]]:
    result = IocextractPlugin().scan(payload, Options(**options))
    assert result.children == []
    return result.data, result.flags


def test_defanged_iocs_are_refanged_sorted_and_counted(make_payload: Callable[..., Payload]) -> None:
    data, flags = scan(make_payload(TEXT))
    assert flags == []
    assert data == {"examined": len(TEXT), "iocs": EXPECTED, "counts": {k: len(v) for k, v in EXPECTED.items()}}
    assert list(data["iocs"]) == list(IOC_TYPES)


def test_repeated_iocs_are_listed_once(make_payload: Callable[..., Payload]) -> None:
    data, _ = scan(make_payload(TEXT * 3 + b" ".join([b"203.0.113[.]7"] * 5)))
    assert data["iocs"] == EXPECTED


@pytest.mark.parametrize("name", ["test.url", "test.js", "test.xml", "test.html"])
def test_urls_of_corpus_files_equal_an_independent_regex(corpus: Path, make_payload: Callable[..., Payload],
                                                         name: str) -> None:
    content = (corpus / name).read_bytes()
    expected = sorted({m.rstrip(".;:") for m in URL.findall(content.decode())})
    assert expected  # the file has URLs: a test that finds none cannot fail
    assert scan(make_payload(content))[0]["iocs"]["urls"] == expected


def test_the_email_equals_ioc_finders_own_answer_on_the_whole_text(corpus: Path,
                                                                    make_payload: Callable[..., Payload]) -> None:
    """The chunked scan finds what one call of ioc-finder's documented ``find_iocs`` finds on the whole file."""
    content = (corpus / "test.eml").read_bytes()
    reference = find_iocs(content.decode("utf-8", "replace"))
    data, flags = scan(make_payload(content))
    assert flags == []
    assert data["iocs"] == {kind: sorted(reference[kind]) for kind in IOC_TYPES}
    assert data["counts"]["ipv4s"] == 3 and data["counts"]["email_addresses"] == 3


def test_a_chunk_boundary_does_not_cut_iocs_in_text_with_whitespace(make_payload: Callable[..., Payload]) -> None:
    ips = [f"10.{i // 256}.{i % 256}.1" for i in range(3000)]  # about 35 KiB: many 2048-character chunks
    data, _ = scan(make_payload(" ".join(ips).encode()), max_per_type=10000)
    assert data["iocs"]["ipv4s"] == sorted(ips)


def test_max_per_type_lists_the_first_sorted_values_and_flags(make_payload: Callable[..., Payload]) -> None:
    data, flags = scan(make_payload(TEXT), max_per_type=2)
    assert flags == ["limit:ioc-count"]
    assert data["iocs"]["urls"] == EXPECTED["urls"][:2] and data["counts"]["urls"] == 3
    assert data["iocs"]["cves"] == EXPECTED["cves"]


def test_max_size_reads_only_the_start_and_flags(make_payload: Callable[..., Payload]) -> None:
    cut = TEXT.index(b"hxxps")  # the second URL and everything after are not read
    data, flags = scan(make_payload(TEXT), max_size=cut)
    assert flags == ["limit:ioc-size"]
    assert data["examined"] == cut
    assert data["iocs"]["urls"] == ["http://evil.example.com/gate.php?id=7"]
    assert data["iocs"]["md5s"] == [] and data["counts"]["cves"] == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("unit", [b"a.", b"1.", b"a@", b"hxxp://x[.]", b"0123456789abcdef"])
def test_4_mib_of_near_matches_is_bounded_by_the_size_cap(make_payload: Callable[..., Payload], unit: bytes) -> None:
    """Runs of near-matches without whitespace (ioc-finder's time grows faster than their length): the default
    size cap reads 1 MiB of the 4 MiB, scanned in bounded chunks; the generous bound is pytest's timeout. The
    time cap is cut from its default 20 s to 3 s: some units reach it, and the test needs no more to show it."""
    content = unit * (4 * 1024 * 1024 // len(unit))
    data, flags = scan(make_payload(content), max_seconds=3.0)
    assert data["examined"] == Options().max_size
    assert flags[0] == "limit:ioc-size"
    assert set(flags) <= {"limit:ioc-size", "limit:ioc-count", "limit:ioc-time"}
