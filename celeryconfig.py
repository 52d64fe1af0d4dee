"""The deployer's Celery settings (Celery's ``celeryconfig`` convention), each overridable from the
environment except the serializers (JSON only on the wire is a guarantee) and ``result_expires``
(no stoq task returns a result). stoq runs with the same built-in defaults when this file is absent."""

import os

broker_url = os.environ.get("STOQ_BROKER_URL", "redis://127.0.0.1:6379/0")
result_backend = os.environ.get("STOQ_RESULT_BACKEND", "redis://127.0.0.1:6379/1")

# Only JSON on the wire: a pickled message is refused.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# No scan is lost when a worker dies: acknowledge after the task, redeliver on worker loss.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = int(os.environ.get("STOQ_PREFETCH_MULTIPLIER", "1"))

# Redis redelivers a task nobody acknowledged within this many seconds; it must be longer than the
# longest task (batch_max x (time limit + 5 s)): a worker refuses to start otherwise.
broker_transport_options = {"visibility_timeout": float(os.environ.get("STOQ_VISIBILITY_TIMEOUT", "21600"))}
result_expires = 24 * 3600
