"""The results view (stoq/web/pages.py): pages rendered from scan documents, a real ``stoq serve``
process read over HTTP, and Debian's headless Chromium submitting a corpus zip through the form."""

from __future__ import annotations

import gzip
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

import browser
from helpers import CORPUS, make_zip, sha256

pytest.importorskip("fastapi", reason="the web extra: pip install 'stoq-analysis[web]'")

from stoq.web import pagemodel, pages, session  # noqa: E402

HOSTILE = "<script>alert(1)</script>.txt"  # a member name (a root's name loses what precedes its last /)
HOSTILE_ROOT = "<img src=x onerror=alert(1)>.txt"


def _payload(pid: str, parent: str | None, depth: int, name: str | None, data: bytes, **extra: Any) -> dict[str, Any]:
    import hashlib

    return {
        "payload_id": pid, "parent_id": parent, "depth": depth, "filename": name,
        "extracted_by": None if parent is None else "decompress", "meta": {}, "duplicate_of": None,
        "size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": sha256(data), "sha512": hashlib.sha512(data).hexdigest(), "mime": "text/plain",
        "workers": {}, "flags": [], **extra,
    }


def _document() -> dict[str, Any]:
    """A root zip, a child with a hostile name and a YARA hit, its duplicate, one error."""
    yara = {"matches": [{"rule": "lure<b>", "namespace": "default", "tags": [], "meta": {},
                         "strings": [{"identifier": "$a", "offset": 3, "data": "</pre><script>x()</script>"}]}]}
    results = [
        _payload("r", None, 0, "outer.zip", b"zip", mime="application/zip"),
        _payload("a", "r", 1, HOSTILE, b"text", workers={"yara": yara}, flags=["limit:depth"]),
        _payload("b", "r", 1, "copy\u202etxt.exe", b"text", duplicate_of="a"),
    ]
    return {"schema_version": "1.2", "scan_id": "s-1", "date": "2026-12-06T09:00:00.000001Z",
            "source": {"path": "/tmp/outer.zip", "meta": {"case": "<i>42</i>"}}, "payloads": 3, "results": results,
            "errors": [{"payload_id": "a", "plugin": "peinfo", "kind": "error", "message": "ValueError: <img src=x onerror=y()>"}]}


def _render(name: str, **context: Any) -> str:
    common = dict(ui="/ui", static_url="/ui/static/stoq.css", version="0", auth_mode="token", signed_in=True,
                  csrf="c", nav="")
    return pages.templates.get_template(name).render(**common, **context)


def test_scan_view_tree() -> None:
    view = pagemodel.page_tree(_document())
    assert [n.id for n in view.roots] == ["r"]
    assert [c.id for c in view.root.children] == ["a", "b"]
    assert view.by_id["b"].duplicate is view.by_id["a"]
    assert view.by_id["b"].path == "outer.zip > copy\\u202etxt.exe"
    assert [e["plugin"] for e in view.by_id["a"].errors] == ["peinfo"]
    assert (view.yara_count, view.flag_count, view.duplicate_count) == (1, 1, 1)
    assert view.by_id["a"].yara_rules == ["lure<b>"]


def test_everything_a_file_controls_is_text() -> None:
    doc = _document()
    view = pagemodel.page_tree(doc)
    scan = _render("scan.html", view=view, scan_id="s-1", inline_outputs=True)
    payload = _render("payload.html", scan_id="s-1", node=view.by_id["a"], ancestors=[view.root])
    for html in (scan, payload):
        assert "<script" not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
        assert "\u202e" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in scan
    assert "copy\\u202etxt.exe" in scan  # the bidi override shown, not obeyed
    assert "ValueError: &lt;img src=x onerror=y()&gt;" in scan
    assert "&lt;i&gt;42&lt;/i&gt;" in scan
    assert "&lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;" in payload  # in the YARA table and the JSON
    assert "&lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;" in scan  # the output shown under its tree node
    assert payload.count("lure&lt;b&gt;") == 2  # the hit's badge, and the rule in the plugin's JSON


