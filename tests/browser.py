"""A real ``stoq serve`` process and Debian's headless Chromium driven by Selenium, for the results view's
tests (tests/test_web_ui.py) and its screenshots (scripts/web-screenshots)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def browser_missing() -> str | None:
    """Why the browser cannot run here (naming the Debian packages), or None."""
    missing = [f"{path} (Debian: apt-get install {pkg})" for path, pkg in
               ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")) if not path.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'stoq-analysis[test]')")
    return "needs " + ", ".join(missing) if missing else None


def chrome(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium (Debian's, with its matching chromedriver: nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run its sandbox as root
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


class Server:
    """``stoq serve`` on a free loopback port, in embedded mode (SQLite and an archive under ``home``)."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = 0  # known once started
        self.url = ""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_") or k == "STOQ_TOOL_PATH"}
        self.env.update({
            "HOME": str(home / "home"), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
            "STOQ_ARCHIVE": str(home / "archive"), "STOQ_DATABASE_URL": f"sqlite:///{home / 'stoq.db'}",
        })
        self.env.update(env or {})
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "serve.log"

    def stoq(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs another ``stoq`` command with the server's environment (``token create``, say)."""
        return subprocess.run([stoq_command(), *args], env=self.env, capture_output=True, text=True, timeout=60,
                              cwd=self.home, check=True)

    def start(self, timeout: float = 20) -> Server:
        """Starts the server on a port it picks itself (``--port 0``: no race for a free port with
        other processes), and returns once it said where it listens."""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([stoq_command(), "serve", "--host", "127.0.0.1", "--port", "0", *self.args],
                                         env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            said = re.search(r"serving the API on http://127\.0\.0\.1:(\d+) ", self.log.read_text())
            if said:
                self.port = int(said[1])
                self.url = f"http://127.0.0.1:{self.port}"
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"stoq serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"stoq serve did not start in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stoq_command() -> str:
    """The ``stoq`` of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "stoq"
    return str(beside) if beside.exists() else (shutil.which("stoq") or "stoq")
