"""``stoq submit`` against a real cluster, as a user meets it: names that are not UTF-8, refusals with
``--no-wait``, the progress bar, an interrupted wait. A real ``celery -A stoq worker``, Redis and
PostgreSQL (run under the services lock)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import CORPUS, validate
from test_cluster import BIN, Cluster, running_cluster

DB = "stoq_cluster_cli"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, testplugins_site: Path) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory.mktemp("cluster-cli"), testplugins_site, (10, 11), DB)


def odd_tree(top: Path) -> Path:
    """Three files, the middle one named with bytes that are not UTF-8."""
    top.mkdir()
    (top / "a.txt").write_bytes(b"first\n")
    with open(os.path.join(os.fsencode(top), b"m-\xff\xfe-odd.txt"), "wb") as handle:
        handle.write(b"a name that is not UTF-8\n")
    (top / "z.txt").write_bytes(b"last\n")
    return top


def results(cluster: Cluster, scan_id: str, patience: float = 60) -> dict[str, Any]:
    """The stored document of ``scan_id``, once the workers have stored it."""
    deadline = time.monotonic() + patience
    while (got := cluster.stoq("results", scan_id, "--format", "jsonl")).returncode != 0:
        assert time.monotonic() < deadline, got.stderr
        time.sleep(0.2)
    doc: dict[str, Any] = json.loads(got.stdout)
    return doc


def test_a_name_that_is_not_utf8_is_submitted_as_scan_records_it(cluster: Cluster, tmp_path: Path) -> None:
    top = odd_tree(tmp_path / "in")
    odd = f"{top}/m-\\xff\\xfe-odd.txt"  # the text rule (docs/results.md): each bad byte as \xNN
    got = cluster.stoq("submit", str(top), "--recursive")
    assert got.returncode == 0, got.stderr
    docs = [json.loads(line) for line in got.stdout.splitlines()]
    for doc in docs:
        validate(doc)
    assert [d["source"]["path"] for d in docs] == [f"{top}/a.txt", odd, f"{top}/z.txt"]
    assert docs[1]["results"][0]["filename"] == "m-\\xff\\xfe-odd.txt"
    embedded = subprocess.run([str(BIN / "stoq"), "scan", "in", "--recursive", "--no-store"], cwd=tmp_path,
                              env={k: v for k, v in cluster.env.items() if k != "STOQ_BROKER_URL"},
                              capture_output=True, timeout=300)
    assert embedded.returncode == 0, embedded.stderr
    scanned = [json.loads(line) for line in embedded.stdout.splitlines()]
    assert [(d["source"], d["results"][0]["filename"]) for d in scanned] == \
        [(d["source"], d["results"][0]["filename"]) for d in docs]
    sent = cluster.stoq("submit", str(top), "--recursive", "--no-wait")
    assert sent.returncode == 0, sent.stderr
    ids = sent.stdout.decode().split()
    assert len(ids) == 3
    assert results(cluster, ids[1])["source"]["path"] == odd


def test_a_refused_no_wait_submission_names_its_files_and_exits_4(cluster: Cluster, tmp_path: Path) -> None:
    """A rule file the workers cannot find: the publisher refuses; ``--no-wait`` learns it too, prints
    no id for a scan that will never be stored, and the worker's log names the scans."""
    sample = CORPUS / "test.txt"
    got = cluster.stoq("submit", str(sample), "--no-wait", "--workers", "yara", "-o", f"yara.rules={tmp_path}/nowhere.yar",
                       timeout=120)
    assert got.returncode == 4, got.stderr
    assert got.stdout == b""
    err = got.stderr.decode()
    found = re.fullmatch(rf"stoq: the cluster refused scan (\S+) \({re.escape(str(sample))}\): .*plugin 'yara' cannot "
                         r"start.*\n", err)
    assert found, err
    scan_id = found.group(1)
    deadline = time.monotonic() + 30
    while scan_id not in cluster.log.read_text():  # the log line is written as the refusal is sent
        assert time.monotonic() < deadline, "the worker's log does not name the refused scan"
        time.sleep(0.1)
    (line,) = [line for line in cluster.log.read_text().splitlines() if scan_id in line]
    assert "refusing scan(s)" in line
    never = cluster.stoq("results", scan_id)  # the ledger knows it: failed, refused, never republished
    assert never.returncode == 9, never.stderr
    assert json.loads(never.stdout)["error"].startswith("refused: ")