def test_plugin_json() -> None:
    text, cut = pagemodel.plugin_json({"name": "a\u202eb\u200bc\n", "n": 1})
    assert (text, cut) == ('{\n  "name": "a\\u202eb\\u200bc\\n",\n  "n": 1\n}', False)
    text, cut = pagemodel.plugin_json({"big": "x" * pagemodel.MAX_JSON_CHARS})
    assert cut and len(text) == pagemodel.MAX_JSON_CHARS


def test_size_text() -> None:
    assert [pagemodel.size_text(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**40)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 TiB"]


def test_local_redirects_only() -> None:
    assert session.local("/ui/scans/x?a=1") == "/ui/scans/x?a=1"
    for target in ("//evil.example/ui/", "https://evil.example/", "/ui\\..", "/api/scans", ""):
        assert session.local(target) == "/ui/submit", target


# ----------------------------------------------------------------------------- a real stoq serve

RULE_NAME = "corpus_lorem_ipsum"
NEEDLE = b"Lorem ipsum dolor sit amet"
RULE = f'rule {RULE_NAME} {{ meta: description = "the corpus text" strings: $a = "{NEEDLE.decode()}" condition: $a }}\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, testplugins_site: Path) -> Iterator[browser.Server]:
    """``stoq serve`` with tokens (embedded, SQLite), a YARA rule file for the corpus's lorem text, and
    the test plugins (``napper`` makes a scan last long enough to be seen pending)."""
    home = tmp_path_factory.mktemp("serve")
    (home / "rules.yar").write_text(RULE)
    srv = browser.Server(home, env={"PYTHONPATH": str(testplugins_site)})
    srv.token = srv.stoq("tokens", "create", "analyst").stdout.strip()  # type: ignore[attr-defined]
    with srv:  # starts it (``__enter__``), stops it at the end
        yield srv


class Browser:
    """A ``requests`` session that reads pages as a browser would: cookies, CSRF field, same Origin."""

    def __init__(self, srv: browser.Server) -> None:
        self.srv, self.http = srv, requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.srv.url + path, timeout=30, allow_redirects=False, **kw)

    def csrf(self, path: str) -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)[1]  # type: ignore[index]

    def post(self, path: str, data: dict[str, Any], origin: str | None = None, **kw: Any) -> requests.Response:
        return self.http.post(self.srv.url + path, data=data, timeout=60, allow_redirects=False,
                              headers={"Origin": origin or self.srv.url}, **kw)

    def sign_in(self, token: str) -> requests.Response:
        return self.post("/ui/login", {"csrf": self.csrf("/ui/login"), "token": token, "next": "/ui/submit"})

    def submit(self, files: list[tuple[str, bytes]], **fields: str) -> requests.Response:
        data = {"csrf": self.csrf("/ui/submit"), **fields}
        return self.post("/ui/submit", data, files=[("file", (name, body)) for name, body in files])

    def finished(self, scan_id: str, timeout: float = 30) -> str:
        """The scan page once its tree is there."""
        deadline = time.monotonic() + timeout
        while True:
            page = self.get(f"/ui/scans/{scan_id}")
            assert page.status_code == 200, page.text
            if 'id="tree"' in page.text:
                return page.text
            assert time.monotonic() < deadline, page.text
            time.sleep(0.2)


def _location_id(response: requests.Response) -> str:
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/ui/scans/([0-9a-f-]{36})", response.headers["location"])
    assert match, response.headers["location"]
    return match[1]


