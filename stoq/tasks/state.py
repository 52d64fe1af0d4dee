"""What the cluster keeps between tasks, in Redis (the result backend of ``STOQ_RESULT_BACKEND``): one
import for the three modules that hold it, by concern:

- ``stoq.tasks.plumbing``: the Redis client, key prefix and lifetimes, blobs, task labels, profiles;
- ``stoq.tasks.scans``: a scan's state and the sweeper's schedule;
- ``stoq.tasks.join``: a wave in flight and the join of its plugin tasks' answers.

Keys, all under ``stoq:`` and all with a time to live, so nothing outlives a forgotten scan:

| key                     | holds                                                           | module |
|-------------------------|-----------------------------------------------------------------|--------|
| ``stoq:profile:<id>``   | a submission's scan settings (workers, plugin options, limits)  | plumbing |
| ``stoq:scan:<scan_id>`` | a scan in progress: budget, finished records, the wave in flight | scans |
| ``stoq:active``         | sorted set: scan id -> when its wave (or, finished, its store) is overdue (sweeper) | scans |
| ``stoq:wave:<id>``      | a wave in flight: its scans, each plugin task's references (``r:<n>``) and answers (``a:<n>``) | join |
| ``stoq:blob:<id>``      | a submission's roots too large for a broker message (deleted once published) | plumbing |
| ``stoq:notify:<id>``    | finished documents for a waiting ``stoq submit``                 | scans (``forget_stored``) |
| ``stoq:verdicts:<id>``  | accepted or refused scans for a ``stoq submit --no-wait``        | plumbing (``tell``) |
| ``stoq:tries:<task>``   | the answers a redelivered plugin task gave before               | plumbing (``TaskRecord``) |
| ``stoq:blame:<plugin>:<sha256>`` | deaths of a worker charged to a content (quarantine)   | ``stoq.tasks.guard`` |
"""

from __future__ import annotations

from stoq.tasks.join import Answers, Wave, answer_field, part_field, put_answer, wave_answers, wave_key
from stoq.tasks.plumbing import (BLOB_TTL, INLINE_LIMIT, LABEL_LIMIT, MESSAGE_LIMIT, PREFIX, PROFILE_FIELDS,
                                 REPR_LIMIT, TTL, TaskRecord, blob_keys, connect, cut, describe_batch, describe_ids,
                                 dumps, forget, get_profile, profile_of, put_profile, redis_client, task_record, tell,
                                 unwrap, wire_json_size, wrap)
from stoq.tasks.scans import ACTIVE, ScanState, commit, forget_stored, load_states, scan_key

__all__ = ["ACTIVE", "Answers", "BLOB_TTL", "INLINE_LIMIT", "LABEL_LIMIT", "MESSAGE_LIMIT", "PREFIX", "PROFILE_FIELDS",
           "REPR_LIMIT", "TTL", "ScanState", "TaskRecord", "Wave", "answer_field", "blob_keys", "commit", "connect",
           "cut", "describe_batch", "describe_ids", "dumps", "forget", "forget_stored", "get_profile", "load_states",
           "part_field", "profile_of", "put_answer", "put_profile", "redis_client", "scan_key", "task_record", "tell",
           "unwrap", "wave_answers", "wave_key", "wire_json_size", "wrap"]
