"""The ``yara`` worker with rule sets shaped like the public ones (a tree of rule files, an index file of
includes, rules on LOKI/THOR's external variables): the rules that match each corpus file are those
yara-python itself gives when it compiles the same files with the externals expected here."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import magic
import pytest
import yara

from helpers import validate
from stoq.config import load_settings
from stoq.engine import Engine
from stoq.plugin import Payload, set_call_deadline
from stoq_plugins._yararules import RuleError
from stoq_plugins.yara import YaraPlugin

#: Corpus files, with the LOKI file type a LOKI-style rule expects of them ("" where LOKI has none).
CORPUS_TYPES = {"test.exe": "EXE", "test_xor.exe": "EXE", "test.elf": "ELF", "test.pdf": "PDF", "test.zip": "ZIP",
                "test.doc": "DOC", "test_pe_object.doc": "DOC", "test.gif": "GIF", "test.rar": "RAR",
                "test.7z": "7Z", "test.txt": "", "test.html": "", "test.eml": "EML", "test.lnk": "LNK"}
MIME = magic.Magic(mime=True)

#: (relative path, rules): about twenty files in subdirectories, as in signature-base or Yara-Rules.
RULE_FILES: dict[str, str] = {
    "generic/gen_pe.yar": 'rule gen_mz { condition: uint16(0) == 0x5A4D }\n'
                          'rule gen_dos_stub { strings: $a = "This program cannot be run in DOS mode" '
                          'condition: $a }',
    "generic/gen_elf.yar": "rule gen_elf { condition: uint32(0) == 0x464C457F }",
    "generic/gen_pdf.yara": 'rule gen_pdf_js : pdf { strings: $a = "%PDF" $b = "/JavaScript" condition: $a at 0 and $b }'
                            '\nrule gen_pdf { strings: $a = "%PDF-" condition: $a at 0 }',
    "generic/gen_zip.yar": "rule gen_zip { condition: uint32(0) == 0x04034B50 }",
    "generic/gen_ole.yar": "rule gen_ole { condition: uint32(0) == 0xE011CFD0 and uint32(4) == 0xE11AB1A1 }",
    "generic/gen_text.yar": 'rule gen_lorem { strings: $a = "Lorem" nocase condition: $a }',
    "thor/thor_filename.yar": 'rule thor_name_exe { condition: filename == "test.exe" }\n'
                              'rule thor_name_re { condition: filename matches /^test_[a-z]+\\.(exe|doc)$/ }',
    "thor/thor_extension.yar": 'rule thor_ext_exe { condition: extension == ".exe" }\n'
                               'rule thor_ext_doc_pe { strings: $a = "This program" condition: extension == ".doc" '
                               'and $a }',
    "thor/thor_filetype.yar": 'rule thor_type_exe { condition: filetype == "EXE" }\n'
                              'rule thor_type_doc { condition: filetype == "DOC" }\n'
                              'rule thor_type_mismatch { condition: filetype == "EXE" and not extension == ".exe" }',
    "thor/thor_filepath.yar": 'rule thor_path_dir { condition: filepath contains "dropped/" }\n'
                              'rule thor_path_any { condition: filepath != "" }',
    "thor/thor_owner.yar": 'rule thor_owner_system { condition: owner == "NT AUTHORITY\\\\SYSTEM" }\n'
                           'rule thor_owner_unknown { condition: owner == "" and filesize > 0 }',
    "thor/thor_mime.yar": 'rule thor_mime_pdf { condition: mime == "application/pdf" }',
    "thor/thor_custom.yar": "rule thor_custom_score { condition: score_min > 50 and uint16(0) == 0x5A4D }",
    "apt/apt_lure.yar": 'rule apt_invoice { strings: $a = "invoice" nocase condition: $a }',
    "apt/apt_xor.yar": 'rule apt_xor_prog { strings: $a = "This program" xor(1-255) condition: $a }',
    "apt/sub/apt_deep.yar": 'rule apt_deep_gif { condition: uint32(0) == 0x38464947 }',
    "apt/sub/apt_deep2.yara": 'import "pe"\nrule apt_pe_sections { condition: pe.number_of_sections > 3 }',
    "webshells/ws_php.yar": 'rule ws_php { strings: $a = "<?php" condition: $a }',
    "webshells/ws_html.yar": 'rule ws_html { strings: $a = "<html" nocase condition: $a }',
    "crime/crime_eml.yar": 'rule crime_eml { strings: $a = "Subject:" condition: $a in (0..2000) }',
    "crime/crime_lnk.yar": 'rule crime_lnk { condition: uint32(0) == 0x0000004C }',
}
#: Externals declared by the user (``externals`` option), with their defaults.
CUSTOM = {"score_min": 70}
BUILTIN = ("filename", "filepath", "extension", "filetype", "owner", "mime")


def write_tree(root: Path) -> Path:
    for rel, text in RULE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def write_index(root: Path) -> Path:
    """An index file of includes beside the tree, as LOKI-style sets ship one (``index.yar``)."""
    index = root / "index.yar"
    index.write_text("".join(f'include "./{rel}"\n' for rel in RULE_FILES))
    return index


def expected_externals(name: str, mime: str, filepath: str | None = None) -> dict[str, object]:
    return {"filename": os.path.basename(name), "filepath": filepath if filepath is not None else name,
            "extension": os.path.splitext(name)[1].lower(), "filetype": CORPUS_TYPES.get(name, ""), "owner": "",
            "mime": mime}


def reference(compiled: yara.Rules, data: bytes, externals: dict[str, object]) -> set[tuple[str, str]]:
    return {(m.namespace, m.rule) for m in compiled.match(data=data, externals=externals)}


def got(plugin: YaraPlugin, make_payload, data: bytes, mime: str, name: str | None) -> set[tuple[str, str]]:
    result = plugin.scan(make_payload(data, mime, name), plugin.options)
    assert result.flags == []
    return {(m["namespace"], m["rule"]) for m in result.data["matches"]}


def test_directory_of_rule_files_matches_as_yara_python(tmp_path: Path, corpus: Path, make_payload) -> None:
    root = write_tree(tmp_path / "rules")
    plugin = YaraPlugin(YaraPlugin.Options(rules=root, externals=CUSTOM))
    plugin.setup()
    compiled = yara.compile(filepaths={rel: str(root / rel) for rel in RULE_FILES},
                            externals=dict.fromkeys(BUILTIN, "") | CUSTOM)
    seen: set[str] = set()
    for name in CORPUS_TYPES:
        data = (corpus / name).read_bytes()
        mime = MIME.from_buffer(data)
        expected = reference(compiled, data, expected_externals(name, mime) | CUSTOM)
        assert got(plugin, make_payload, data, mime, name) == expected, name
        seen |= {rule for _, rule in expected}
    # Every external decided at least one match, so the externals given per payload were used.
    assert {"thor_name_exe", "thor_name_re", "thor_ext_exe", "thor_ext_doc_pe", "thor_type_exe",
            "thor_type_doc", "thor_path_any", "thor_owner_unknown", "thor_mime_pdf", "thor_custom_score",
            "apt_pe_sections"} <= seen
    assert "thor_owner_system" not in seen and "thor_path_dir" not in seen
    exe = got(plugin, make_payload, (corpus / "test.exe").read_bytes(), "application/vnd.microsoft.portable-executable",
              "test.exe")
    assert ("thor/thor_filename.yar", "thor_name_exe") in exe and ("generic/gen_pe.yar", "gen_mz") in exe


def test_index_file_of_includes_matches_as_yara_python(tmp_path: Path, corpus: Path, make_payload) -> None:
    root = write_tree(tmp_path / "set")
    index = write_index(root)
    plugin = YaraPlugin(YaraPlugin.Options(rules=index, externals={"score_min": 10}))
    plugin.setup()
    # YARA's own include resolution, from the index file's directory, is the reference.
    compiled = yara.compile(filepath=str(index), externals=dict.fromkeys(BUILTIN, "") | {"score_min": 10})
    for name in ("test.exe", "test_xor.exe", "test.pdf", "test.doc", "test.txt", "test.eml"):
        data = (corpus / name).read_bytes()
        mime = MIME.from_buffer(data)
        expected = reference(compiled, data, expected_externals(name, mime) | {"score_min": 10})
        assert got(plugin, make_payload, data, mime, name) == expected, name
        assert all(ns == "default" for ns, _ in expected)


def test_member_paths_give_filepath_and_no_name_gives_empty_externals(tmp_path: Path, corpus: Path,
                                                                      make_payload) -> None:
    root = write_tree(tmp_path / "rules")
    plugin = YaraPlugin(YaraPlugin.Options(rules=root, externals=CUSTOM))
    plugin.setup()
    data = (corpus / "test.exe").read_bytes()
    mime = "application/vnd.microsoft.portable-executable"
    rules = {r for _, r in got(plugin, make_payload, data, mime, "dropped/Test.EXE")}
    assert {"thor_path_dir", "thor_path_any", "thor_ext_exe", "thor_type_exe"} <= rules
    assert "thor_name_exe" not in rules  # "Test.EXE": names compare as given, extensions in lower case
    unnamed = {r for _, r in got(plugin, make_payload, data, mime, None)}
    assert {"thor_path_any", "thor_ext_exe", "thor_name_exe"}.isdisjoint(unnamed) and "thor_type_exe" in unnamed


def test_root_filepath_is_its_source_path(tmp_path: Path, corpus: Path) -> None:
    root = write_tree(tmp_path / "rules")
    (root / "thor" / "thor_source.yar").write_text('rule thor_source { condition: filepath == "/srv/in/dropped/test.exe" '
                                                   'and filename == "test.exe" }\n')
    plugin = YaraPlugin(YaraPlugin.Options(rules=root, externals=CUSTOM))
    plugin.setup()
    data = (corpus / "test.exe").read_bytes()
    mime = MIME.from_buffer(data)
    payload = Payload(data, "p", "test.exe", mime, hashlib.sha256(data).hexdigest(), 0,
                      source_path="/srv/in/dropped/test.exe")
    compiled = yara.compile(filepaths={str(p.relative_to(root)): str(p) for p in root.rglob("*.yar")},
                            externals=dict.fromkeys(BUILTIN, "") | CUSTOM)
    expected = reference(compiled, data, expected_externals("test.exe", mime, "/srv/in/dropped/test.exe") | CUSTOM)
    result = plugin.scan(payload, plugin.options)
    assert {(m["namespace"], m["rule"]) for m in result.data["matches"]} == expected
    assert {"thor_source", "thor_path_dir", "thor_name_exe"} <= {rule for _, rule in expected}


def test_rules_recompiled_when_a_file_changes(tmp_path: Path, make_payload) -> None:
    root = tmp_path / "rules"
    (root / "sub").mkdir(parents=True)
    (root / "index.yar").write_text('include "sub/a.yar"\n')
    (root / "sub" / "a.yar").write_text('rule first { strings: $a = "alpha" condition: $a }\n')
    plugin = YaraPlugin(YaraPlugin.Options(rules=root / "index.yar", recheck=0))
    plugin.setup()

    def rules(data: bytes) -> tuple[list[str], list[str]]:
        result = plugin.scan(make_payload(data), plugin.options)
        return [m["rule"] for m in result.data["matches"]], result.flags

    assert rules(b"alpha beta") == (["first"], [])
    (root / "sub" / "a.yar").write_text('rule second { strings: $b = "beta" condition: $b }\n')  # an included file
    assert rules(b"alpha beta") == (["second"], [])
    (root / "sub" / "a.yar").write_text("rule broken { condition: }\n")
    assert rules(b"alpha beta") == (["second"], ["yara:stale-rules"])  # the previous rules stay in use
    (ruleset,) = plugin._sets.values()
    assert f"{(root / 'sub' / 'a.yar').resolve()} line 1: syntax error" in (ruleset.stale or "")
    (root / "sub" / "a.yar").write_text('rule third { strings: $a = "alpha" condition: $a }\n')
    assert rules(b"alpha beta") == (["third"], [])


def test_directory_picks_up_new_files_and_recheck_interval(tmp_path: Path, make_payload) -> None:
    root = tmp_path / "rules"
    root.mkdir()
    (root / "a.yar").write_text("rule a { condition: true }\n")
    plugin = YaraPlugin(YaraPlugin.Options(rules=root, recheck=3600))
    plugin.setup()
    (root / "b.yara").write_text("rule b { condition: true }\n")
    assert [m["rule"] for m in plugin.scan(make_payload(b"x"), plugin.options).data["matches"]] == ["a"]
    now = plugin.scan(make_payload(b"x"), plugin.Options(rules=root, recheck=0)).data["matches"]
    assert [(m["namespace"], m["rule"]) for m in now] == [("a.yar", "a"), ("b.yara", "b")]


def test_compile_error_names_file_and_line(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "rules")
    (root / "apt" / "sub" / "broken.yar").write_text('rule ok { condition: true }\n\nrule broken {\n'
                                                     '  strings: $a = "x"\n  condition: $b\n}\n')
    with pytest.raises(RuleError) as raised:
        YaraPlugin(YaraPlugin.Options(rules=root, externals=CUSTOM)).setup()
    with pytest.raises(yara.SyntaxError) as own:  # YARA's own words for the file alone
        yara.compile(filepath=str(root / "apt" / "sub" / "broken.yar"))
    assert str(own.value) == f'{root / "apt/sub/broken.yar"}(6): undefined string "$b"'
    assert str(raised.value) == f'{root.resolve() / "apt/sub/broken.yar"} line 6: undefined string "$b"'
    # Without the user's external the set does not compile, and says where.
    (root / "apt" / "sub" / "broken.yar").unlink()
    with pytest.raises(RuleError, match=r"thor_custom\.yar line 1: undefined identifier \"score_min\""):
        YaraPlugin(YaraPlugin.Options(rules=root)).setup()


def test_include_error_in_an_included_file_names_the_real_file(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    (root / "inc").mkdir(parents=True)
    (root / "index.yar").write_text('include "inc/a.yar"\n')
    (root / "inc" / "a.yar").write_text('include "b.yar"\nrule a { condition: true }\n')
    (root / "inc" / "b.yar").write_text("rule b {\n condition: nosuch }\n")
    with pytest.raises(RuleError) as raised:
        YaraPlugin(YaraPlugin.Options(rules=root / "index.yar")).setup()
    assert str(raised.value) == f'{root.resolve() / "inc/b.yar"} line 2: undefined identifier "nosuch"'


def test_include_outside_the_rules_tree_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.yar"
    outside.write_text("rule secret { condition: true }\n")
    root = tmp_path / "rules"
    root.mkdir()
    (root / "index.yar").write_text('rule ok { condition: true }\ninclude "../secret.yar"\n')
    with pytest.raises(RuleError) as raised:
        YaraPlugin(YaraPlugin.Options(rules=root / "index.yar")).setup()
    assert str(raised.value) == (f"{(root / 'index.yar').resolve()} line 2: callback failed to provide include "
                                 f"resource: ../secret.yar (include '../secret.yar' leaves the rules tree "
                                 f"{root.resolve()})")
    (root / "index.yar").write_text(f'include "{outside}"\n')  # absolute paths too
    with pytest.raises(RuleError, match="leaves the rules tree"):
        YaraPlugin(YaraPlugin.Options(rules=root / "index.yar")).setup()


def test_builtin_externals_cannot_be_redeclared(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="externals filename are built in"):
        YaraPlugin(YaraPlugin.Options(externals={"filename": "x"})).setup()
    assert YaraPlugin.Options(externals="md5=,score=0,strict=TRUE,name=a b").externals == {
        "md5": "", "score": 0, "strict": True, "name": "a b"}


def test_yara_timeout_fires_below_the_plugin_time_limit(tmp_path: Path, make_payload) -> None:
    slow = tmp_path / "slow.yar"
    slow.write_text("rule slow { condition: for all i in (0..filesize) : "
                    "(for all j in (0..filesize) : (uint8(i) == uint8(j) or true)) }")
    plugin = YaraPlugin(YaraPlugin.Options(rules=slow, timeout=600))
    plugin.setup()
    set_call_deadline(time.monotonic() + 3.5)  # as the framework does around a call with a 3.5 s limit
    try:
        result = plugin.scan(make_payload(b"\x00" * 200_000), plugin.options)
    finally:
        set_call_deadline(None)
    assert (result.data, result.flags) == ({"matches": [], "timeout": 1}, ["limit:yara-time"])


def test_engine_gives_yara_less_than_the_plugin_time_limit(tmp_path: Path) -> None:
    """Through the framework's call (as both modes make it): with ``time_limit`` 4 s, YARA gets 1 s and
    stops first, so the run is a result with ``limit:yara-time``, not the framework's ``timeout`` error."""
    slow = tmp_path / "slow.yar"
    slow.write_text("rule slow { condition: filepath == \"/in/zeros.bin\" and for all i in (0..filesize) : "
                    "(for all j in (0..filesize) : (uint8(i) == uint8(j) or true)) }")
    env = {"STOQ_ARCHIVE": str(tmp_path / "archive"), "STOQ_DISPATCH_RULES": "none"}
    engine = Engine(load_settings(env=env, overrides={"workers": "yara"}, plugin_options={
        "yara": {"rules": str(slow), "timeout": "600", "time_limit": "4"}}))
    try:
        doc = engine.scan(b"\x00" * 200_000, "zeros.bin", {"path": "/in/zeros.bin"})
        other = engine.scan(b"\x00" * 200_000, "zeros.bin", {"path": "/elsewhere/zeros.bin"})
    finally:
        engine.close()
    # The root's source path is its filepath: another path ends the condition at once.
    assert other["results"][0]["workers"]["yara"] == {"matches": []} and other["results"][0]["flags"] == []
    validate(doc)
    (root,) = doc["results"]
    assert (doc["errors"], root["flags"], root["workers"]["yara"]) == (
        [], ["limit:yara-time"], {"matches": [], "timeout": 1})