def test_the_progress_bar_counts_each_file_once(cluster: Cluster, tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_bytes(f"file {i}\n".encode())
    got = cluster.stoq("submit", *(str(tmp_path / f"f{i}.txt") for i in range(3)), "--progress", TERM="dumb")
    assert got.returncode == 0, got.stderr
    bar = got.stderr.decode()
    assert "3/3" in bar and "/6" not in bar, bar


def wait_idle(cluster: Cluster, timeout: float = 60) -> None:
    """Until the worker runs no task: work left by an earlier test would hold one of its two pool
    processes, and a quick file's tasks would then queue behind a slow file's nap. Asked through the
    `celery` command, not a Celery app in this process: a kombu connection left in the test process
    hangs the forks of the in-process tests that come later (kombu closes it after fork)."""
    deadline = time.monotonic() + timeout
    while True:
        got = subprocess.run([str(BIN / "celery"), "-A", "stoq", "inspect", "active", "--json", "-t", "2"],
                             env=cluster.env, cwd=cluster.work, capture_output=True)
        active = json.loads(got.stdout or b"{}") if got.returncode == 0 else {}
        if active and not any(active.values()):
            return
        assert time.monotonic() < deadline, (got.stdout, got.stderr)
        time.sleep(0.2)


#: Seconds the slow file naps: long enough for the quick file's document to come first even when
#: its tasks wait a few seconds for a pool process.
NAP = 12


def test_an_interrupted_wait_names_the_scans_still_running(cluster: Cluster, tmp_path: Path) -> None:
    wait_idle(cluster)
    (tmp_path / "a.txt").write_bytes(b"quick\n")
    (tmp_path / "b.txt").write_bytes(b"NAP for a few seconds\n")
    proc = subprocess.Popen([str(BIN / "stoq"), "submit", "a.txt", "b.txt", "--workers", "napper",
                             "-o", f"napper.seconds={NAP}"], cwd=tmp_path, env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["source"]["path"] == str(tmp_path / "a.txt")
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (rest, err)
    assert rest == b""
    lines = err.decode().splitlines()
    assert lines[0].startswith("stoq: interrupted: 1 scan(s) sent and not printed go on in the cluster"), lines
    (listed,) = lines[1:]
    scan_id, path = listed.split()[1:]
    assert path == str(tmp_path / "b.txt")
    doc = results(cluster, scan_id)
    assert doc["source"]["path"] == path and doc["results"][0]["workers"]["napper"] == {"napped": float(NAP)}


def client_maxrss(cluster: Cluster, *args: str, **extra: str) -> int:
    """Peak resident bytes of one ``stoq ARGS`` run: its wrapper's only child, so the wrapper's
    RUSAGE_CHILDREN is the client's own (the workers are not its children)."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    got = subprocess.run([str(BIN / "python"), "-c", wrapper, str(BIN / "stoq"), *args], env=cluster.env | extra,
                         cwd=cluster.work, capture_output=True, timeout=600)
    maxrss_kib, code = got.stdout.split()[-2:]
    assert code == b"0", got.stderr
    return int(maxrss_kib) * 1024


def test_the_client_holds_a_large_input_once(cluster: Cluster, tmp_path: Path) -> None:
    """An input exactly at ``max_file_bytes``, submitted twice (the second time it is in the archive
    already, and compared with what is there): the client's peak memory grows by one copy of it, not
    two. The bound leaves half a copy of margin."""
    size = 256 << 20
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    with open(big, "wb") as handle:
        handle.truncate(size)  # zeros; the pages are real once read
    small.write_bytes(b"x")
    limit = {"STOQ_MAX_FILE_BYTES": str(size)}
    base = client_maxrss(cluster, "submit", str(small), "--no-wait", **limit)
    first = client_maxrss(cluster, "submit", str(big), "--no-wait", **limit)
    again = client_maxrss(cluster, "submit", str(big), "--no-wait", **limit)
    assert first - base < 1.5 * size, (base, first)
    assert again - base < 1.5 * size, (base, again)


def test_a_closed_output_names_the_scans_not_printed(cluster: Cluster, tmp_path: Path) -> None:
    names = [tmp_path / f"f{i}.txt" for i in range(3)]
    for i, path in enumerate(names):
        path.write_bytes(f"file {i}\n".encode())
    proc = subprocess.Popen([str(BIN / "stoq"), "submit", *map(str, names)], cwd=tmp_path,
                            env=cluster.env | {"PYTHONUNBUFFERED": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first document
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    lines = err.splitlines()
    assert "Traceback" not in err and lines[0].startswith("stoq: output closed: "), err
    listed = [line.split() for line in lines[1:]]
    assert [path for _, _, path in listed] == [str(p) for p in names]  # each document is flushed as written
    for _, scan_id, path in listed:  # stored by the workers all the same
        assert results(cluster, scan_id)["source"]["path"] == path
