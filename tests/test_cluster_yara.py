"""The ``yara`` worker in the cluster picks up rule files changed on disk without a restart: the same
worker process (``-c 1``, the only consumer of the ``yara`` queue) answers two submissions, before and
after a rule file of the directory it was given changes. Redis databases 6 and 7."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import CORPUS, validate
from test_cluster import dedicated_queue, tasks_run

DB = "stoq_cluster_yara"


def test_yara_worker_recompiles_changed_rules(tmp_path: Path, testplugins_site: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "sub").mkdir(parents=True)
    (rules / "sub" / "words.yar").write_text('rule first_word { strings: $a = "Lorem" condition: $a }\n')
    (rules / "other.yara").write_text('rule by_name { condition: filename == "test.txt" and extension == ".txt" }\n'
                                      'rule by_path { condition: filepath endswith "/corpus/test.txt" }\n')
    args = ["--workers", "yara", "-o", f"yara.rules={rules}", "-o", "yara.recheck=0", "--format", "json"]

    def matched(workers) -> list[tuple[str, str]]:
        got = workers[0].stoq("submit", str(CORPUS / "test.txt"), *args, timeout=180)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        return sorted((m["namespace"], m["rule"]) for m in doc["results"][0]["workers"]["yara"]["matches"])

    (tmp_path / "work").mkdir()
    with dedicated_queue(tmp_path / "work", testplugins_site, DB, "yara") as workers:
        assert matched(workers) == [("other.yara", "by_name"), ("other.yara", "by_path"), ("sub/words.yar", "first_word")]
        (rules / "sub" / "words.yar").write_text('rule second_word { strings: $a = "dolor" condition: $a }\n')
        assert matched(workers) == [("other.yara", "by_name"), ("other.yara", "by_path"), ("sub/words.yar", "second_word")]
        assert tasks_run(workers[1]) == ["stoq.worker.yara", "stoq.worker.yara"]
