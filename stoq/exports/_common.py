"""What both exports read from a scan document: the IOCs iocextract found, the YARA rules that matched,
detections, the TLP, and ids derived from the scan (so exporting the same scan twice gives the same
output)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

#: stoq's namespace for the ids it derives (UUIDv5 of this namespace and a key naming the object).
NAMESPACE = uuid.UUID("5c1b7f0e-3a4e-4d0b-9c56-7f3f0a2d9e11")

#: iocextract's IOC types (``plugins/_ioc.py``) in the order they are exported.
IOC_KINDS = ("urls", "domains", "ipv4s", "ipv6s", "email_addresses", "md5s", "sha1s", "sha256s", "cves")

#: What each IOC type is called in names and comments.
IOC_NAMES = {"urls": "URL", "domains": "domain", "ipv4s": "IPv4 address", "ipv6s": "IPv6 address",
             "email_addresses": "e-mail address", "md5s": "MD5", "sha1s": "SHA-1", "sha256s": "SHA-256",
             "cves": "CVE"}

#: Flags of the bundled plugins that mean an engine called the payload malicious.
DETECTION_FLAGS = ("clamav:infected", "vtmis:detected", "opswat:detected")


def derived_uuid(*parts: str) -> uuid.UUID:
    """A UUID fixed by ``parts`` (the scan id, a payload id, an IOC...), laid out as a version 4 UUID: STIX
    asks SDOs for UUIDv4, and the same scan exported twice keeps its ids."""
    digest = uuid.uuid5(NAMESPACE, "\x1f".join(parts))
    return uuid.UUID(bytes=digest.bytes, version=4)


@dataclass(frozen=True)
class Ioc:
    """One indicator as iocextract reported it: its type (iocextract's name) and its value."""

    kind: str
    value: str


def iocs_of(payload: dict[str, Any]) -> list[Ioc]:
    """The IOCs iocextract listed for ``payload``, by type in ``IOC_KINDS`` order, each type's values in
    its (sorted) order; none when iocextract did not run or its output is not of the documented shape."""
    output = payload.get("workers", {}).get("iocextract")
    found = output.get("iocs") if isinstance(output, dict) else None
    if not isinstance(found, dict):
        return []
    return [Ioc(kind, value) for kind in IOC_KINDS for value in found.get(kind) or []
            if isinstance(value, str) and value]


@dataclass(frozen=True)
class YaraHit:
    """One YARA rule that matched a payload."""

    rule: str
    namespace: str
    tags: tuple[str, ...]


def yara_hits(payload: dict[str, Any]) -> list[YaraHit]:
    """The rules the ``yara`` worker reported for ``payload``, in its order."""
    output = payload.get("workers", {}).get("yara")
    matches = output.get("matches") if isinstance(output, dict) else None
    hits = []
    for match in matches if isinstance(matches, list) else []:
        if isinstance(match, dict) and isinstance(match.get("rule"), str):
            tags = tuple(t for t in match.get("tags") or [] if isinstance(t, str))
            hits.append(YaraHit(match["rule"], str(match.get("namespace") or "default"), tags))
    return hits


def detected(payload: dict[str, Any]) -> bool:
    """Whether an engine (ClamAV, VirusTotal, MetaDefender) called the payload malicious."""
    return any(flag in payload.get("flags", []) for flag in DETECTION_FLAGS)


def fuzzy_hashes(payload: dict[str, Any]) -> dict[str, str]:
    """``{"ssdeep": ..., "tlsh": ...}`` from the ``hash`` worker, the digests it computed."""
    output = payload.get("workers", {}).get("hash")
    if not isinstance(output, dict):
        return {}
    return {k: output[k] for k in ("ssdeep", "tlsh") if isinstance(output.get(k), str) and output[k]}


def tlp(document: dict[str, Any]) -> str | None:
    """The submission's TLP (``source.meta.tlp``: clear, white, green, amber, amber+strict, red), if any."""
    meta = document.get("source", {}).get("meta")
    value = meta.get("tlp") if isinstance(meta, dict) else None
    return value if value in ("clear", "white", "green", "amber", "amber+strict", "red") else None


def root(document: dict[str, Any]) -> dict[str, Any]:
    """The root payload (the first of ``results``)."""
    first: dict[str, Any] = document["results"][0]
    return first


def label(payload: dict[str, Any]) -> str:
    """How a payload is named in descriptions: its filename, or its sha256 when it has none."""
    name = payload.get("filename")
    return name if isinstance(name, str) and name else f"sha256:{payload['sha256']}"
