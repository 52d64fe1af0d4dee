"""The cluster's bookkeeping on a real Redis, without workers: batching, blobs, scan state, redeliveries."""

from __future__ import annotations

import orjson
import pytest
import redis

from helpers import redis_url
from stoq.limits import Budget, Limits
from stoq.tasks import state as st
from stoq.tasks.client import batch_size

URL = redis_url(3)


@pytest.fixture()
def r() -> redis.Redis:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    return client


def test_batches_are_half_the_backlog_between_one_and_batch_max() -> None:
    assert [batch_size(n, 64) for n in (0, 1, 2, 3, 10, 127, 128, 129, 4800)] == [1, 1, 1, 1, 5, 63, 64, 64, 64]


def test_large_values_travel_as_blobs_and_come_back_equal(r: redis.Redis) -> None:
    small = {"refs": ["a" * 100]}
    assert st.wrap(r, small) is small
    big = {"refs": [{"payload_id": str(i), "filename": "n" * 300} for i in range(200)]}
    ref = st.wrap(r, big)
    assert set(ref) == {"$blob"} and len(orjson.dumps(ref)) < 100
    assert st.unwrap(r, ref) == big
    assert 0 < r.ttl(ref["$blob"]) <= st.BLOB_TTL
    assert st.blob_keys(ref, small, {"other": 1}) == [ref["$blob"]]
    st.forget(r, st.blob_keys(ref))
    assert not r.exists(ref["$blob"])
    with pytest.raises(LookupError, match="is gone: its batch was already settled, or it expired"):
        st.unwrap(r, ref)


@pytest.mark.parametrize("name", ["plain.txt", "ñame ü.doc", "中文文件名.exe", "emoji 📦😀.zip", "ctl\x01\x1f\"q\\"])
def test_wire_json_size_is_the_size_celerys_json_writes(name: str) -> None:
    from kombu.utils.json import dumps as kombu_dumps

    value = [{"scan_id": "s" * 36, "filename": name * 40, "meta": {"k": [1, 2.5, None, True]}}] * 30
    assert st.wire_json_size(orjson.dumps(value)) == len(kombu_dumps(value).encode())


def test_roots_with_non_ascii_names_go_to_a_blob_before_the_message_outgrows_its_share(r: redis.Redis) -> None:
    from kombu.utils.json import dumps as kombu_dumps

    roots = [{"scan_id": f"{i:036d}", "filename": "中" * 200, "size": i} for i in range(40)]
    assert len(orjson.dumps(roots)) < st.INLINE_LIMIT < len(kombu_dumps(roots))  # 27 KB as UTF-8, 55 KB escaped
    assert "$blob" in st.wrap(r, roots)
    ascii_roots = [root | {"filename": "x" * 200} for root in roots]
    assert st.wrap(r, ascii_roots) is ascii_roots


def test_scan_state_round_trips_through_json() -> None:
    limits = Limits(3, 10, 1000)
    budget = Budget(limits, children=2, bytes=77, seen={"ab" * 32: "p1"})
    scan = st.ScanState("s1", "2026-11-27T00:00:00Z", {"path": "/x"}, "prof", "stoq:notify:n", limits, budget,
                        results=[{"payload_id": "p1"}], errors=[{"kind": "error"}], pending=[{"plan": []}],
                        wave="w1", done=False)
    back = st.ScanState.from_json(scan.to_json())
    assert back == scan


def test_profiles_are_stored_once_under_the_hash_of_their_json(r: redis.Redis) -> None:
    one = st.put_profile(r, {"workers": ["yara"], "plugins": {"yara": {"rules": "/r"}}})
    two = st.put_profile(r, {"plugins": {"yara": {"rules": "/r"}}, "workers": ["yara"]})  # same, other key order
    assert one == two and len(one) == 24
    assert st.get_profile(r, one) == {"workers": ["yara"], "plugins": {"yara": {"rules": "/r"}}}


def test_a_redelivered_task_reuses_the_answers_its_earlier_delivery_recorded(r: redis.Redis) -> None:
    key = "stoq:tries:task-1"
    assert st.task_record(r, "task-1", False) is None  # a first delivery: no Redis command
    assert not r.exists(key)
    first = st.task_record(r, "task-1", True)  # the broker says: redelivered
    assert isinstance(first, st.TaskRecord)
    assert first.answer("p1") is None
    first.record("p1", b'{"payload_id": "p1"}')  # answered, then the worker died
    again = st.task_record(r, "task-1", True)
    assert again is not None
    assert again.answer("p1") == b'{"payload_id": "p1"}' and again.answer("p2") is None
    assert 0 < r.ttl(key) <= st.BLOB_TTL  # the answers expire with the task's blobs


def test_a_wave_is_complete_once_every_part_has_answered_whatever_the_redeliveries(r: redis.Redis) -> None:
    key = st.wave_key("w1")
    r.hset(key, mapping={"batch": b"{}", st.part_field(0): b"[]", st.part_field(1): b"[]", st.part_field(2): b"[]"})
    assert st.put_answer(r, "w1", 0, 3, b"[0]") is False
    assert st.put_answer(r, "w1", 0, 3, b"[0]") is False  # part 0 redelivered: the count does not move
    assert st.put_answer(r, "w1", 2, 3, b"[2]") is False
    assert st.put_answer(r, "w1", 1, 3, b"[1]") is True  # the last part
    assert st.put_answer(r, "w1", 1, 3, b"[1]") is True  # redelivered after: complete again (the collector's tokens decide)
    assert r.hget(key, st.answer_field(2)) == b"[2]" and 0 < r.ttl(key) <= st.BLOB_TTL
    r.delete(key)  # settled by the collector; a late duplicate of a part comes in
    assert st.put_answer(r, "w1", 0, 3, b"[0]") is False
    assert 0 < r.ttl(key) <= st.BLOB_TTL  # what it left expires
