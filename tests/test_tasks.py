"""The Celery adapter on real services: a real `celery -A stoq worker` process, Redis as broker and
result backend, payloads passed by reference through a shared directory archive. A plugin task reads
its references from a wave's hash in Redis and writes its answers there."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import orjson
import pefile
import pytest
import requests
import redis
import yara
from celery import Celery

from helpers import BENCH_RULES, CORPUS, amqp_url, redis_url
from tcpgate import free_port
from stoq.archive import DirectoryArchive
from stoq.tasks import state as st
from stoq.tasks.join import describe_refs

BROKER = redis_url(14)
BACKEND = redis_url(15)


def stoq_env(work: Path, broker: str = BROKER) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update(STOQ_BROKER_URL=broker, STOQ_RESULT_BACKEND=BACKEND, STOQ_ARCHIVE=str(work / "archive"),
               STOQ_ARCHIVER="directory", STOQ_YARA__RULES=str(BENCH_RULES), HOME=str(work),
               STOQ_DATABASE_URL=f"sqlite:///{work / 'unused.db'}")
    return env


def start_worker(work: Path, queues: list[str], *extra: str,
                 broker: str = BROKER) -> tuple[subprocess.Popen[bytes], Celery, Path]:
    """A real `celery -A stoq worker` (with `-Q` when queues are given) and a client, once it answers."""
    archive = work / "archive"
    log = work / "worker.log"
    env = stoq_env(work, broker)
    celery_bin = Path(sys.executable).parent / "celery"
    select = ["-Q", ",".join(queues)] if queues else []
    worker = subprocess.Popen([str(celery_bin), "-A", "stoq", "worker", *select, *extra, "-c", "1",
                               "-n", f"stoq-test-{work.name}@%h", "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "-l", "info", "--logfile", str(log)], env=env, cwd=work)
    client = Celery("stoq-test-client", broker=broker, backend=BACKEND)
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    deadline = time.monotonic() + 60
    while not client.control.ping(timeout=0.5):
        assert worker.poll() is None, log.read_text() if log.exists() else "worker died"
        assert time.monotonic() < deadline, "worker did not start"
    return worker, client, log


def stop_worker(worker: subprocess.Popen[bytes], client: Celery) -> None:
    client.backend.result_consumer.stop()  # no pub/sub clean-up left for interpreter exit
    client.close()
    worker.terminate()
    worker.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def no_pools_left() -> Iterator[None]:
    """Closes kombu's connection pools when the module ends (Celery's close() only drops its reference
    to them): else a process this one forks later (an embedded scan's pool, in a module run after this
    one on the same xdist worker) closes them again on sockets it shares with this process, and waits
    forever for the answer to a BRPOP this process already read."""
    yield
    from kombu import pools

    pools.reset()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Celery, Path, Path]]:
    for db in (14, 15):
        redis.Redis.from_url(redis_url(db)).flushdb()
    work = tmp_path_factory.mktemp("cluster")
    worker, client, log = start_worker(work, ["yara", "peinfo"])
    try:
        yield client, work / "archive", log
    finally:
        stop_worker(worker, client)


def profile(work: Path) -> str:
    """Stores the scan profile a client with the workers' environment would send; returns its id."""
    from stoq.config import load_settings
    from stoq.tasks.state import profile_of, put_profile

    return put_profile(redis.Redis.from_url(BACKEND), profile_of(load_settings(env=stoq_env(work))))


def ref_for(archive: Path, name: str) -> dict[str, object]:
    data = (CORPUS / name).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    DirectoryArchive(archive).put(sha256, data)
    return {"payload_id": f"p-{name}", "sha256": sha256, "filename": name, "mime": "application/octet-stream",
            "depth": 0, "meta": {}}


def send_part(client: Celery, task: str, queue: str, profile_id: str, refs: list[dict[str, object]],
              **options: object) -> tuple[str, str]:
    """Sends a plugin task for a wave of one part written here, as the publisher does (the wave says
    two parts, so it never completes and no collector is sent); returns the wave id and task id."""
    wave = f"test-{os.urandom(6).hex()}"
    redis.Redis.from_url(BACKEND).hset(st.wave_key(wave), mapping={"batch": b"{}", st.part_field(0): orjson.dumps(refs)})
    sent = client.send_task(task, args=[profile_id, wave, 0, 2], queue=queue,
                            argsrepr=describe_refs(profile_id, refs), **options)  # type: ignore[arg-type]
    return wave, sent.id


def answers_of(wave: str, timeout: float = 60) -> list[dict[str, object]]:
    """The answers the plugin task wrote into the wave's hash."""
    r = redis.Redis.from_url(BACKEND)
    deadline = time.monotonic() + timeout
    while (raw := r.hget(st.wave_key(wave), st.answer_field(0))) is None:
        assert time.monotonic() < deadline, f"no answer in wave {wave} within {timeout} s"
        time.sleep(0.05)
    return orjson.loads(raw)  # type: ignore[no-any-return]


def run_part(client: Celery, task: str, queue: str, profile_id: str, refs: list[dict[str, object]]) -> list[dict[str, object]]:
    return answers_of(send_part(client, task, queue, profile_id, refs)[0])