def test_sessions_and_csrf(server: browser.Server) -> None:
    anon = Browser(server)
    gate = anon.get("/ui/search?yara=x")
    assert (gate.status_code, gate.headers["location"]) == (303, "/ui/login?next=%2Fui%2Fsearch%3Fyara%3Dx")
    for name, value in session.HEADERS.items():
        assert gate.headers[name] == value
    assert anon.get("/").status_code == 401  # outside /ui, the API's Bearer gate
    css = anon.get("/ui/static/stoq.css")
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert anon.get("/ui/static/..%2Fpages.py").status_code == 404

    wrong = anon.post("/ui/login", {"csrf": anon.csrf("/ui/login"), "token": "stoq_nope", "next": ""})
    assert wrong.status_code == 401 and "This token is not valid." in wrong.text
    forged = anon.post("/ui/login", {"csrf": "0" * 64, "token": server.token, "next": ""})  # type: ignore[attr-defined]
    assert forged.status_code == 403 and "stoq_session" not in forged.headers.get("set-cookie", "")
    elsewhere = anon.post("/ui/login", {"csrf": anon.csrf("/ui/login"), "token": server.token, "next": ""},  # type: ignore[attr-defined]
                          origin="http://evil.example")
    assert elsewhere.status_code == 403
    opaque = anon.post("/ui/login", {"csrf": anon.csrf("/ui/login"), "token": server.token, "next": ""},  # type: ignore[attr-defined]
                       origin="null")
    assert opaque.status_code == 403

    bob = server.stoq("tokens", "create", "bob").stdout.strip()
    user = Browser(server)
    signed = user.post("/ui/login", {"csrf": user.csrf("/ui/login"), "token": bob, "next": "//evil.example/"})
    assert (signed.status_code, signed.headers["location"]) == (303, "/ui/submit")
    cookie = [c for c in signed.headers["set-cookie"].split(", ") if c.startswith("stoq_session=")][0]
    assert cookie == f"stoq_session={bob}; HttpOnly; Path=/; SameSite=strict"
    assert user.get("/ui/submit").status_code == 200
    # a CSRF token is bound to its browser and session: another's is refused
    other = Browser(server)
    other.sign_in(server.token)  # type: ignore[attr-defined]
    refused = user.post("/ui/submit", {"csrf": other.csrf("/ui/submit")}, files=[("file", ("a.txt", b"a"))])
    assert refused.status_code == 403 and "The form had expired" in refused.text
    server.stoq("tokens", "revoke", "bob")  # revoking the token ends the session at once
    assert user.get("/ui/submit").headers["location"] == "/ui/login?next=%2Fui%2Fsubmit"
    out = other.post("/ui/logout", {"csrf": other.csrf("/ui/submit")})
    assert (out.status_code, out.headers["location"]) == (303, "/ui/login")
    assert other.get("/ui/submit").status_code == 303


def test_a_hostile_name_is_text_and_the_download_is_zipped(server: browser.Server, tmp_path: Path) -> None:
    import pyzipper

    user = Browser(server)
    user.sign_in(server.token)  # type: ignore[attr-defined]
    body = b"x" * 5 + NEEDLE + b"\n"
    scan_id = _location_id(user.submit([(HOSTILE_ROOT, body)], workers="yara",
                                       options=f"yara.rules={server.home / 'rules.yar'}", tlp="amber", meta="case=<b>7</b>"))
    html = user.finished(scan_id)
    assert "<img" not in html and "<b>" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;.txt") == 4  # the title, the heading, the source, the tree
    assert "&lt;b&gt;7&lt;/b&gt;" in html and ">amber<" in html
    doc = user.get(f"/ui/scans/{scan_id}/document.json").json()
    assert doc["source"]["meta"] == {"case": "<b>7</b>", "tlp": "amber"}
    (root,) = doc["results"]
    assert (root["filename"], root["sha256"]) == (HOSTILE_ROOT, sha256(body))
    page = user.get(f"/ui/scans/{scan_id}/payloads/{root['payload_id']}")
    assert page.status_code == 200 and "<img" not in page.text
    assert re.search(r"<td><code>\$a</code></td><td class=\"num\">5</td>", page.text)  # the hit's offset

    got = user.get(f"/ui/scans/{scan_id}/payloads/{root['payload_id']}/download")
    assert (got.status_code, got.headers["content-type"]) == (200, "application/zip")
    assert got.headers["content-disposition"] == f'attachment; filename="{sha256(body)}.zip"'
    (tmp_path / "d.zip").write_bytes(got.content)
    with pyzipper.AESZipFile(tmp_path / "d.zip") as archive:
        archive.setpassword(b"infected")
        assert archive.namelist() == [sha256(body)]
        assert archive.read(sha256(body)) == body
    assert user.get(f"/ui/scans/{scan_id}/payloads/nope/download").status_code == 404
    assert user.get("/ui/scans/nope").status_code == 404


