"""The Celery application of the workers: stoq's settings (``stoq.tasks.config``), a task per plugin,
the publisher, the collector, the store connector and the sweeper."""

from __future__ import annotations

from typing import Any

from celery import bootsteps, signals

from stoq.tasks.config import make_app

app = make_app()

from stoq.tasks import checks, pipeline, sweeper  # noqa: E402  (after the app: they may read its settings)
from stoq.tasks import remote  # noqa: E402,F401  (the stoq_plugins inspect command)
from stoq.tasks import exporter  # noqa: E402,F401  (metrics_port: the worker's Prometheus metrics)
from stoq.tasks.adapter import redelivered, register_plugins  # noqa: E402

# Every installed scan plugin becomes a task on its own queue (see stoq.tasks.adapter).
PLUGIN_TASKS = register_plugins(app)


@app.task(name="stoq.publish", queue=pipeline.DEFAULT_QUEUE, ignore_result=True, bind=True)
def publish(self: Any, profile_id: str, roots: Any, notify: str | None = None, verdicts: str | None = None) -> None:
    """Starts scans: hashes, types and dispatches each root, then fans out to the plugin queues."""
    pipeline.retrying("publish", pipeline.publish, app, profile_id, roots, notify, self.request.id, redelivered(self),
                      verdicts)


@app.task(name="stoq.collect", queue=pipeline.COLLECT_QUEUE, ignore_result=True, bind=True)
def collect(self: Any, wave_id: str) -> None:
    """A wave's join: applies the plugins' answers, sends the next wave, stores the finished scans."""
    pipeline.retrying("collect", pipeline.collect, app, wave_id, self.request.id, redelivered(self))


@app.task(name="stoq.connector.store", queue=pipeline.COLLECT_QUEUE, ignore_result=True,
          autoretry_for=(Exception,), retry_backoff=True, retry_backoff_max=8, max_retries=60)
def store(scan_ids: list[str]) -> None:
    """Saves finished scans to the result store (PostgreSQL) and wakes the waiting client. Retried
    at most 8 s apart (for about 8 min): a database back from an outage is used within seconds."""
    pipeline.store(app, scan_ids)


@app.task(name="stoq.connectors.catch_up", queue=pipeline.COLLECT_QUEUE, ignore_result=True)
def connectors_catch_up() -> None:
    """Delivers the documents of the store's connector outbox that are due (``stoq.outbox``)."""
    pipeline.catch_up_connectors()


class Sweeper(bootsteps.StartStopStep):
    """Every worker closes overdue scans every few seconds (``stoq.tasks.sweeper.sweep``)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        self.tref = worker.timer.call_repeatedly(sweeper.SWEEP_EVERY, self.run, (), priority=10)

    def run(self) -> None:
        try:
            sweeper.sweep(app)
            sweeper.maybe_catch_up(app)
        except Exception:  # a broker or Redis hiccup: the next round tries again
            pipeline.log.exception("sweeper round failed")
        try:
            sweeper.recover(app)
        except Exception:  # the database, the broker or Redis away: the next round tries again
            pipeline.log.exception("sweeper's recovery from the ledger failed")
        from stoq.tasks import connect

        connect.release()  # no database connection of the main process may cross a fork of the pool

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


app.steps["worker"].add(Sweeper)


@signals.worker_init.connect
def _check_settings(sender: Any = None, **_: Any) -> None:
    checks.refuse_bad_settings(app)
    preload()


def preload() -> None:
    """Imports in the worker's main process, before it forks its pool, what each pool process would
    otherwise import on its first collection, inside the first timed work: the result store
    (SQLAlchemy and the PostgreSQL dialect). Nothing is connected here: connections never cross a fork."""
    import stoq.tasks.connect  # noqa: F401

    try:
        import sqlalchemy.dialects.postgresql.psycopg2  # noqa: F401
    except ImportError:  # no PostgreSQL driver: this worker's store is another database
        pass



@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _escape_log_lines(logger: Any = None, **_: Any) -> None:
    """Worker log lines quote file names (a task's arguments, a refusal): escaped, one record one line."""
    from stoq.terminal import EscapingFilter

    for handler in getattr(logger, "handlers", ()):
        if not any(isinstance(f, EscapingFilter) for f in handler.filters):
            handler.addFilter(EscapingFilter())
