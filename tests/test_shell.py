"""``stoq shell``'s session and commands, called as functions (the terminal itself: test_shell_terminal.py).

Expected values come from the libraries' own answers (pefile's imphash, yara-python's matches,
zipfile's members, hashlib), from ``hexdump -C``, or are written out by hand."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import magic
import pefile
import pytest
import yara

from helpers import CORPUS, make_zip
from stoq.config import Settings
from stoq.shell import render
from stoq.shell.commands import Context, complete, execute
from stoq.shell.render import Palette
from stoq.shell.session import Session, ShellError

PE = CORPUS / "test_xor.exe"  # a PE with imports: a non-empty imphash
RULE = 'rule has_mz { strings: $mz = "MZ" condition: $mz at 0 }\nrule never { condition: false }\n'


@pytest.fixture()
def session(tmp_path: Path) -> Session:
    s = Session(Settings(archive=str(tmp_path / "archive"), database_url=f"sqlite:///{tmp_path / 'db'}"))
    yield s
    s.close()


def run(ctx: Context, line: str) -> list[str]:
    out, error = execute(ctx, line)
    assert error is None, error
    return out


def test_read_and_payload_facts_are_the_files(session: Session) -> None:
    data = PE.read_bytes()
    node = session.read(str(PE))
    assert node.facts == {"size": len(data), "md5": hashlib.md5(data).hexdigest(),
                          "sha1": hashlib.sha1(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
                          "sha512": hashlib.sha512(data).hexdigest(),
                          "mime": "application/vnd.microsoft.portable-executable"}
    lines = run(Context(session), "payload")
    assert f"sha256       {hashlib.sha256(data).hexdigest()}" in lines
    assert "size         13824 B" in lines


def test_run_peinfo_gives_pefiles_imphash(session: Session) -> None:
    data = PE.read_bytes()
    expected = pefile.PE(data=data).get_imphash()
    assert len(expected) == 32
    session.read(str(PE))
    node, output = session.run("peinfo")
    assert output["imphash"] == expected
    assert node.outputs["peinfo"]["imphash"] == expected
    lines = run(Context(session), "results peinfo")
    assert f"  imphash: {expected}" in lines


def test_set_yara_rules_then_run_matches_as_yara_python(session: Session, tmp_path: Path) -> None:
    rules = tmp_path / "mine.yar"
    rules.write_text(RULE)
    expected = [m.rule for m in yara.compile(str(rules)).match(data=PE.read_bytes())]
    assert expected == ["has_mz"]
    ctx = Context(session)
    assert run(ctx, f"set yara.rules {rules}") == [f"yara.rules = {rules}"]
    run(ctx, f"read {PE}")
    out = run(ctx, "run yara")
    assert [m["rule"] for m in session.node().outputs["yara"]["matches"]] == expected
    assert "    - rule: has_mz" in out


def test_set_refuses_what_the_options_model_refuses(session: Session) -> None:
    with pytest.raises(ShellError, match=r"option yara.timeout='soon': Input should be a valid integer"):
        session.set_option("yara.timeout", "soon")
    with pytest.raises(ShellError, match=r"plugin 'yara' has no option 'timout' \(did you mean 'timeout'\?\)"):
        session.set_option("yara.timout", "3")
    with pytest.raises(ShellError, match=r"no plugin 'yarra' is installed \(did you mean 'yara'\?\)"):
        session.set_option("yarra.timeout", "3")
    with pytest.raises(ShellError, match="expected PLUGIN.OPTION"):
        session.set_option("yara", "3")
    assert session.set_option("yara.max_strings", "7") == 7
    _, options = session.usage("yara")
    assert {o.name: (o.default, o.value) for o in options}["max_strings"] == (32, 7)
    lines = run(Context(session), "usage yara")
    assert "    max_strings  integer, default 32  now 7" in lines


def test_scan_children_cd_and_save(session: Session, tmp_path: Path) -> None:
    members = {"a.txt": b"first member\n", "dir/b.bin": bytes(range(256)) * 4, "c.txt": b"third\n"}
    archive = make_zip(members)
    (tmp_path / "in.zip").write_bytes(archive)
    ctx = Context(session)
    run(ctx, f"read {tmp_path / 'in.zip'}")
    table = run(ctx, "scan")
    assert table[0].startswith("scan ") and table[0].endswith(f"4 payload(s)  {tmp_path / 'in.zip'}")
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        expected = [(i.filename, hashlib.sha256(z.read(i)).hexdigest()) for i in z.infolist()]
    children = session.node().children
    assert [(c.filename, c.facts["sha256"]) for c in children] == expected
    assert [c.extracted_by for c in children] == ["decompress"] * 3
    listing = run(ctx, "children")
    mime = magic.from_buffer(members["dir/b.bin"], mime=True)
    assert listing[1] == f"    1  dir/b.bin  {mime}  1024 B  sha256:{expected[1][1][:16]}  by decompress  children:0"

    assert run(ctx, "cd 1") == ["in.zip > 1:dir/b.bin"]
    saved = tmp_path / "out.bin"
    run(ctx, f"save {saved}")
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == expected[1][1]
    out, error = execute(ctx, f"save {saved}")
    assert (out, error) == ([], f"{saved} exists: not overwritten")
    assert run(ctx, "cd ..") == ["in.zip"]
    run(ctx, f"save {tmp_path / 'c.txt'} 2")  # a child of the current payload, by number
    assert (tmp_path / "c.txt").read_bytes() == members["c.txt"]
    assert execute(ctx, "cd ..") == ([], "already at the file read (the root)")
    assert execute(ctx, "cd 3") == ([], "no child 3: this payload has 3 (0 to 2)")


def test_save_refuses_a_symbolic_link(session: Session, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    (tmp_path / "link").symlink_to(target)
    session.read(str(PE))
    with pytest.raises(ShellError, match="exists: not overwritten"):
        session.save(str(tmp_path / "link"))
    assert target.read_bytes() == b"keep me"


def test_run_extractor_children_replace_its_earlier_ones(session: Session, tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(make_zip({"one": b"1", "two": b"22"}))
    session.read(str(tmp_path / "x.zip"))
    session.run("decompress")
    session.run("decompress")
    assert [c.filename for c in session.node().children] == ["one", "two"]


def test_read_respects_max_file_bytes(tmp_path: Path) -> None:
    session = Session(Settings(archive=str(tmp_path / "a"), max_file_bytes=100))
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(ShellError, match=r"is larger than max_file_bytes \(100 bytes\): not read"):
        session.read(str(big))
    (tmp_path / "small").write_bytes(b"x" * 100)
    assert session.read(str(tmp_path / "small")).facts["size"] == 100


def test_mistakes_and_plugin_errors_are_one_line(session: Session, tmp_path: Path) -> None:
    ctx = Context(session)
    assert execute(ctx, "raed x") == ([], "unknown command 'raed' (did you mean 'read'?); `help` lists them")
    assert execute(ctx, "run") == ([], "usage: run PLUGIN")
    assert execute(ctx, "hexdump") == ([], "no payload: `read PATH` first")
    assert execute(ctx, 'read "unclosed') == ([], "cannot parse the line: No closing quotation")
    assert execute(ctx, "read /nonexistent/x") == ([], "cannot read /nonexistent/x: No such file or directory")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 40)  # a gzip header, then no valid deflate block
    run(ctx, f"read {broken}")
    out, error = execute(ctx, "run decompress")
    assert out == [] and error is not None
    assert error.startswith("decompress failed (error): error: Error -3 while decompressing data") and "\n" not in error
    assert session.node().errors[0]["plugin"] == "decompress"
    assert execute(ctx, "run jsonl")[1] == ("'jsonl' is a connector: only worker, carver, extractor, decoder, "
                                            "reader plugins run on a payload")
    assert execute(ctx, "exit") == ([], None) and ctx.done


def test_file_controlled_text_is_escaped(session: Session, tmp_path: Path) -> None:
    hostile = "\x1b[31mred\x1b]0;title\x07\nfake: line\u202e"
    (tmp_path / "h.zip").write_bytes(make_zip({hostile: b"\x1b[2J" + b"payload \x1b[31m text"}))
    ctx = Context(session, Palette(True))  # colour on: the only escape codes are the palette's
    run(ctx, f"read {tmp_path / 'h.zip'}")
    out = run(ctx, "scan") + run(ctx, "children") + run(ctx, "cd 0") + run(ctx, "strings") + run(ctx, "hexdump")
    out += run(ctx, "results") + render.pretty({hostile: [hostile, {"k": hostile}]}, Palette(False))
    text = "\n".join(out)
    for raw in ("\x07", "\u202e", "\x1b[2J", "\x1b]0", "\x1b[31mred"):
        assert raw not in text
    assert "\\x1b[31mred\\x1b]0;title\\x07\\nfake: line\\u202e" in text
    assert all("\n" not in line for line in out)


@pytest.mark.tools("hexdump")
def test_hexdump_is_hexdump_c(session: Session) -> None:
    session.read(str(PE))
    for offset, length in ((0, 256), (0x3c, 37), (13800, 100)):
        reference = subprocess.run(["hexdump", "-C", "-v", "-s", str(offset), "-n", str(length), str(PE)],
                                   capture_output=True, text=True, check=True).stdout.splitlines()[:-1]
        assert render.hexdump(session.node().content, offset, length) == reference
    capped = render.hexdump(bytes(render.HEXDUMP_MAX * 2), 0, 10**9)
    assert len(capped) == render.HEXDUMP_MAX // 16 + 1
    assert capped[-1] == f"(cut at {render.HEXDUMP_MAX} bytes: `hexdump {render.HEXDUMP_MAX:#x}` goes on)"
    assert render.hexdump(b"abc", 5, 16) == ["offset 0x5 is past the end (3 bytes)"]


def test_strings_ascii_and_utf16() -> None:
    data = b"\x00\x01abc\x00hello world\x00\xff" + "wide text".encode("utf-16-le") + b"\x00\x00tab\\back\x00"
    assert render.strings(data) == ["00000006   hello world", "00000013 u wide text", "00000027   tab\\\\back"]
    assert render.strings(data, 3)[0] == "00000002   abc"
    many = b"\x00".join([b"word"] * (render.STRINGS_MAX + 5))
    listed = render.strings(many)
    assert len(listed) == render.STRINGS_MAX + 1 and listed[-1] == f"(cut at {render.STRINGS_MAX} strings)"


def test_completion(session: Session, tmp_path: Path) -> None:
    assert complete(session, "rea") == ["read "]
    assert complete(session, "re") == ["read ", "results "]
    assert complete(session, "run pei") == ["peinfo"]
    assert complete(session, "usage ya") == ["yara"]
    assert complete(session, "set yara.ti") == ["yara.timeout", "yara.time_limit"]
    (tmp_path / "sample.exe").write_bytes(b"MZ")
    (tmp_path / "samples").mkdir()
    assert complete(session, f"read {tmp_path}/sam") == [f"{tmp_path}/sample.exe", f"{tmp_path}/samples/"]
    (tmp_path / "z.zip").write_bytes(make_zip({"a": b"1", "b": b"2"}))
    session.read(str(tmp_path / "z.zip"))
    session.run("decompress")
    assert complete(session, "cd ") == ["..", "/", "0", "1"]


def test_help_lists_every_command(session: Session) -> None:
    lines = run(Context(session), "help")
    shown = [line.split()[0] for line in lines]
    assert shown == ["list", "load", "usage", "set", "read", "run", "scan", "results", "payload", "children", "cd",
                     "save", "hexdump", "strings", "history", "help", "exit"]
    assert run(Context(session), "help cd") == ["cd N|..|/", "  step into child N, back to the parent, or to the file read"]


def test_palette_off_without_a_terminal_or_with_no_color(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Palette.for_stream(Tty(), {"TERM": "xterm"}).enabled
    assert not Palette.for_stream(Tty(), {"TERM": "xterm", "NO_COLOR": "1"}).enabled
    assert not Palette.for_stream(Tty(), {"TERM": "dumb"}).enabled
    assert not Palette.for_stream(io.StringIO(), {"TERM": "xterm"}).enabled
    assert Palette(False).paint("error", "x") == "x" and Palette(True).paint("error", "x") == "\x1b[31mx\x1b[0m"


def test_without_a_terminal_lines_come_from_stdin(stoq_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "stoq"), "shell"], input=f"read {PE}\nrun peinfo\nnope\n".encode(),
                          capture_output=True, cwd=tmp_path, env=stoq_env, timeout=120)
    assert proc.returncode == 1
    assert f"  imphash: {pefile.PE(data=PE.read_bytes()).get_imphash()}" in proc.stdout.decode().splitlines()
    assert proc.stderr.decode() == "error: unknown command 'nope'; `help` lists them\n"


def test_a_bad_configuration_is_said_before_the_shell_starts(stoq_env: dict[str, str], tmp_path: Path) -> None:
    stoq = str(Path(sys.executable).parent / "stoq")
    proc = subprocess.run([stoq, "shell", "--workers", "yarra"], input=b"", capture_output=True, cwd=tmp_path,
                          env=stoq_env, timeout=120)
    assert (proc.returncode, proc.stderr) == (4, b"stoq: unknown plugin 'yarra' (see `stoq list`)\n")
    proc = subprocess.run([stoq, "shell", "-o", "yara.timeout=soon"], input=b"", capture_output=True, cwd=tmp_path,
                          env=stoq_env, timeout=120)
    assert proc.returncode == 4 and proc.stderr.startswith(b"stoq: option yara.timeout='soon'"), proc.stderr


def test_the_prompt_names_the_payload_escaped(session: Session, tmp_path: Path) -> None:
    from stoq.shell.repl import prompt_text

    assert prompt_text(session) == "stoq> "
    hostile = tmp_path / "a\x1b]0;x\x07\u202e.zip"
    hostile.write_bytes(make_zip({"one": b"1", "two": b"2"}))
    session.read(str(hostile))
    assert prompt_text(session) == "stoq a\\x1b]0;x\\x07\\u202e.zip> "
    session.run("decompress")
    session.cd("1")
    assert prompt_text(session) == "stoq a\\x1b]0;x\\x07\\u202e.zip/1> "
    long = tmp_path / ("n" * 40)
    long.write_bytes(b"x")
    session.read(str(long))
    assert prompt_text(session) == "stoq " + "n" * 29 + "...> "


def test_history_command_lists_the_lines_typed(session: Session) -> None:
    ctx = Context(session, history=["read x", "scan\x1b[2J"])
    assert run(ctx, "history") == ["    1  read x", "    2  scan\\x1b[2J"]


def test_load_says_a_setup_failure_at_once(session: Session, tmp_path: Path) -> None:
    ctx = Context(session)
    out = run(ctx, "load yara")
    assert out[0] == "yara is ready" and out[1].startswith("yara (worker, version ")
    run(ctx, f"set yara.rules {tmp_path / 'missing.yar'}")
    assert execute(ctx, "load yara") == ([], f"plugin 'yara' cannot start: setup failed: option "
                                             f"yara.rules={tmp_path / 'missing.yar'}: No such file or directory")
    run(ctx, f"read {PE}")
    assert execute(ctx, "run yara")[1] == (f"yara failed (error): setup failed: option yara.rules="
                                           f"{tmp_path / 'missing.yar'}: No such file or directory")


def test_list_is_the_registry_by_category(session: Session) -> None:
    from stoq.registry import Registry

    entries = Registry.discover().entries
    lines = run(Context(session), "list")
    shown: dict[str, list[str]] = {}
    category = ""
    for line in lines:
        if not line.startswith(" "):
            category = line.rstrip(":")
        else:
            shown.setdefault(category, []).append(line.split()[0])
    expected: dict[str, list[str]] = {}
    for name, entry in entries.items():  # a plugin that fails to load is listed apart
        expected.setdefault(entry.category if entry.cls is not None else "failed to load", []).append(name)
    assert {c: sorted(n) for c, n in expected.items()} == shown
    assert list(shown)[:2] == ["worker", "carver"]