def test_a_failed_scan_says_why_and_stops_reloading(server: browser.Server) -> None:
    user = Browser(server)
    user.sign_in(server.token)  # type: ignore[attr-defined]
    missing = server.home / "missing<i>.yar"
    scan_id = _location_id(user.submit([("x.txt", b"x")], workers="yara", options=f"yara.rules={missing}"))
    deadline = time.monotonic() + 30
    while 'class="status pending"' in (page := user.get(f"/ui/scans/{scan_id}")).text:
        assert 'http-equiv="refresh"' in page.text and time.monotonic() < deadline
        time.sleep(0.2)
    assert page.status_code == 200 and 'class="status failed"' in page.text and 'http-equiv="refresh"' not in page.text
    assert "missing&lt;i&gt;.yar" in page.text and "<i>" not in page.text
    gone = user.get(f"/ui/scans/{scan_id}/payloads/x")
    assert gone.status_code == 404 and f"There is no finished scan {scan_id}." in gone.text


def test_search_and_pages(server: browser.Server) -> None:
    user = Browser(server)
    user.sign_in(server.token)  # type: ignore[attr-defined]
    names = [f"page-{n:02d}.bin" for n in range(pages.PAGE_SIZE + 1)]
    made = user.submit([(name, name.encode()) for name in names], workers="none")
    assert made.status_code == 200
    ids = re.findall(r'href="/ui/scans/([0-9a-f-]{36})"', made.text)
    assert len(ids) == len(names)
    for scan_id in ids:
        user.finished(scan_id)
    docs = [user.get(f"/ui/scans/{scan_id}/document.json").json() for scan_id in ids]
    newest = [d["results"][0]["filename"] for d in sorted(docs, key=lambda d: (d["date"], d["scan_id"]), reverse=True)]
    assert sorted(newest) == names
    first = user.get("/ui/search?filename=page-*.bin")
    shown = re.findall(r'<td class="name"><a href="/ui/scans/[0-9a-f-]+">([^<]+)</a>', first.text)
    assert shown == newest[:pages.PAGE_SIZE]
    assert 'href="/ui/search?filename=page-%2A.bin&amp;page=2"' in first.text
    second = user.get("/ui/search?filename=page-*.bin&page=2")
    assert re.findall(r'<td class="name"><a href="/ui/scans/[0-9a-f-]+">([^<]+)</a>', second.text) == newest[pages.PAGE_SIZE:]
    assert 'rel="next"' not in second.text
    assert 'id="no-results"' in user.get("/ui/search?filename=page-*.bin&since=2000-01-01&until=2000-01-02").text
    bad = user.get("/ui/search?since=yesterday")
    assert bad.status_code == 400 and "neither an ISO 8601 date" in bad.text
    by_content = user.get(f"/ui/search?sha256={sha256(b'page-03.bin')}")
    assert re.findall(r'<td class="name"><a href="/ui/scans/[0-9a-f-]+">([^<]+)</a>', by_content.text) == ["page-03.bin"]


def _gzip_name(data: bytes) -> str:
    """The file name in a gzip header (RFC 1952: FNAME, after FEXTRA when there is one)."""
    flags, pos = data[3], 10
    if flags & 4:
        pos += 2 + int.from_bytes(data[10:12], "little")
    assert flags & 8
    return data[pos:data.index(b"\0", pos)].decode("latin-1")


