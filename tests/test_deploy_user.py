"""Workers never run as root where the project starts them: the image's user, each compose service
built from it, and scripts/stoq-cluster (which drops root; tests/test_cluster.py runs it)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_image_runs_as_an_unprivileged_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines.index(f"USER {users[-1]}") > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    assert re.search(rf"useradd [^&]*--uid (\d+) {users[-1]}\b", (ROOT / "Dockerfile").read_text())


def test_every_stoq_service_of_compose_runs_unprivileged() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    built = {name: svc for name, svc in services.items() if svc.get("build") == "."}
    assert {"workers-analysis", "workers-extract", "flower", "submit"} <= set(built)
    assert {name: svc.get("user") for name, svc in built.items()} == {name: "stoq" for name in built}


def test_the_topology_script_drops_root() -> None:
    script = (ROOT / "scripts" / "stoq-cluster").read_text()
    assert 'user="${STOQ_CLUSTER_USER:-nobody}"' in script
    worker_lines = [line for line in script.splitlines() if '"$bin/celery"' in line]
    assert worker_lines and all('"${as_user[@]}" "$bin/celery"' in line for line in worker_lines)
