"""STIX 2.1 and MISP exports of real scans (``stoq scan``, then ``stoq export``): they pass each library's
own checks (stix2-validator; pymisp's schema, object templates and types), files carry the hashes
hashlib computes of the bytes, parents contain their children as the document says, indicator patterns
are the ones written out by hand here, and hostile IOC values and file names stay inside their string
literals."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from stix2patterns.pattern import Pattern

from helpers import CORPUS, ROOT
from stoq.exports import export_document
from stoq.exports.misp import validate as misp_problems
from stoq.exports.stix import validate as stix_check

STOQ = Path(sys.executable).parent / "stoq"
IOC_TEXT = (b"Invoice overdue. Pay at http://evil.example.com/pay.php?id=7 or mail billing@bad-actor.example.net.\n"
            b"Backup server 203.0.113.77, mirror 2001:db8::1 and pay-portal.example.org.\n"
            b"Dropper md5 " + hashlib.md5(b"dropper").hexdigest().encode()
            + b" sha256 " + hashlib.sha256(b"dropper").hexdigest().encode() + b". Exploits CVE-2021-44228.\n")
HASH_NAMES = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512"}


def stix_string(value: str) -> str:
    """A STIX pattern string literal, written from the grammar: backslash and quote escaped, in quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expected_pattern(kind: str, value: str) -> str:
    path = {"urls": "url:value", "domains": "domain-name:value", "ipv4s": "ipv4-addr:value",
            "ipv6s": "ipv6-addr:value", "email_addresses": "email-addr:value", "md5s": "file:hashes.MD5",
            "sha1s": "file:hashes.'SHA-1'", "sha256s": "file:hashes.'SHA-256'"}[kind]
    return f"[{path} = {stix_string(value)}]"


def digests(data: bytes) -> dict[str, str]:
    return {name: hashlib.new(name, data).hexdigest() for name in HASH_NAMES}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("exports")
    full = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_") or k == "STOQ_TOOL_PATH"}
    full.update({"HOME": str(home / "home"), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
                 "STOQ_ARCHIVE": str(home / "archive"), "STOQ_DATABASE_URL": f"sqlite:///{home / 'stoq.db'}"})
    return full


def stoq(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(STOQ), *args], capture_output=True, env=env, cwd=cwd or ROOT, timeout=120)