def test_plugins_run_as_tasks_on_their_own_queues(cluster: tuple[Celery, Path, Path]) -> None:
    client, archive, _ = cluster
    refs = [ref_for(archive, n) for n in ("test.exe", "test_xor.exe", "test.txt")]
    answers = run_part(client, "stoq.worker.yara", "yara", profile(archive.parent), refs)
    rules = yara.compile(filepath=str(BENCH_RULES))
    assert [a["payload_id"] for a in answers] == [r["payload_id"] for r in refs]
    for ref, answer in zip(refs, answers):
        expected = sorted(m.rule for m in rules.match(data=(CORPUS / str(ref["filename"])).read_bytes()))
        assert sorted(m["rule"] for m in answer["result"]["matches"]) == expected
    answers = run_part(client, "stoq.worker.peinfo", "peinfo", profile(archive.parent), refs)
    assert answers[0]["result"]["imphash"] == pefile.PE(data=(CORPUS / "test.exe").read_bytes()).get_imphash()
    assert answers[2] == {"payload_id": "p-test.txt", "skipped": True}  # not MZ: declined by accepts()


def test_only_json_is_accepted_on_the_wire(cluster: tuple[Celery, Path, Path]) -> None:
    client, archive, log = cluster
    ref = ref_for(archive, "test.txt")
    pickled, _ = send_part(client, "stoq.worker.yara", "yara", profile(archive.parent), [ref], serializer="pickle")
    with pytest.raises(AssertionError, match="no answer"):  # never answered: the worker refuses the message
        answers_of(pickled, timeout=5)
    assert "disallowed" in log.read_text().lower() or "refusing" in log.read_text().lower()
    ok = run_part(client, "stoq.worker.yara", "yara", profile(archive.parent), [ref])
    assert ok[0]["payload_id"] == "p-test.txt" and "result" in ok[0]  # the worker is still serving


def test_a_worker_without_queues_serves_every_plugin(tmp_path: Path, cluster: tuple[Celery, Path, Path]) -> None:
    worker, client, _ = start_worker(tmp_path, [])
    try:
        data = (CORPUS / "test.gz").read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        DirectoryArchive(tmp_path / "archive").put(sha256, data)
        ref = {"payload_id": "gz", "sha256": sha256, "filename": "test.gz", "mime": "application/gzip", "depth": 0}
        (answer,) = run_part(client, "stoq.extractor.decompress", "decompress", profile(tmp_path), [ref])
        (child,) = answer["children"]
        assert child["sha256"] == hashlib.sha256(gzip.decompress(data)).hexdigest()
        assert DirectoryArchive(tmp_path / "archive").get(child["sha256"]) == gzip.decompress(data)
    finally:
        stop_worker(worker, client)


def test_flower_lists_the_workers_and_a_finished_task_behind_basic_auth(tmp_path: Path,
                                                                          cluster: tuple[Celery, Path, Path]) -> None:
    # -E: task events, which Flower shows; a queue of its own, so that this worker (not the module's) runs it
    worker, client, _ = start_worker(tmp_path, ["flower-test"], "-E")
    port = free_port()
    flower = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "-A", "stoq", "flower",
                               f"--port={port}", "--address=127.0.0.1", "--basic-auth=analyst:s3cret"],
                              env=stoq_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "flower.log", "wb"))
    auth = requests.auth.HTTPBasicAuth("analyst", "s3cret")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/api/workers", auth=auth, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert flower.poll() is None and time.monotonic() < deadline, (tmp_path / "flower.log").read_text()
            time.sleep(0.3)
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401  # no credentials
        ref = ref_for(tmp_path / "archive", "test.txt")
        # Flower only knows the events it received: tasks sent before its event consumer is connected
        # are seen half (no task-received event). Send until one is seen whole, for 60 s at most.
        deadline, task = time.monotonic() + 60, None
        while task is None:
            wave, task_id = send_part(client, "stoq.worker.yara", "flower-test", profile(tmp_path), [ref])
            answers_of(wave)
            for _ in range(10):  # events reach Flower asynchronously
                seen = requests.get(f"{base}/api/tasks", auth=auth, timeout=5).json().get(task_id)
                if seen and seen.get("state") == "SUCCESS" and seen.get("name"):
                    task = seen
                    break
                time.sleep(0.3)
            assert task is not None or time.monotonic() < deadline, "Flower never showed a finished task"
        assert task["name"] == "stoq.worker.yara"
        assert "p-test.txt test.txt" in str(task["args"])  # readable arguments: what the payloads are, not bytes
        # Flower asks the workers afresh, waiting ~1 s for replies: on a busy machine, ask again.
        deadline, workers = time.monotonic() + 30, {}
        while not any(name.startswith(f"stoq-test-{tmp_path.name}@") for name in workers):
            assert time.monotonic() < deadline, f"Flower never listed the worker: {sorted(workers)}"
            workers = requests.get(f"{base}/api/workers?refresh=1", auth=auth, timeout=10).json()
    finally:
        flower.terminate()
        flower.wait(timeout=30)
        stop_worker(worker, client)


@pytest.mark.rabbitmq
def test_rabbitmq_as_broker(tmp_path: Path) -> None:
    """The same adapter with RabbitMQ as the broker (Redis keeps the results)."""
    rabbit = amqp_url()
    worker, client, _ = start_worker(tmp_path, ["peinfo"], broker=rabbit)
    try:
        ref = ref_for(tmp_path / "archive", "test.exe")
        (answer,) = run_part(client, "stoq.worker.peinfo", "peinfo", profile(tmp_path), [ref])
        assert answer["result"]["imphash"] == pefile.PE(data=(CORPUS / "test.exe").read_bytes()).get_imphash()
    finally:
        stop_worker(worker, client)
