"""A scan document as a STIX 2.1 bundle (the ``stix2`` library), and its check by ``stix2-validator``.

The mapping is described in docs/exports.md: a ``file`` SCO per payload (hashes, size, name, MIME type,
``contains_refs`` to what was extracted from it), a ``malware-analysis`` SDO per analysed payload (what
each plugin found in a property extension), indicators with STIX patterns for iocextract's IOCs, a
``vulnerability`` per CVE id, all gathered in a ``grouping``. SCO ids are STIX's deterministic UUIDv5;
SDO ids are derived from the scan id, so the same scan always exports to the same bundle.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import stix2
from stix2.patterns import EqualityComparisonExpression, ObjectPath, ObservationExpression, StringConstant

import stoq
from stoq.exports._common import IOC_NAMES, Ioc, derived_uuid, detected, fuzzy_hashes, iocs_of, label, root, tlp, yara_hits

#: The extension definition that carries stoq's own properties (fixed: the same in every export).
EXTENSION_ID = f"extension-definition--{derived_uuid('stix', 'extension', 'stoq-scan-1')}"
IDENTITY_ID = f"identity--{derived_uuid('stix', 'identity', 'stoq')}"
#: The date stoq's identity and extension definition are said to be created (fixed for stable output).
DEFINED = "2026-12-01T00:00:00Z"

#: A document's hash names → STIX's hash-algorithm-ov names.
HASHES = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512"}
FUZZY = {"ssdeep": "SSDEEP", "tlsh": "TLSH"}

#: iocextract's IOC type → (the SCO type and the path its pattern compares, the observable's class).
IOC_PATHS: dict[str, tuple[str, list[str], Any]] = {
    "urls": ("url", ["value"], stix2.URL),
    "domains": ("domain-name", ["value"], stix2.DomainName),
    "ipv4s": ("ipv4-addr", ["value"], stix2.IPv4Address),
    "ipv6s": ("ipv6-addr", ["value"], stix2.IPv6Address),
    "email_addresses": ("email-addr", ["value"], stix2.EmailAddress),
    "md5s": ("file", ["hashes", "MD5"], None),
    "sha1s": ("file", ["hashes", "SHA-1"], None),
    "sha256s": ("file", ["hashes", "SHA-256"], None),
}

_TLP_MARKINGS = {"clear": stix2.TLP_WHITE, "white": stix2.TLP_WHITE, "green": stix2.TLP_GREEN,
                 "amber": stix2.TLP_AMBER, "amber+strict": stix2.TLP_AMBER, "red": stix2.TLP_RED}


def pattern(ioc: Ioc) -> str | None:
    """The STIX pattern matching ``ioc`` (``[url:value = 'http://x.example/']``), string literals escaped by
    stix2 (``\\`` and ``'`` backslashed); None for a type without one (CVE ids)."""
    if ioc.kind not in IOC_PATHS:
        return None
    sco_type, path, _ = IOC_PATHS[ioc.kind]
    return str(ObservationExpression(EqualityComparisonExpression(ObjectPath(sco_type, path), StringConstant(ioc.value))))


def observable(ioc: Ioc, common: dict[str, Any]) -> Any | None:
    """The SCO an IOC names (a URL, domain, address), or None: for hashes (the pattern says it) and for a
    value that is not valid for its SCO type (its indicator still carries it)."""
    kind = IOC_PATHS.get(ioc.kind)
    if kind is None or kind[2] is None:
        return None
    try:
        found = kind[2](value=ioc.value, **common)
    except (stix2.exceptions.STIXError, ValueError):
        return None
    return found if _valid_value(found.type, ioc.value) else None


@functools.cache
def _value_schemas() -> dict[str, Any]:
    """stix2-validator's own schema of each IOC observable's ``value`` (``url``: a URI, ``domain-name``:
    an IDN host name, ``email-addr``: its e-mail check, the addresses: its patterns), with its format
    checks: a value alone is checked far faster than a whole object (docs/performance.md)."""
    import stix2validator
    import stix2validator.validator  # noqa: F401  (registers the validator's own "email" format check)
    from jsonschema import Draft202012Validator

    base = Path(stix2validator.__file__).parent / "schemas-2.1" / "schemas"
    schemas: dict[str, Any] = {}
    for sco in ("url", "domain-name", "ipv4-addr", "ipv6-addr", "email-addr"):
        parts = json.loads((base / "observables" / f"{sco}.json").read_text())["allOf"]
        value = next(p["properties"]["value"] for p in parts if "value" in p.get("properties", {}))
        if "$ref" in value:
            value = json.loads((base / "common" / Path(value["$ref"]).name).read_text())
        schemas[sco] = Draft202012Validator(value, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return schemas


def _valid_value(sco: str, value: str) -> bool:
    """Whether stix2-validator accepts ``value`` as the ``value`` of an SCO of type ``sco``
    (iocextract reports ``name_with_underscores.zip`` as a domain; a URL may hold what a URI may not)."""
    return bool(_value_schemas()[sco].is_valid(value))


def _markings(document: dict[str, Any]) -> list[Any]:
    level = tlp(document)
    if level is None:
        return []
    found = [_TLP_MARKINGS[level]]
    if level == "amber+strict":  # TLP 1.0 has no AMBER+STRICT: AMBER, and the statement of the stricter rule
        found.append(stix2.MarkingDefinition(
            id=f"marking-definition--{derived_uuid('stix', 'marking', 'amber+strict')}", created=DEFINED,
            definition_type="statement", definition={"statement": "TLP:AMBER+STRICT"}, created_by_ref=IDENTITY_ID))
    return found


def _file_properties(payload: dict[str, Any]) -> dict[str, Any]:
    hashes = {HASHES[k]: payload[k] for k in HASHES if payload.get(k)}
    for name, value in fuzzy_hashes(payload).items():
        if name == "tlsh" and len(value) == 72 and value.upper().startswith("T1"):
            value = value[2:]  # STIX's TLSH is the 70 hex digits, without TLSH 4's version prefix
        try:
            stix2.File(hashes={FUZZY[name]: value})
        except stix2.exceptions.STIXError:
            continue  # a digest STIX's vocabulary would refuse: left out (the analysis keeps it)
        hashes[FUZZY[name]] = value
    props: dict[str, Any] = {"hashes": hashes, "size": payload["size"], "mime_type": payload["mime"]}
    if payload.get("filename"):
        props["name"] = payload["filename"]
    return props


def _summary(payload: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    """The analysis's description: YARA rules, flags and plugin errors in words."""
    parts = [f"stoq's analysis of {label(payload)} ({payload['mime']}, {payload['size']} bytes)."]
    hits = yara_hits(payload)
    if hits:
        parts.append("YARA rules matched: " + "; ".join(
            f"{h.rule} (namespace {h.namespace}" + (f", tags {', '.join(h.tags)})" if h.tags else ")") for h in hits) + ".")
    if payload.get("flags"):
        parts.append("Flags: " + ", ".join(payload["flags"]) + ".")
    if errors:
        parts.append("Plugin errors: " + "; ".join(f"{e['plugin']} ({e['kind']}): {e['message']}" for e in errors) + ".")
    return " ".join(parts)


def _present(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` without the null, empty-list and empty-object values STIX forbids at this level (a
    property is absent instead: a root has no ``parent_id``, a payload without flags no ``flags``)."""
    return {k: v for k, v in properties.items() if v is not None and v != [] and v != {}}


def _abstract(payload: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    """The note's one line: the rules that matched, else the flags, else the errors."""
    hits = yara_hits(payload)
    if hits:
        return f"{label(payload)}: YARA " + ", ".join(dict.fromkeys(h.rule for h in hits))
    if payload.get("flags"):
        return f"{label(payload)}: " + ", ".join(payload["flags"])
    return f"{label(payload)}: {len(errors)} plugin error(s)"


def to_stix(document: dict[str, Any]) -> dict[str, Any]:
    """The STIX 2.1 bundle of ``document`` (a scan document, docs/results.md), as a JSON object."""
    scan_id, date = document["scan_id"], document["date"]
    markings = _markings(document)
    marking_refs = [m.id for m in markings]
    common: dict[str, Any] = {"object_marking_refs": marking_refs} if marking_refs else {}
    sdo = dict(common, created=date, modified=date, created_by_ref=IDENTITY_ID)

    identity = stix2.Identity(id=IDENTITY_ID, created=DEFINED, modified=DEFINED, name="stoq",
                              identity_class="system", description="stoq, the file-analysis framework.")
    extension = stix2.ExtensionDefinition(
        id=EXTENSION_ID, created=DEFINED, modified=DEFINED, created_by_ref=IDENTITY_ID, name="stoq scan",
        description="What stoq's plugins found in a payload, as in the scan document (stoq docs/results.md).",
        schema="stoq's scan document (docs/results.md, docs/scan-document.schema.json): scan_id, payload_id, "
               "parent_id, depth, extracted_by, meta, workers (plugin name -> its output), flags, errors.",
        version="1.0", extension_types=["property-extension"])

    # Files: every id first (contains_refs is not an id-contributing property), then each object once.
    payloads = document["results"]
    file_ids = {p["payload_id"]: stix2.File(**_file_properties(p)).id for p in payloads}
    contains: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}  # payload id -> its children's
    for p in payloads:
        if p["parent_id"] is not None:
            children.setdefault(p["parent_id"], []).append(p["payload_id"])
            refs = contains.setdefault(file_ids[p["parent_id"]], [])
            if file_ids[p["payload_id"]] not in refs and file_ids[p["payload_id"]] != file_ids[p["parent_id"]]:
                refs.append(file_ids[p["payload_id"]])
    files: dict[str, Any] = {}
    for p in payloads:
        fid = file_ids[p["payload_id"]]
        if fid not in files:
            props = _file_properties(p) | common
            if contains.get(fid):
                props["contains_refs"] = contains[fid]
            files[fid] = stix2.File(**props)

    observables: dict[str, Any] = {}
    indicators: dict[str, Any] = {}
    vulnerabilities: dict[str, Any] = {}
    relationships: dict[str, Any] = {}
    analyses: list[Any] = []
    notes: list[Any] = []
    for p in payloads:
        if p.get("duplicate_of"):  # its first occurrence holds the analysis
            continue
        fid = file_ids[p["payload_id"]]
        refs = [file_ids[c] for c in children.get(p["payload_id"], [])]
        for ioc in iocs_of(p):
            found = observable(ioc, common)
            if found is not None:
                observables.setdefault(found.id, found)
                refs.append(found.id)
            target = _indicator(ioc, p, scan_id, sdo, indicators, vulnerabilities)
            if target is None:
                continue
            rel_id = f"relationship--{derived_uuid('stix', scan_id, 'related-to', target, fid)}"
            relationships.setdefault(rel_id, stix2.Relationship(
                id=rel_id, relationship_type="related-to", source_ref=target, target_ref=fid,
                description=f"Found by iocextract in {label(p)}.", **sdo))
        errors = [e for e in document.get("errors", []) if e.get("payload_id") == p["payload_id"]]
        hits = yara_hits(p)
        props: dict[str, Any] = dict(
            sdo, id=f"malware-analysis--{derived_uuid('stix', scan_id, 'analysis', p['payload_id'])}",
            product="stoq", version=stoq.__version__, submitted=date, sample_ref=fid,
            result="malicious" if detected(p) else "unknown",
            extensions={EXTENSION_ID: _present({
                "extension_type": "property-extension", "scan_id": scan_id, "payload_id": p["payload_id"],
                "parent_id": p["parent_id"], "depth": p["depth"], "extracted_by": p["extracted_by"],
                "meta": p["meta"], "workers": p["workers"], "flags": p["flags"],
                "errors": [{k: e[k] for k in ("plugin", "kind", "message")} for e in errors]})})
        if p["workers"]:
            props["modules"] = list(p["workers"])
        if hits:
            props["result_name"] = ", ".join(dict.fromkeys(h.rule for h in hits))
        if p["flags"]:
            props["labels"] = list(p["flags"])
        unique_refs = list(dict.fromkeys(r for r in refs if r != fid))
        if unique_refs:
            props["analysis_sco_refs"] = unique_refs
        analyses.append(stix2.MalwareAnalysis(**props))
        if hits or p["flags"] or errors:  # malware-analysis has no description: a note says it in words
            notes.append(stix2.Note(
                **sdo, id=f"note--{derived_uuid('stix', scan_id, 'note', p['payload_id'])}",
                abstract=_abstract(p, errors), content=_summary(p, errors), object_refs=[props["id"], fid]))

    first = root(document)
    content = [*files.values(), *observables.values(), *analyses, *notes, *indicators.values(),
               *vulnerabilities.values(), *relationships.values()]
    grouping = stix2.Grouping(
        **sdo, id=f"grouping--{derived_uuid('stix', scan_id, 'grouping')}", context="malware-analysis",
        name=f"stoq scan of {label(first)}",
        description=f"stoq scan {scan_id} of {label(first)} (sha256 {first['sha256']}) on {date}: "
                    f"{document['payloads']} payload(s), {len(document.get('errors', []))} plugin error(s).",
        object_refs=[o.id for o in content],
        external_references=[{"source_name": "stoq", "external_id": scan_id,
                              "description": "the scan id (stoq results SCAN_ID)"}])
    bundle = stix2.Bundle(identity, extension, *markings, grouping, *content,
                          id=f"bundle--{derived_uuid('stix', scan_id, 'bundle')}", allow_custom=False)
    result: dict[str, Any] = json.loads(bundle.serialize())
    return result


def _indicator(ioc: Ioc, payload: dict[str, Any], scan_id: str, sdo: dict[str, Any],
               indicators: dict[str, Any], vulnerabilities: dict[str, Any]) -> str | None:
    """The id of the indicator (or, for a CVE id, the vulnerability) for ``ioc``, made once per scan."""
    if ioc.kind == "cves":
        vid = f"vulnerability--{derived_uuid('stix', scan_id, 'cve', ioc.value)}"
        vulnerabilities.setdefault(vid, stix2.Vulnerability(
            id=vid, name=ioc.value, description=f"{ioc.value}, named in {label(payload)}.",
            external_references=[{"source_name": "cve", "external_id": ioc.value}], **sdo))
        return vid
    text = pattern(ioc)
    assert text is not None
    iid = f"indicator--{derived_uuid('stix', scan_id, 'indicator', text)}"
    if iid not in indicators:
        try:
            indicators[iid] = stix2.Indicator(
                id=iid, name=f"{IOC_NAMES[ioc.kind]} {ioc.value}",
                description=f"Found by stoq's iocextract in {label(payload)} (sha256 {payload['sha256']}).",
                indicator_types=["unknown"], pattern=text, pattern_type="stix", valid_from=sdo["created"], **sdo)
        except stix2.exceptions.STIXError:
            return None  # a value STIX refuses in its pattern (a "hash" that is not one): no indicator
    return iid


def validate(bundle: dict[str, Any], strict: bool = False) -> tuple[bool, list[str], list[str]]:
    """Checks ``bundle`` with stix2-validator (STIX 2.1): ``(is_valid, errors, warnings)``. ``strict``
    makes its warnings errors."""
    from stix2validator import ValidationOptions, validate_instance

    results = validate_instance(bundle, ValidationOptions(version="2.1", strict=strict))
    errors = [str(e.message) for e in results.errors]
    warnings = [str(w) for w in results.warnings or []]
    return bool(results.is_valid), errors, warnings