@pytest.fixture(scope="module")
def scans(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One ``stoq scan`` of the bundled invoice.zip, a text full of IOCs and the corpus's e-mail (TLP amber)."""
    where = tmp_path_factory.mktemp("inputs")
    (where / "iocs.txt").write_bytes(IOC_TEXT)
    proc = stoq(env, "scan", str(ROOT / "samples" / "invoice.zip"), str(where / "iocs.txt"), str(CORPUS / "test.eml"),
                "--workers", "yara,iocextract,hash", "-o", f"yara.rules={ROOT / 'samples' / 'demo.yar'}",
                "--meta", "tlp=amber")
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    return {d["results"][0]["filename"]: d for d in docs}


def by_type(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [o for o in bundle["objects"] if o["type"] == kind]


def test_stix_files_hashes_and_containment(scans: dict[str, dict[str, Any]]) -> None:
    doc = scans["invoice.zip"]
    bundle = export_document(doc, "stix")
    valid, errors, warnings = stix_check(bundle)
    assert valid and errors == [] and warnings == []
    # the bytes of every payload, read here with the standard library
    root = (ROOT / "samples" / "invoice.zip").read_bytes()
    outer = zipfile.ZipFile(io.BytesIO(root))
    contents = {"invoice.zip": root, **{n: outer.read(n) for n in outer.namelist()}}
    inner = zipfile.ZipFile(io.BytesIO(contents["attachment.zip"]))
    contents |= {n: inner.read(n) for n in inner.namelist()}
    contents["notes.txt"] = gzip.decompress(contents["notes.txt.gz"])
    files = {f["name"]: f for f in by_type(bundle, "file")}
    assert set(files) == set(contents) == {p["filename"] for p in doc["results"]}
    for name, data in contents.items():
        hashes = files[name]["hashes"]
        assert {k: hashes[v] for k, v in HASH_NAMES.items()} == digests(data), name
        assert files[name]["size"] == len(data)
        # the hash worker's fuzzy hashes too, but not on the duplicate (no plugin ran on it)
        assert ({"SSDEEP", "TLSH"} <= set(hashes)) is (name != "notes.txt")
    # contains_refs: each parent holds exactly the children the document gives it
    names = {f["id"]: f["name"] for f in files.values()}
    got = {names[f["id"]]: sorted(names[r] for r in f.get("contains_refs", [])) for f in files.values()}
    by_id = {p["payload_id"]: p["filename"] for p in doc["results"]}
    want: dict[str, list[str]] = {n: [] for n in contents}
    for p in doc["results"]:
        if p["parent_id"]:
            want[by_id[p["parent_id"]]].append(p["filename"])
    assert got == {k: sorted(v) for k, v in want.items()}
    assert got["invoice.zip"] == ["attachment.zip", "notes.txt.gz", "readme.txt"]
    # a malware-analysis per analysed payload (not the duplicate notes.txt), its sample the payload's file
    analyses = by_type(bundle, "malware-analysis")
    assert sorted(names[a["sample_ref"]] for a in analyses) == sorted(set(contents) - {"notes.txt"})
    for analysis in analyses:
        assert analysis["product"] == "stoq" and analysis["result"] == "unknown"
        ext = next(iter(analysis["extensions"].values()))
        payload = next(p for p in doc["results"] if p["payload_id"] == ext["payload_id"])
        assert ext["workers"] == payload["workers"]  # what each plugin found, as the document has it
        children = sorted(files[n]["id"] for n in want[payload["filename"]])  # no IOCs here: the children only
        assert sorted(analysis.get("analysis_sco_refs", [])) == children
    lure = next(a for a in analyses if names[a["sample_ref"]] == "readme.txt")
    assert lure["result_name"] == "demo_invoice_lure"
    note = next(n for n in by_type(bundle, "note") if lure["id"] in n["object_refs"])
    assert "demo_invoice_lure (namespace default)" in note["content"]
    # TLP amber on every object that stoq made (not the fixed identity, extension and marking definitions)
    amber = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
    assert any(o["id"] == amber for o in bundle["objects"])
    for obj in bundle["objects"]:
        if obj["type"] not in ("identity", "extension-definition", "marking-definition"):
            assert obj["object_marking_refs"] == [amber], obj["id"]
    assert export_document(doc, "stix") == bundle  # the same scan, the same bundle: ids are derived


def test_every_scan_exports_valid(scans: dict[str, dict[str, Any]]) -> None:
    for name, doc in scans.items():
        valid, errors, warnings = stix_check(export_document(doc, "stix"))
        assert valid and errors == [], (name, errors)
        assert all("{271}" in w for w in warnings), warnings  # only: a MIME type IANA did not register
        assert misp_problems(export_document(doc, "misp")) == [], name


def test_stix_indicators_from_iocextract(scans: dict[str, dict[str, Any]]) -> None:
    doc = scans["iocs.txt"]
    iocs = doc["results"][0]["workers"]["iocextract"]["iocs"]
    planted = {("urls", "http://evil.example.com/pay.php?id=7"), ("email_addresses", "billing@bad-actor.example.net"),
               ("ipv4s", "203.0.113.77"), ("ipv6s", "2001:db8::1"), ("domains", "pay-portal.example.org"),
               ("md5s", hashlib.md5(b"dropper").hexdigest()), ("sha256s", hashlib.sha256(b"dropper").hexdigest()),
               ("cves", "CVE-2021-44228")}
    found = {(k, v) for k, values in iocs.items() for v in values}
    assert planted <= found
    bundle = export_document(doc, "stix")
    valid, errors, _ = stix_check(bundle)
    assert valid and errors == []
    patterns = sorted(i["pattern"] for i in by_type(bundle, "indicator"))
    assert patterns == sorted(expected_pattern(k, v) for k, v in found if k != "cves")
    assert [v["name"] for v in by_type(bundle, "vulnerability")] == ["CVE-2021-44228"]
    assert by_type(bundle, "vulnerability")[0]["external_references"] == [{"source_name": "cve", "external_id": "CVE-2021-44228"}]
    observed = {(o["type"], o["value"]) for o in bundle["objects"] if "value" in o}
    assert {("url", "http://evil.example.com/pay.php?id=7"), ("ipv4-addr", "203.0.113.77"),
            ("email-addr", "billing@bad-actor.example.net")} <= observed
    analysis = by_type(bundle, "malware-analysis")[0]
    ids = {o["id"]: o for o in bundle["objects"]}
    assert {(ids[r]["type"], ids[r]["value"]) for r in analysis["analysis_sco_refs"]} == observed
    # each indicator and the CVE are tied to the file they were found in
    file_id = by_type(bundle, "file")[0]["id"]
    related = {(r["source_ref"], r["target_ref"]) for r in by_type(bundle, "relationship")}
    assert related == {(o["id"], file_id) for o in by_type(bundle, "indicator") + by_type(bundle, "vulnerability")}


HOSTILE = {
    "urls": ["http://x.example/a'b", "http://x.example/\\'])", "http://x.example/line\nbreak",
             "http://x.example/']\nAND [file:name = 'x", "http://x.example/\\"],
    "domains": ["o'neil.example", "back\\slash.example"],
    "email_addresses": ["o'brien@example.com"],
    "md5s": ["' OR '1'='1"],
}


def hostile_document(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with iocextract's output replaced by hostile values and the root's filename made hostile."""
    hostile = copy.deepcopy(doc)
    root = hostile["results"][0]
    root["filename"] = "inv'oice\\ ']\n\"name\".txt"
    root["workers"]["iocextract"]["iocs"] = {k: sorted(v) for k, v in HOSTILE.items()}
    return hostile


def test_hostile_strings_stay_in_their_literals(scans: dict[str, dict[str, Any]]) -> None:
    doc = hostile_document(scans["iocs.txt"])
    bundle = export_document(doc, "stix")
    valid, errors, _ = stix_check(bundle)
    assert valid and errors == [], errors
    indicators = by_type(bundle, "indicator")
    # every value as it is, in its literal; the "MD5" that is no MD5 is refused by STIX's hash check: left out
    assert sorted(i["pattern"] for i in indicators) == sorted(expected_pattern(k, v) for k, vs in HOSTILE.items()
                                                              for v in vs if k != "md5s")
    for indicator in indicators:  # one comparison each, whose literal is the value, whatever it held
        comparisons = Pattern(indicator["pattern"]).inspect().comparisons
        assert sum(len(c) for c in comparisons.values()) == 1
    assert by_type(bundle, "file")[0]["name"] == doc["results"][0]["filename"]
    event = export_document(doc, "misp")
    assert misp_problems(event) == []
    values = {(a["type"], a["value"]) for a in event["Event"]["Attribute"]}
    assert {("url", v) for v in HOSTILE["urls"]} <= values and ("email", "o'brien@example.com") in values


def test_misp_event(scans: dict[str, dict[str, Any]]) -> None:
    doc = scans["invoice.zip"]
    event = export_document(doc, "misp")
    assert misp_problems(event) == []
    body = event["Event"]
    objects = {o["uuid"]: o for o in body["Object"]}
    assert all(o["name"] == "file" for o in objects.values())

    def values(obj: dict[str, Any]) -> dict[str, str]:
        return {a["object_relation"]: a["value"] for a in obj["Attribute"]}

    named = {values(o)["filename"]: o for o in objects.values()}
    assert set(named) == {p["filename"] for p in doc["results"]}
    for p in doc["results"]:
        got = values(named[p["filename"]])
        assert {k: got[k] for k in HASH_NAMES} == {k: p[k] for k in HASH_NAMES}
        assert (got["size-in-bytes"], got["mimetype"]) == (str(p["size"]), p["mime"])
    root = (ROOT / "samples" / "invoice.zip").read_bytes()
    assert {k: values(named["invoice.zip"])[k] for k in HASH_NAMES} == digests(root)
    contains = {(values(o)["filename"], values(objects[r["referenced_uuid"]])["filename"])
                for o in objects.values() for r in o.get("ObjectReference", []) if r["relationship_type"] == "contains"}
    by_id = {p["payload_id"]: p["filename"] for p in doc["results"]}
    assert contains == {(by_id[p["parent_id"]], p["filename"]) for p in doc["results"] if p["parent_id"]}
    tags = [t["name"] for t in body["Tag"]]
    assert tags == ["tlp:amber", 'stoq:yara="demo_invoice_lure"', 'stoq:yara="demo_encoded_powershell"']
    sha = next(a for a in named["readme.txt"]["Attribute"] if a["object_relation"] == "sha256")
    assert [t["name"] for t in sha["Tag"]] == ['stoq:yara="demo_invoice_lure"']
    assert export_document(doc, "misp") == event


def test_misp_ioc_attributes(scans: dict[str, dict[str, Any]]) -> None:
    for name in ("iocs.txt", "test.eml"):
        doc = scans[name]
        event = export_document(doc, "misp")
        assert misp_problems(event) == []
        types = {"urls": "url", "domains": "domain", "ipv4s": "ip-dst", "ipv6s": "ip-dst", "email_addresses": "email",
                 "md5s": "md5", "sha1s": "sha1", "sha256s": "sha256", "cves": "vulnerability"}
        want = {(types[k], v) for p in doc["results"] for k, vs in p["workers"].get("iocextract", {}).get("iocs", {}).items()
                for v in vs}
        attributes = event["Event"].get("Attribute", [])
        assert {(a["type"], a["value"]) for a in attributes} == want and len(attributes) == len(want)
        assert all(a["to_ids"] is False for a in attributes)
        # each payload's file object mentions exactly the attributes of its IOCs
        uuid_of = {(a["type"], a["value"]): a["uuid"] for a in attributes}
        files = {next(x["value"] for x in o["Attribute"] if x["object_relation"] == "sha256"): o for o in event["Event"]["Object"]}
        for p in doc["results"]:
            mentioned = {r["referenced_uuid"] for r in files[p["sha256"]].get("ObjectReference", [])
                         if r["relationship_type"] == "mentions"}
            iocs = p["workers"].get("iocextract", {}).get("iocs", {})
            assert mentioned == {uuid_of[(types[k], v)] for k, vs in iocs.items() for v in vs}, p["filename"]


def test_the_checks_catch_what_is_wrong(scans: dict[str, dict[str, Any]]) -> None:
    """The validators are not rubber stamps: a broken pattern, a wrong attribute type, a dangling
    reference are reported."""
    bundle = export_document(scans["iocs.txt"], "stix")
    indicator = by_type(bundle, "indicator")[0]
    indicator["pattern"] = "[url:value = 'it's']"
    assert stix_check(bundle)[0] is False
    event = export_document(scans["invoice.zip"], "misp")
    obj = event["Event"]["Object"][0]
    md5 = next(a for a in obj["Attribute"] if a["object_relation"] == "md5")
    md5["type"] = "sha1"
    obj["ObjectReference"][0]["referenced_uuid"] = "00000000-0000-4000-8000-000000000000"
    problems = misp_problems(event)
    assert any("md5 is 'sha1', the template says 'md5'" in p for p in problems)
    assert any("not in the event" in p for p in problems)


def test_cli_export(env: dict[str, str], scans: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    doc = scans["invoice.zip"]
    stored = json.loads(stoq(env, "results", doc["scan_id"], "--format", "jsonl").stdout)
    for fmt in ("stix", "misp"):
        proc = stoq(env, "export", doc["scan_id"], "--to", fmt)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == export_document(stored, fmt)  # type: ignore[arg-type]
    proc = stoq(env, "export", doc["scan_id"][:-4], "--to", "stix")  # a beginning of the id, as results takes
    assert proc.returncode == 0 and json.loads(proc.stdout)["type"] == "bundle"
    sha256 = doc["results"][0]["sha256"]  # a content found in one scan names that scan
    assert json.loads(stoq(env, "export", sha256, "--to", "misp").stdout) == export_document(stored, "misp")
    again = stoq(env, "scan", str(ROOT / "samples" / "invoice.zip"), "--workers", "none")
    second = json.loads(again.stdout)["scan_id"]
    proc = stoq(env, "export", sha256, "--to", "misp")  # now in two scans: which one?
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert proc.stderr.decode() == f"stoq: {sha256} names 2 scans (a sha256 found in each): give one scan id, " \
                                   f"{doc['scan_id']}, {second}\n"
    proc = stoq(env, "export", "0000dead-0000-7000-8000-000000000000", "--to", "misp")
    assert (proc.returncode, proc.stdout) == (6, b"")
    assert proc.stderr == b"stoq: no stored scan matches 0000dead-0000-7000-8000-000000000000\n"
    proc = stoq(env, "export", doc["scan_id"], "--to", "csv")
    assert proc.returncode == 2
    # without the extra: a module that cannot be imported stands in for stix2 and pymisp
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for module in ("stix2", "pymisp"):
        (shadow / f"{module}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    bare = dict(env, PYTHONPATH=str(shadow))
    for fmt, module in (("stix", "stix2"), ("misp", "pymisp")):
        proc = stoq(bare, "export", doc["scan_id"], "--to", fmt)
        assert (proc.returncode, proc.stdout) == (4, b"")
        assert proc.stderr.decode() == (f"stoq: the {fmt} export needs the extra 'exports' ({module} is not installed): "
                                        "pip install 'stoq-analysis[exports]'\n")


def test_web_export_through_a_real_server(env: dict[str, str], scans: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """``GET /api/scans/{id}/export/{fmt}`` of a ``stoq serve`` process on the same store: the same JSON as
    ``export_document`` of the stored document."""
    from test_web_api import serve

    doc = scans["invoice.zip"]
    stored = json.loads(stoq(env, "results", doc["scan_id"], "--format", "jsonl").stdout)
    server = serve(tmp_path, env)
    try:
        token = server.token("exports")
        for fmt in ("stix", "misp"):
            answer = server.get(f"/api/scans/{doc['scan_id']}/export/{fmt}", token)
            assert answer.status_code == 200, answer.text
            assert answer.json() == export_document(stored, fmt)  # type: ignore[arg-type]
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["content-disposition"] == f'attachment; filename="stoq-{doc["scan_id"]}.{fmt}.json"'
        unknown = "0000dead-0000-7000-8000-000000000000"
        assert server.get(f"/api/scans/{unknown}/export/stix", token).json() == {"detail": f"no scan {unknown}"}
        assert server.get(f"/api/scans/{unknown}/export/stix", token).status_code == 404
        assert server.get(f"/api/scans/{doc['scan_id']}/export/csv", token).status_code == 422
        assert server.get(f"/api/scans/{doc['scan_id']}/export/stix", None).status_code == 401
    finally:
        assert server.stop() == 143, server.log.read_text()


@pytest.mark.parametrize(("level", "markings"), [
    ("clear", ["marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"]),  # TLP:WHITE, STIX's TLP 1.0
    ("red", ["marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"]),
    ("amber+strict", ["marking-definition--f88d31f6-486f-44da-b317-01333bde0b82", "statement"]),
])
def test_tlp_levels(scans: dict[str, dict[str, Any]], level: str, markings: list[str]) -> None:
    doc = copy.deepcopy(scans["iocs.txt"])
    doc["source"]["meta"]["tlp"] = level
    bundle = export_document(doc, "stix")
    assert stix_check(bundle)[:2] == (True, [])
    refs = by_type(bundle, "indicator")[0]["object_marking_refs"]
    defined = {o["id"]: o for o in by_type(bundle, "marking-definition")}
    assert [r if r in markings else defined[r]["definition_type"] for r in refs] == markings
    if level == "amber+strict":
        assert defined[refs[1]]["definition"] == {"statement": "TLP:AMBER+STRICT"}
    assert [t["name"] for t in export_document(doc, "misp")["Event"]["Tag"]][0] == f"tlp:{level}"
