"""``stoq shell`` through a real terminal: a tmux pane, keys sent with ``send-keys`` (Tab included),
the screen read back with ``capture-pane``. Expected values come from pefile, yara-python, zipfile and
hashlib, computed here."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pefile
import pytest
import yara

from helpers import CORPUS

pytestmark = pytest.mark.tools("tmux")

PE = CORPUS / "test_xor.exe"
ZIP = CORPUS / "test.zip"
PROMPT = re.compile(r"^stoq( \S+)?>( |$)")  # tmux trims trailing spaces
WAIT = 60.0  # seconds to wait for the shell's answer before the test fails (a guard, not a measure)


class Term:
    """One ``stoq shell`` in a detached tmux session on a private server."""

    def __init__(self, tmp_path: Path, env: dict[str, str], name: str) -> None:
        self.sock = str(tmp_path / f"{name}.sock")
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g history-limit 100000\nset -g remain-on-exit on\n")
        self.env = env
        stoq = Path(sys.executable).parent / "stoq"
        self.tmux("-f", str(conf), "new-session", "-d", "-x", "250", "-y", "50", f"{stoq} shell; echo shell-exited-$?")
        try:
            self.wait(lambda screen: self.prompts(screen) == 1)
        except BaseException:
            self.close()
            raise

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], env=self.env, capture_output=True, text=True,
                              check=True, cwd=self.env["HOME"]).stdout

    def screen(self) -> list[str]:
        lines = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-").split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        return lines

    @staticmethod
    def prompts(screen: list[str]) -> int:
        return sum(1 for line in screen if PROMPT.match(line))

    def wait(self, ready) -> list[str]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + WAIT
        while True:
            screen = self.screen()
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                state = self.tmux("display-message", "-p", "dead=#{pane_dead} pid=#{pane_pid}")
                pytest.fail(f"the shell did not answer ({state.strip()}); screen:\n" + "\n".join(screen[-40:]))
            time.sleep(0.05)

    def exited(self, screen: list[str]) -> int | None:
        """The shell's exit code, once it has ended (the pane's command prints it)."""
        ended = [line for line in screen if line.startswith("shell-exited-")]
        return int(ended[0].removeprefix("shell-exited-")) if ended else None

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)

    def key(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def line(self, expected: str) -> None:
        """Waits until the line being edited (the last prompt line) reads ``expected``."""
        self.wait(lambda screen: bool(screen) and PROMPT.match(screen[-1]) is not None
                  and PROMPT.sub("", screen[-1]).rstrip() == expected)

    def enter(self) -> list[str]:
        """Presses Enter; returns the output lines of the command, once the next prompt is shown."""
        before = self.prompts(self.screen())
        self.key("Enter")
        screen = self.wait(lambda s: self.prompts(s) > before and PROMPT.match(s[-1]) is not None)
        at = [i for i, line in enumerate(screen) if PROMPT.match(line)]
        return screen[at[-2] + 1:at[-1]]

    def run(self, command: str) -> list[str]:
        self.type(command)
        self.line(command)
        return self.enter()

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], env=self.env, capture_output=True)


@pytest.fixture()
def env(stoq_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    full = dict(stoq_env, XDG_STATE_HOME=str(tmp_path / "state"), TERM="xterm-256color")
    full.pop("NO_COLOR", None)
    full.pop("TMUX", None)
    Path(full["HOME"]).mkdir(parents=True, exist_ok=True)
    return full


def test_an_analyst_session(env: dict[str, str], tmp_path: Path) -> None:
    rules = tmp_path / "mine.yar"
    rules.write_text('rule has_mz { strings: $mz = "MZ" condition: $mz at 0 }\nrule never { condition: false }\n')
    matched = [m.rule for m in yara.compile(str(rules)).match(data=PE.read_bytes())]
    imphash = pefile.PE(data=PE.read_bytes()).get_imphash()
    assert matched == ["has_mz"] and len(imphash) == 32
    with zipfile.ZipFile(ZIP) as z:
        members = {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
    term = Term(tmp_path, env, "one")
    try:
        banner = term.screen()
        assert any("stoq shell 0.1.0" in line for line in banner)

        term.type("rea")
        term.key("Tab")  # completes the command
        term.line("read")
        term.type(f"{PE.parent}/test_x")
        term.key("Tab")  # completes the path
        term.line(f"read {PE}")
        out = term.enter()
        assert f"sha256       {hashlib.sha256(PE.read_bytes()).hexdigest()}" in out
        assert PROMPT.match(term.screen()[-1]).group(0).rstrip() == "stoq test_xor.exe>"  # type: ignore[union-attr]

        assert term.run(f"set yara.rules {rules}") == [f"yara.rules = {rules}"]
        term.type("run yar")
        term.key("Tab")  # completes the plugin
        term.line("run yara")
        out = term.enter()
        assert [line.split("rule: ")[1] for line in out if line.startswith("    - rule: ")] == matched
        out = term.run("run peinfo")
        assert out[0] == "peinfo:" and f"  imphash: {imphash}" in out

        # a mistyped command: one line, and the shell goes on
        assert term.run("raed foo") == ["error: unknown command 'raed' (did you mean 'read'?); `help` lists them"]
        assert term.run("run nosuch") == ["error: no plugin 'nosuch' is installed (see `list`)"]

        term.run(f"read {ZIP}")
        out = term.run("scan")
        assert out[0].startswith("scan ") and f"{len(members) + 1} payload(s)" in out[0]
        listed = term.run("children")
        names = [line.split()[1] for line in listed]
        assert sorted(names) == sorted(members)
        last = len(names) - 1
        assert term.run(f"cd {last}") == [f"test.zip > {last}:{names[last]}"]
        assert PROMPT.match(term.screen()[-1]).group(0).rstrip() == f"stoq test.zip/{last}>"  # type: ignore[union-attr]
        saved = tmp_path / "member.out"
        out = term.run(f"save {saved}")
        expected = hashlib.sha256(members[names[last]]).hexdigest()
        assert out == [f"saved test.zip > {last}:{names[last]} ({len(members[names[last]])} B, sha256 {expected}) to {saved}"]
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == expected
        assert term.run(f"save {saved}") == [f"error: {saved} exists: not overwritten"]
        assert term.run("cd ..") == ["test.zip"]
        term.type("exit")
        term.line("exit")
        term.key("Enter")
        assert term.exited(term.wait(lambda screen: term.exited(screen) is not None)) == 0
    finally:
        term.close()

    # the second session remembers the first one's lines
    history = tmp_path / "state" / "stoq" / "shell_history"
    assert history.is_file()
    term = Term(tmp_path, env, "two")
    try:
        shown = [re.sub(r"^\s*\d+  ", "", line) for line in term.run("history")]
        assert shown[:3] == ["read " + str(PE), f"set yara.rules {rules}", "run yara"]
        assert shown[-2:] == ["exit", "history"]
        term.key("Up")  # the line editor recalls the last line typed
        term.line("history")
        term.key("C-c")  # Ctrl-C at the prompt drops the line; the shell goes on
        term.wait(lambda screen: PROMPT.match(screen[-1]) is not None and PROMPT.sub("", screen[-1]) == "")
        assert term.run("cd ..") == ["error: no payload: `read PATH` first"]
    finally:
        term.close()


def test_no_colour_with_no_color(env: dict[str, str], tmp_path: Path) -> None:
    coloured = Term(tmp_path, env, "colour")
    try:
        assert "\x1b[" in coloured.tmux("capture-pane", "-p", "-e")  # the banner and the prompt
    finally:
        coloured.close()
    plain = Term(tmp_path, dict(env, NO_COLOR="1"), "plain")
    try:
        plain.run("raed")
        assert not re.search(r"\x1b\[[0-9;]*[1-9][0-9;]*m", plain.tmux("capture-pane", "-p", "-e"))
    finally:
        plain.close()

