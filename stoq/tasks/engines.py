"""What a worker process keeps between tasks: the engine of each submission profile it serves (building
one compiles YARA rules) and the connectors set up for them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import redis

from stoq.engine import Engine
from stoq.tasks.plumbing import get_profile
from stoq.tasks.settings import worker_settings

#: Engines kept per process, least recently used dropped first.
KEEP_ENGINES = 4

_ENGINES: OrderedDict[str, Engine] = OrderedDict()
_CONNECTORS: dict[str, Any] = {}


def engine_for(r: redis.Redis, profile_id: str) -> Engine:
    """The engine for a submission's profile (its workers, options and limits over this worker's
    settings); a few are kept per process, since building one compiles YARA rules."""
    eng = _ENGINES.get(profile_id)
    if eng is None:
        own = worker_settings()
        profile = get_profile(r, profile_id)
        # The archive is this worker's (its address may differ from the client's: minio:9000 in compose,
        # localhost:9000 outside): its archiver's options are never the submission's.
        profile["plugins"] = dict(profile.get("plugins", {})) | {own.archiver: own.plugins.get(own.archiver, {})}
        settings = own.model_copy(update=profile)
        eng = _ENGINES[profile_id] = Engine(settings)
        while len(_ENGINES) > KEEP_ENGINES:
            _ENGINES.popitem(last=False)[1].close()
    else:
        _ENGINES.move_to_end(profile_id)
    return eng


def connector_for(r: redis.Redis, profile_id: str, name: str) -> Any:
    """The connector plugin ``name`` set up with a submission's profile (kept per process)."""
    from stoq.connectors import open_connectors

    key = f"{profile_id}:{name}"
    if key not in _CONNECTORS:
        settings = worker_settings().model_copy(update=get_profile(r, profile_id) | {"connectors": [name]})
        (_CONNECTORS[key],) = open_connectors(settings)
    return _CONNECTORS[key]
