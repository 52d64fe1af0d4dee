"""The scan step: hashes and types, plugin failures, time limits, crashes, limits, dedup, dispatch."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import magic
import orjson
import pytest

from helpers import CORPUS, VALIDATOR, corpus_files, validate
from stoq import embedded
from stoq.archive import PackArchive
from stoq.config import ConfigError, load_settings
from stoq.embedded import scan_files
from stoq.engine import Engine


def make_engine(tmp_path: Path, **overrides: object) -> Engine:
    plugin_options = overrides.pop("plugin_options", {})
    env = {"STOQ_ARCHIVE": str(tmp_path / "archive"), "STOQ_DISPATCH_RULES": str(overrides.pop("rules", "none"))}
    return Engine(load_settings(env=env, overrides=overrides, plugin_options=plugin_options))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _plugins(testplugins_site: Path) -> None:
    """Every test here may use the misbehaving test plugins."""


def test_every_corpus_file_gets_hashes_and_libmagic_type(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_depth=0)
    files = corpus_files()
    for path in files:
        # the reference tool, reading the bytes from a pipe as we read them from a buffer
        mime = subprocess.run(["file", "--brief", "--mime-type", "-"], input=path.read_bytes(), capture_output=True,
                              check=True).stdout.decode().strip()
        if path.name == "test.elf":  # file(1) looks into the ELF dynamic section through the descriptor;
            mime = "application/x-sharedlib"  # libmagic's buffer mode cannot tell a PIE from a shared object

        doc = engine.scan(path.read_bytes(), path.name, {"path": str(path)})
        validate(doc)
        root = doc["results"][0]
        data = path.read_bytes()
        assert root["size"] == len(data)
        for algo in ("md5", "sha1", "sha256", "sha512"):
            assert root[algo] == hashlib.new(algo, data).hexdigest(), (path.name, algo)
        assert root["mime"] == mime, path.name
        assert root["filename"] == path.name and root["depth"] == 0 and root["parent_id"] is None
        assert engine.archive.get(root["sha256"]) == data  # verified against its sha256 on the way out


def test_a_raising_plugin_is_an_error_entry_and_the_others_still_run(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="boom,nest", max_depth=1, plugin_options={"boom": {"trigger": "#0"}})
    doc = engine.scan(b"hello", "h.txt", {})
    validate(doc)
    # root: boom runs fine; children: child0 ("hello#0") makes boom raise, child1 does not
    assert [p["filename"] for p in doc["results"]] == ["h.txt", "child0", "child1"]
    assert doc["results"][0]["workers"]["boom"] == {"ok": True}
    assert "boom" not in doc["results"][1]["workers"]
    assert doc["results"][2]["workers"]["boom"] == {"ok": True}
    assert len(doc["errors"]) == 1
    error = doc["errors"][0]
    assert error["payload_id"] == doc["results"][1]["payload_id"]
    assert (error["plugin"], error["kind"]) == ("boom", "error")
    assert error["message"].startswith("ValueError: boom on purpose (at stoq_testplugins.py:")


def test_a_timeout_cannot_be_swallowed_by_except_exception(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="spin,boom", timeout=0.3, plugin_options={"boom": {"trigger": "zzz"}})
    start = time.monotonic()
    doc = engine.scan(b"data", "d", {})
    elapsed = time.monotonic() - start
    validate(doc)
    assert [(e["plugin"], e["kind"], e["message"]) for e in doc["errors"]] == [("spin", "timeout", "exceeded 0.3 s")]
    assert doc["results"][0]["workers"] == {"boom": {"ok": True}}
    assert 0.3 <= elapsed < 1.5


def test_depth_limit_stops_extraction_and_is_flagged(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="nest", max_depth=2, plugin_options={"nest": {"count": 3}})
    doc = engine.scan(b"root", "root", {})
    validate(doc)
    depths = [p["depth"] for p in doc["results"]]
    assert depths == [0] + [1] * 3 + [2] * 9
    for p in doc["results"]:
        if p["depth"] < 2:
            assert p["workers"] == {"nest": {"emitted": 3}} and p["flags"] == []
        else:
            assert p["workers"] == {} and p["flags"] == ["limit:depth"]
    # the text rule: NUL and a byte that is not UTF-8 in a plugin's meta
    assert doc["results"][1]["meta"] == {"index": 0, "raw": "\\x00\\xff"}
    assert doc["results"][1]["extracted_by"] == "nest"
    assert [p["parent_id"] for p in doc["results"][1:4]] == [doc["results"][0]["payload_id"]] * 3


def test_children_and_bytes_limits_drop_children_with_a_flag(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="nest", max_children=5, plugin_options={"nest": {"count": 3}})
    doc = engine.scan(b"r", "r", {})
    validate(doc)
    assert doc["payloads"] == 6  # the root and the first 5 children, breadth first
    assert "limit:children" in doc["results"][1]["flags"]  # the 2nd payload could place 2 of 3
    engine = make_engine(tmp_path, workers="nest", max_bytes=7, plugin_options={"nest": {"count": 3}})
    doc = engine.scan(b"abc", "r", {})  # children are 5 bytes each: one fits in 7
    assert doc["payloads"] == 2
    assert doc["results"][0]["flags"] == ["limit:bytes"]


def test_children_begun_after_the_scan_time_are_listed_but_not_analysed(tmp_path: Path) -> None:
    """`spin` holds the root for 0.6 s (its time limit) against 0.3 s for the whole scan: the three
    children nest made are begun after that, so they are hashed, typed and listed, flagged
    limit:scan-time, and nothing runs on them (nor is extracted from them). With no scan-time limit
    (0) the same children are analysed."""
    options = {"nest": {"count": 3}, "spin": {"time_limit": 0.6}}
    engine = make_engine(tmp_path, workers="nest,spin", max_scan_seconds=0.3, max_depth=1, plugin_options=options)
    doc = engine.scan(b"root", "root.bin", {})
    validate(doc)
    root, *children = doc["results"]
    assert root["workers"] == {"nest": {"emitted": 3}} and root["flags"] == []
    assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("spin", "timeout")]
    assert [c["sha256"] for c in children] == [hashlib.sha256(b"root#%d" % i).hexdigest() for i in range(3)]
    assert [(c["workers"], c["flags"]) for c in children] == [({}, ["limit:scan-time"])] * 3
    assert doc["payloads"] == 4

    engine = make_engine(tmp_path, workers="nest,spin", max_scan_seconds=0, max_depth=1, plugin_options=options)
    doc = engine.scan(b"root", "root.bin", {})
    assert [c["flags"] for c in doc["results"][1:]] == [["limit:depth"]] * 3  # analysed: nest could not go deeper
    assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("spin", "timeout")] * 4


def test_the_scan_time_budget() -> None:
    from stoq.limits import Budget, Limits

    assert Budget(Limits(max_seconds=1), started=time.time() - 2).overtime()
    assert not Budget(Limits(max_seconds=1)).overtime()
    assert not Budget(Limits(max_seconds=0), started=time.time() - 1e6).overtime()


def test_duplicates_point_to_the_first_and_are_not_analysed_again(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="nest", plugin_options={"nest": {"count": 3, "same": True}})
    doc = engine.scan(b"same bytes", "r", {})
    validate(doc)
    root_id = doc["results"][0]["payload_id"]
    assert doc["payloads"] == 4
    for child in doc["results"][1:]:
        assert child["duplicate_of"] == root_id and child["workers"] == {}
        assert child["sha256"] == hashlib.sha256(b"same bytes").hexdigest()
        # typed and hashed once per scan: the duplicates repeat the first record's values
        assert {k: child[k] for k in ("size", "md5", "sha1", "sha512", "mime")} == {
            "size": 10, "md5": hashlib.md5(b"same bytes").hexdigest(), "sha1": hashlib.sha1(b"same bytes").hexdigest(),
            "sha512": hashlib.sha512(b"same bytes").hexdigest(), "mime": magic.from_buffer(b"same bytes", mime=True)}


def test_dispatch_rule_meta_becomes_options_and_save_false_keeps_children_out_of_the_archive(tmp_path: Path) -> None:
    rules = tmp_path / "dispatch.yar"
    rules.write_text('rule to_nest { meta: plugin = "extractor:nest" count = "1" save = "False" '
                     'strings: $a = "NEST ME" condition: $a }')
    engine = make_engine(tmp_path, rules=rules, max_depth=1)
    doc = engine.scan(b"please NEST ME", "r", {})
    validate(doc)
    assert [p["filename"] for p in doc["results"]] == ["r", "child0"]
    assert doc["results"][0]["workers"] == {"nest": {"emitted": 1}}
    engine.close()
    assert not engine.archive.exists(doc["results"][1]["sha256"])
    assert engine.archive.exists(doc["results"][0]["sha256"])


MISFITS = {  # mode -> the start of the error entry the framework records for it
    "accepts-raises": "ValueError: accepts blew up (at stoq_testplugins.py:",
    "text-child": "TypeError: plugin returned a child whose content is str; expected bytes",
    "raw-child": "TypeError: plugin returned a child of type bytes; expected Extracted",
    "number-name": "TypeError: plugin returned a child whose filename is int; expected str",
    "deeper": "ValueError: output nested deeper than 200 levels",
    "exit": "SystemExit: 7 (at stoq_testplugins.py:",
}


@pytest.mark.parametrize("mode", sorted(MISFITS))
def test_whatever_a_plugin_does_wrong_is_its_error_entry_and_the_scan_goes_on(tmp_path: Path, mode: str) -> None:
    """accepts() raising, children that are not ``Extracted`` bytes, output nested too deep, exit():
    each is an ``error`` entry of that plugin on that payload; the document is complete and valid."""
    engine = make_engine(tmp_path, workers="misfit,nest", max_depth=1, plugin_options={"misfit": {"mode": mode}})
    doc = engine.scan(b"hello", "h.txt", {})
    validate(doc)
    assert [p["filename"] for p in doc["results"]] == ["h.txt", "child0", "child1"]  # nest still ran
    assert all("misfit" not in p["workers"] for p in doc["results"])
    assert [(e["payload_id"], e["plugin"], e["kind"]) for e in doc["errors"]] == [
        (p["payload_id"], "misfit", "error") for p in doc["results"]]
    assert all(e["message"].startswith(MISFITS[mode]) for e in doc["errors"]), doc["errors"]


def test_odd_text_and_deep_output_from_a_plugin_still_make_a_valid_document(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="misfit", max_depth=1, plugin_options={"misfit": {"mode": "surrogates"}})
    doc = engine.scan(b"hello", "h.txt", {})
    validate(doc)
    assert doc["errors"] == []
    root, child = doc["results"]
    # U+D800 is not from surrogateescape: its UTF-8-style bytes ED A0 80, as \xNN; U+DCE9 is byte E9
    assert root["workers"]["misfit"] == {"s": "a\\xed\\xa0\\x80b", "k\\xed\\xbf\\xbf": ["\\xe9"]}
    assert child["filename"] == "n\\xed\\xa0\\x80.txt" and child["meta"] == {"m": "\\xed\\xa0\\xbd"}
    deep = make_engine(tmp_path, workers="misfit", plugin_options={"misfit": {"mode": "deep"}}).scan(b"x", "x", {})
    validate(deep)
    nested, levels = deep["results"][0]["workers"]["misfit"]["nested"], 1
    while nested:
        nested, levels = nested[0], levels + 1
    assert levels == 199 and deep["errors"] == []  # with the dict around it: 200 levels, the most allowed


def test_a_dispatch_rule_giving_a_bad_option_value_is_an_error_entry_not_a_lost_file(tmp_path: Path) -> None:
    rules = tmp_path / "dispatch.yar"
    rules.write_text('rule bad_limit { meta: plugin = "worker:misfit" limit = "lots" strings: $a = "BAD" condition: $a }')
    engine = make_engine(tmp_path, rules=rules, max_depth=1)
    doc = engine.scan(b"a BAD payload", "b.bin", {})
    validate(doc)
    assert doc["results"][0]["workers"] == {}
    (error,) = doc["errors"]
    assert (error["plugin"], error["kind"]) == ("misfit", "error")
    assert error["message"].startswith("ConfigError: option misfit.limit='lots': Input should be a valid integer")
    good = engine.scan(b"a good payload", "g.bin", {})
    assert good["errors"] == [] and good["results"][0]["workers"] == {}  # the rule did not match: not run


def test_a_plugin_without_a_category_or_exiting_on_load_is_listed_with_its_error(tmp_path: Path) -> None:
    from stoq.registry import Registry

    entries = Registry.discover().entries
    assert entries["nocategory"].cls is None and entries["nocategory"].error == (
        "TypeError: stoq_testplugins:NoCategory has category None, not one of worker, carver, extractor, "
        "decoder, reader, connector, archiver, source")
    assert entries["exiting"].cls is None and entries["exiting"].error == "SystemExit: 3"
    assert entries["boom"].cls is not None and entries["yara"].cls is not None  # the others load
    doc = make_engine(tmp_path, workers="nest", max_depth=0).scan(b"x", "x", {})
    assert doc["errors"] == [] and doc["results"][0]["flags"] == ["limit:depth"]


def test_unknown_and_broken_plugins_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown plugin 'nope'"):
        make_engine(tmp_path, workers="nope")
    with pytest.raises(ConfigError, match="plugin 'broken' failed to load: TypeError"):
        make_engine(tmp_path, workers="broken")
    with pytest.raises(ConfigError, match="^option nest.count='many': Input should be a valid integer"):
        make_engine(tmp_path, workers="nest", plugin_options={"nest": {"count": "many"}})


def test_pool_survives_a_segfault_and_records_a_crash(tmp_path: Path) -> None:
    files = []
    for name, data in (("a", b"fine"), ("bad", b"xx SEGV xx"), ("c", b"also fine")):
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    engine = make_engine(tmp_path, workers="segv,boom", plugin_options={"boom": {"trigger": "zzz"}})
    outcomes = list(scan_files(engine, files, 2))
    assert [o.path.name for o in outcomes] == ["a", "bad", "c"]
    docs = [orjson.loads(o.document) for o in outcomes]
    for doc in docs:
        validate(doc)
    assert docs[0]["results"][0]["workers"] == {"segv": {"crashed": False}, "boom": {"ok": True}}
    bad = docs[1]
    assert bad["results"][0]["workers"] == {"boom": {"ok": True}}  # rescanned without segv, boom still ran
    assert [(e["plugin"], e["kind"]) for e in bad["errors"]] == [("segv", "crash")]
    assert "signal 11" in bad["errors"][0]["message"]
    assert engine.archive.get(hashlib.sha256(b"xx SEGV xx").hexdigest()) == b"xx SEGV xx"  # kept, for the analyst


@pytest.mark.parametrize("admit_bytes", [32 << 20, 1], ids=["one-burst", "file-by-file"])
def test_the_pool_archives_roots_in_the_parent_and_children_in_the_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, admit_bytes: int) -> None:
    import sqlite3

    monkeypatch.setattr(embedded, "ADMIT_BYTES", admit_bytes)  # 1: archived as soon as read, one by one

    data = (CORPUS / "test.zip").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.zip").write_bytes(data)
    (tmp_path / "in" / "same.zip").write_bytes(data)  # the same payload twice: archived once
    engine = make_engine(tmp_path, workers="decompress")
    outcomes = list(scan_files(engine, [tmp_path / "in" / "a.zip", tmp_path / "in" / "same.zip"], 1))
    docs = [orjson.loads(o.document or b"") for o in outcomes]
    for doc in docs:
        validate(doc)
    root, *children = docs[0]["results"]
    assert root["sha256"] == hashlib.sha256(data).hexdigest() and children
    with sqlite3.connect(tmp_path / "archive" / "index.sqlite") as db:
        packs = dict(db.execute("SELECT sha256, pack FROM blobs"))
    assert f"-{os.getpid()}-" in packs[root["sha256"]]  # appended by this process, the pool's parent
    for child in children:
        assert f"-{os.getpid()}-" not in packs[child["sha256"]]  # by the worker that extracted it
        assert len(engine.archive.get(child["sha256"])) == child["size"]  # get() checks the sha256 too
    roots = [p for p in (tmp_path / "archive" / "packs").iterdir() if f"-{os.getpid()}-" in p.name]
    assert sum(p.stat().st_size for p in roots) == PackArchive.HEADER + len(data)  # once, though given twice
    assert engine.archive.get(root["sha256"]) == data


def test_pool_kills_a_plugin_stuck_in_native_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "HARD_GRACE", 0.5)
    (tmp_path / "s").write_bytes(b"SLEEP")
    (tmp_path / "t").write_bytes(b"awake")
    engine = make_engine(tmp_path, workers="sleeper", timeout=0.5)
    start = time.monotonic()
    outcomes = list(scan_files(engine, [tmp_path / "s", tmp_path / "t"], 1))
    assert time.monotonic() - start < 10
    stuck, awake = (orjson.loads(o.document) for o in outcomes)
    validate(stuck)
    assert [(e["plugin"], e["kind"]) for e in stuck["errors"]] == [("sleeper", "timeout")]
    assert "worker process killed" in stuck["errors"][0]["message"]
    assert awake["results"][0]["workers"] == {"sleeper": {"slept": False}} and awake["errors"] == []


def test_an_archive_that_cannot_be_written_is_an_error_entry_and_the_scan_goes_on(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, workers="boom", plugin_options={"boom": {"trigger": "zzz"}})
    (tmp_path / "archive" / "packs").write_bytes(b"")  # a file where the pack directory goes: no pack can be opened
    files = [CORPUS / "test.txt", CORPUS / "test.json"]
    docs = [orjson.loads(o.document or b"") for o in scan_files(engine, files, 1)]
    for doc, path in zip(docs, files):
        validate(doc)
        (root,) = doc["results"]
        assert root["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert root["workers"] == {"boom": {"ok": True}}  # analysed all the same
        # the parent could not archive it, so the worker read the file and tried, and says it failed
        assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("archive", "error")]
        assert "packs" in doc["errors"][0]["message"]


def test_a_failing_last_index_write_of_the_parent_is_a_warning_and_reindex_recovers_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    engine = make_engine(tmp_path, workers="boom", plugin_options={"boom": {"trigger": "zzz"}})
    parent, real_close = os.getpid(), PackArchive.close

    def close(self: PackArchive) -> None:  # the disk fails just when the parent writes its last rows
        if os.getpid() == parent and self._pending:
            raise sqlite3.OperationalError("disk I/O error")
        real_close(self)

    monkeypatch.setattr(PackArchive, "close", close)
    monkeypatch.setattr(PackArchive, "FLUSH_EVERY", 10**6)
    monkeypatch.setattr(PackArchive, "FLUSH_SECONDS", 3600.0)  # every row waits for close()
    files = [CORPUS / "test.txt", CORPUS / "test.json"]
    docs = [orjson.loads(o.document or b"") for o in scan_files(engine, files, 1)]
    assert [d["results"][0]["sha256"] for d in docs] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert "disk I/O error" in caplog.text and "reindex" in caplog.text
    fresh = PackArchive(tmp_path / "archive")
    assert not fresh.exists(docs[0]["results"][0]["sha256"])
    assert fresh.reindex() == len(files)
    assert [fresh.get(d["results"][0]["sha256"]) for d in docs] == [f.read_bytes() for f in files]


def test_unreadable_input_is_reported_not_fatal(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    missing = tmp_path / "gone"
    outcomes = list(scan_files(engine, [missing, CORPUS / "test.txt"], 1))
    assert outcomes[0].document is None and "No such file or directory" in (outcomes[0].error or "")
    validate(orjson.loads(outcomes[1].document or b""))


def test_plugin_flags_are_normalised_to_the_documented_shape() -> None:
    from stoq.engine import normal_flag

    pattern = re.compile(VALIDATOR.schema["$defs"]["payload"]["properties"]["flags"]["items"]["pattern"])
    cases = {"limit:depth": "limit:depth", "Zip:Overlapping Entries": "zip:overlapping-entries",
             "weird flag!": "weird-flag", "a.b:c.d": "a-b:c.d", "::": "x:x:x"}
    for raw, expected in cases.items():
        assert normal_flag(raw) == expected
        assert pattern.match(expected)


def test_an_input_over_max_file_bytes_is_hashed_and_typed_but_not_analysed(tmp_path: Path) -> None:
    big = tmp_path / "big.zip"
    data = (CORPUS / "test.zip").read_bytes() + b"\x00" * 3000
    big.write_bytes(data)
    engine = make_engine(tmp_path, workers="boom", max_file_bytes=2048, plugin_options={"boom": {"trigger": "zzz"}})
    (outcome,) = scan_files(engine, [big], 1)
    doc = orjson.loads(outcome.document or b"")
    validate(doc)
    (root,) = doc["results"]
    assert root["flags"] == ["limit:file-bytes"] and root["workers"] == {} and root["size"] == len(data)
    for algo in ("md5", "sha1", "sha256", "sha512"):
        assert root[algo] == hashlib.new(algo, data).hexdigest()
    assert root["mime"] == "application/zip"
    assert not engine.archive.exists(root["sha256"])


def test_a_payload_that_killed_libmagic_is_typed_octet_stream_with_a_crash_entry(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    data = (CORPUS / "test.zip").read_bytes()
    skip = {(hashlib.sha256(data).hexdigest(), "libmagic"): ("crash", "worker process died (signal 11) while running libmagic")}
    doc = engine.scan(data, "test.zip", {}, skip=skip)
    validate(doc)
    root = doc["results"][0]
    assert root["mime"] == "application/octet-stream" and root["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("libmagic", "crash")]
    assert engine.scan(data, "test.zip", {})["results"][0]["mime"] == "application/zip"  # without the skip
