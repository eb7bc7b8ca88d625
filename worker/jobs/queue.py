"""The Celery app: one task per pipeline stage, chained; separation on queue ``gpu``.

Long GPU jobs, done right:
- late acknowledgement + ``reject_on_worker_lost``: a stage whose worker dies (SIGKILL, OOM,
  machine loss) goes back to the queue and is redelivered;
- prefetch of one, so a worker never sits on jobs another idle worker could run;
- leases with a heartbeat (``worker/jobs/leases.py``): a stage whose worker died is queued again
  by the reaper within seconds of its lease expiring (20 s), whatever the broker;
- a broker visibility timeout longer than the longest stage (``SONOMASK_VISIBILITY_TIMEOUT``,
  default 6 h), after which Redis hands an unacknowledged message to another worker: the
  last line of defence. RabbitMQ (``amqp://``) redelivers as soon as a worker's connection
  drops; its ``consumer_timeout`` must exceed the longest stage (see the README);
- retries with backoff only for transient faults (``TransientError``); bad input fails the
  job at once;
- stages are idempotent (they skip when their outputs exist, write atomically), so a
  redelivered stage resumes instead of corrupting outputs.
Only the job id travels through the broker; artifacts stay in the shared workspace.
"""

from __future__ import annotations

from celery import Celery

from worker.settings import Settings

SEPARATE_TASK = "sonomask.stage.separate"


def make_app(settings: Settings) -> Celery:
    visibility = settings.visibility_timeout
    app = Celery(
        "sonomask",
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=["worker.jobs.tasks"],
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        task_default_queue="cpu",
        task_routes={SEPARATE_TASK: {"queue": "gpu"}, "sonomask.*": {"queue": "cpu"}},
        task_track_started=True,
        result_expires=int(settings.job_ttl),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app


SETTINGS = Settings.from_env()
"""This process's settings, read once: every task and the reaper use these."""
app = make_app(SETTINGS)
