"""A scan document as a MISP event (pymisp's object model, offline: no MISP server), and its checks.

The mapping is described in docs/exports.md: a ``file`` object per payload (hashes, filename,
size-in-bytes, mimetype, ssdeep/tlsh/entropy when computed), ``contains`` references from a parent to
what was extracted from it, an attribute per IOC iocextract found (``url``, ``domain``, ``ip-dst``,
``email``, ``md5``/``sha1``/``sha256``, ``vulnerability``) referenced by the file that ``mentions`` it,
tags for the TLP, the YARA rules and the flags. Every uuid is derived from the scan id.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any

from pymisp import MISPAttribute, MISPEvent, MISPObject

from stoq.exports._common import IOC_NAMES, derived_uuid, detected, fuzzy_hashes, iocs_of, label, root, tlp, yara_hits

#: iocextract's IOC type → the MISP attribute type.
IOC_TYPES = {"urls": "url", "domains": "domain", "ipv4s": "ip-dst", "ipv6s": "ip-dst",
             "email_addresses": "email", "md5s": "md5", "sha1s": "sha1", "sha256s": "sha256",
             "cves": "vulnerability"}
#: The category of each, where MISP's default for the type is not the fitting one.
IOC_CATEGORIES = {"email": "Payload delivery", "md5": "External analysis", "sha1": "External analysis",
                  "sha256": "External analysis"}


def _uuid(*parts: str) -> str:
    return str(derived_uuid("misp", *parts))


def yara_tag(rule: str) -> str:
    """The tag of a YARA rule: ``stoq:yara="RULE"`` (a machine tag; quotes in a name become ``'``)."""
    return f'stoq:yara="{rule.replace(chr(34), chr(39))}"'


def flag_tag(flag: str) -> str:
    """The tag of a flag: ``stoq:flag="limit:depth"``."""
    return f'stoq:flag="{flag}"'


def _file_object(payload: dict[str, Any], scan_id: str) -> MISPObject:
    obj = MISPObject("file", standalone=False, strict=True)
    obj.uuid = _uuid(scan_id, "file", payload["payload_id"])
    common = {"disable_correlation": False, "to_ids": False}
    values: list[tuple[str, Any]] = [(h, payload[h]) for h in ("md5", "sha1", "sha256", "sha512")]
    if payload.get("filename"):
        values.append(("filename", payload["filename"]))
    values += [("size-in-bytes", payload["size"]), ("mimetype", payload["mime"])]
    values += sorted(fuzzy_hashes(payload).items())
    entropy = payload.get("workers", {}).get("entropy")
    if isinstance(entropy, dict) and isinstance(entropy.get("entropy"), (int, float)) \
            and entropy.get("examined") == payload["size"]:
        values.append(("entropy", entropy["entropy"]))
    for relation, value in values:
        attribute = obj.add_attribute(relation, value=value, uuid=_uuid(scan_id, "file", payload["payload_id"], relation), **common)
        if relation == "sha256" and attribute is not None:  # the content's tags, on its identifying hash
            for hit in dict.fromkeys(h.rule for h in yara_hits(payload)):
                attribute.add_tag(yara_tag(hit))
            for flag in payload.get("flags", []):
                attribute.add_tag(flag_tag(flag))
    comment = f"extracted by {payload['extracted_by']}" if payload.get("extracted_by") else "the file scanned"
    if payload.get("duplicate_of"):
        comment += "; the same content as an earlier payload of the scan (analysed there)"
    if detected(payload):
        comment += "; detected as malicious (" + ", ".join(
            f for f in payload["flags"] if f.endswith((":infected", ":detected"))) + ")"
    obj.comment = comment
    return obj


def to_misp(document: dict[str, Any]) -> dict[str, Any]:
    """The MISP event of ``document`` (a scan document, docs/results.md): ``{"Event": {...}}``, the form
    MISP imports (Add event from JSON, feeds)."""
    scan_id = document["scan_id"]
    when = dt.datetime.fromisoformat(document["date"].replace("Z", "+00:00"))
    first = root(document)
    event = MISPEvent(strict_validation=True)
    event.uuid = _uuid(scan_id, "event")
    event.info = f"stoq scan of {label(first)} (sha256 {first['sha256']})"
    event.date = when.date()
    event.analysis = 2  # completed: the scan is finished
    event.threat_level_id = 4  # undefined: stoq does not judge
    event.distribution = 0  # your organisation only, until someone decides otherwise
    event.published = False
    level = tlp(document)
    if level is not None:
        event.add_tag(f"tlp:{level}")

    objects: dict[str, MISPObject] = {}
    for payload in document["results"]:
        obj = _file_object(payload, scan_id)
        objects[payload["payload_id"]] = obj
        event.add_object(obj)
        parent = objects.get(payload["parent_id"]) if payload["parent_id"] is not None else None
        if parent is not None:
            parent.add_reference(obj.uuid, "contains", uuid=_uuid(scan_id, "contains", payload["payload_id"]))

    attributes: dict[tuple[str, str], MISPAttribute] = {}
    for payload in document["results"]:
        for ioc in iocs_of(payload):
            kind = IOC_TYPES[ioc.kind]
            key = (kind, ioc.value)
            if key not in attributes:
                extra = {"category": IOC_CATEGORIES[kind]} if kind in IOC_CATEGORIES else {}
                attributes[key] = event.add_attribute(
                    kind, ioc.value, uuid=_uuid(scan_id, "ioc", kind, ioc.value), to_ids=False,
                    comment=f"{IOC_NAMES[ioc.kind]} found by stoq's iocextract in {label(payload)}", **extra)
            objects[payload["payload_id"]].add_reference(
                attributes[key].uuid, "mentions", uuid=_uuid(scan_id, "mentions", payload["payload_id"], kind, ioc.value))

    for payload in document["results"]:
        for hit in yara_hits(payload):
            if yara_tag(hit.rule) not in {t.name for t in event.tags}:
                event.add_tag(yara_tag(hit.rule))
    for payload in document["results"]:
        for flag in payload.get("flags", []):
            if flag_tag(flag) not in {t.name for t in event.tags}:
                event.add_tag(flag_tag(flag))
    result: dict[str, Any] = {"Event": json.loads(event.to_json())}
    return result


# ------------------------------------------------------------------------------------------- checks


@functools.cache
def _data(name: str) -> Any:
    import pymisp

    return json.loads((Path(pymisp.__file__).parent / "data" / name).read_text())


def validate(exported: dict[str, Any]) -> list[str]:
    """What is wrong with an exported event, by pymisp's own data (empty: nothing): its JSON schema
    (``schema-lax.json``: ``schema.json`` predates objects and refuses any), the event loaded back by
    ``MISPEvent.load``, each object against its template (pymisp's strict ``MISPObject``: required
    attributes, no repeated single ones, each attribute of the template's type), each attribute's type
    and category against ``describeTypes.json``, each reference to something in the event by a relationship
    MISP knows."""
    import jsonschema
    from pymisp.exceptions import PyMISPError

    problems = [f"schema: {'/'.join(map(str, e.path))}: {e.message}"
                for e in jsonschema.Draft4Validator(_data("schema-lax.json")).iter_errors(exported)]
    event = MISPEvent()
    try:
        event.load(json.dumps(exported))  # load() takes apart the dict it is given
    except (PyMISPError, ValueError, TypeError, KeyError) as exc:
        return [*problems, f"load: {exc}"]
    types = _data("describeTypes.json")["result"]
    relationships = {r["name"] for r in _data("misp-objects/relationships/definition.json")["values"]}
    known = {a.uuid for a in event.attributes} | {o.uuid for o in event.objects}
    known |= {a.uuid for o in event.objects for a in o.attributes}

    def check_attribute(attribute: MISPAttribute, where: str) -> None:
        if attribute.type not in types["types"]:
            problems.append(f"{where}: unknown type {attribute.type!r}")
        elif attribute.type not in types["category_type_mappings"].get(attribute.category, []):
            problems.append(f"{where}: type {attribute.type!r} is not of category {attribute.category!r}")

    for attribute in event.attributes:
        check_attribute(attribute, f"attribute {attribute.uuid}")
    for obj in event.objects:
        where = f"object {obj.uuid} ({obj.name})"
        strict = MISPObject(obj.name, strict=True, standalone=False)
        try:
            strict.from_dict(**obj.to_dict())
            strict.to_dict(strict=True)
        except PyMISPError as exc:
            problems.append(f"{where}: {exc}")
        template = strict._definition["attributes"] if strict._definition else {}
        for attribute in obj.attributes:
            check_attribute(attribute, f"{where} {attribute.object_relation}")
            wanted = template.get(attribute.object_relation, {}).get("misp-attribute")
            if wanted != attribute.type:
                problems.append(f"{where}: {attribute.object_relation} is {attribute.type!r}, the template says {wanted!r}")
        for reference in obj.references:
            if reference.referenced_uuid not in known:
                problems.append(f"{where}: reference to {reference.referenced_uuid}, not in the event")
            if reference.relationship_type not in relationships:
                problems.append(f"{where}: relationship {reference.relationship_type!r} is not one MISP knows")
    return problems