@pytest.mark.skipif(browser.browser_missing() is not None, reason=str(browser.browser_missing()))
def test_browser_submits_a_corpus_zip_and_finds_the_yara_hit(server: browser.Server, tmp_path: Path) -> None:
    """Debian's Chromium: sign in, submit a zip of corpus files through the form, see the scan pending
    (a member makes ``napper`` sleep 2 s), wait for the tree (the page reloads itself), open a child,
    find the YARA hit."""
    from selenium.common.exceptions import NoAlertPresentException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text, gz = (CORPUS / "test.txt").read_bytes(), (CORPUS / "test.gz").read_bytes()
    members = {"test.txt": text, "nested/test.gz": gz, HOSTILE: b"just text\n", "copy-of-test.txt": text,
               "nap.txt": b"NAP\n"}
    (tmp_path / "corpus.zip").write_bytes(make_zip(members))
    driver = browser.chrome()
    try:
        driver.get(server.url + "/ui/submit")
        assert driver.current_url == server.url + "/ui/login?next=%2Fui%2Fsubmit"
        driver.find_element(By.ID, "token").send_keys(server.token)  # type: ignore[attr-defined]
        driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        WebDriverWait(driver, 10, 0.1).until(lambda d: d.current_url == server.url + "/ui/submit")
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "corpus.zip"))
        driver.find_element(By.ID, "workers").send_keys("yara,napper")
        driver.find_element(By.ID, "options").send_keys(f"yara.rules={server.home / 'rules.yar'}\nnapper.seconds=2")
        driver.find_element(By.ID, "submit").click()
        scan_page = re.compile(re.escape(server.url) + r"/ui/scans/[0-9a-f-]{36}")
        WebDriverWait(driver, 10, 0.1).until(lambda d: scan_page.fullmatch(d.current_url))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Scan pending"
        refresh = driver.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content")
        assert refresh == str(pages.REFRESH_SECONDS)
        try:
            WebDriverWait(driver, 60, 0.2).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tree, .status.failed"))
        except TimeoutException:
            pytest.fail(f"no tree after 60 s: {driver.current_url}\n{driver.page_source}\n{server.log.read_text()[-3000:]}")
        assert driver.find_elements(By.ID, "tree"), driver.find_element(By.TAG_NAME, "main").text
        assert driver.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]') == []

        names = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#tree a.name")]
        assert names == ["corpus.zip", "test.txt", "nested/test.gz", _gzip_name(gz), HOSTILE, "copy-of-test.txt", "nap.txt"]
        assert driver.find_elements(By.TAG_NAME, "script") == []
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text
        nodes = {n.find_element(By.CSS_SELECTOR, "a.name").text: n for n in driver.find_elements(By.CSS_SELECTOR, "#tree .node")}
        hits = {name: [b.text for b in node.find_elements(By.CSS_SELECTOR, ".badge.hit")] for name, node in nodes.items()}
        expected = {name: [RULE_NAME] if NEEDLE in data else [] for name, data in members.items()}
        expected |= {"corpus.zip": [], "copy-of-test.txt": [], _gzip_name(gz): [RULE_NAME] if NEEDLE in gzip.decompress(gz) else []}
        assert hits == expected  # the duplicate is not analysed again
        assert nodes["copy-of-test.txt"].find_element(By.CSS_SELECTOR, ".badge.dup").text == "duplicate of corpus.zip > test.txt"

        driver.find_element(By.LINK_TEXT, "test.txt").click()
        WebDriverWait(driver, 10, 0.1).until(lambda d: d.find_elements(By.ID, "yara"))
        yara = driver.find_element(By.ID, "yara")
        assert yara.find_element(By.CSS_SELECTOR, ".badge.hit").text == RULE_NAME
        assert "description: the corpus text" in yara.text
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in yara.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert rows == [["$a", str(text.index(NEEDLE)), NEEDLE.decode()]]
        assert driver.find_element(By.CSS_SELECTOR, "dl.facts").text.count(sha256(text)) == 1
        link = driver.find_element(By.ID, "download").get_attribute("href")
        assert link == driver.current_url + "/download"
    finally:
        driver.quit()


def test_no_auth_pages(tmp_path: Path) -> None:
    """``--no-auth`` (loopback): no sign-in, ``/`` leads to the pages, the CSRF check stays."""
    with browser.Server(tmp_path, "--no-auth") as srv:
        user = Browser(srv)
        home = user.get("/")
        assert (home.status_code, home.headers["location"]) == (303, "/ui/submit")
        assert user.get("/ui/login").headers["location"] == "/ui/submit"
        page = user.get("/ui/submit")
        assert page.status_code == 200 and "no authentication" in page.text and "Sign out" not in page.text
        forged = user.post("/ui/submit", {"csrf": "0" * 64, "workers": "none"}, files=[("file", ("a.txt", b"a"))])
        assert forged.status_code == 403
        scan_id = _location_id(user.submit([("a.txt", b"a")], workers="none"))
        assert '<a class="name" href="/ui/scans/' + scan_id in user.finished(scan_id)
