"""The example Dramatiq app: ``dramatiq dramactl.example.tasks``.

Importing the module builds a RedisBroker from dramactl's settings (REDIS_URL or
REDIS_HOST/PORT/DB/PASSWORD, REDIS_NAMESPACE) and declares the actors; it connects to
Redis only when a message is sent or consumed. :func:`setup` points the app at other
settings (tests, ``dramactl load``) by rebinding the actors to a new broker.

Every actor takes one dict (see :mod:`dramactl.example.work` for the fields), does its
small real work, sleeps ``seconds`` (default EXAMPLE_TASK_SECONDS, 1 s) so a burst keeps
the fleet busy, and on success records itself in Redis under ``dramactl:example:``
(:func:`record`), which is how tests check that nothing was lost or run twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Retries
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from dramactl.settings import Settings, load, read_sources

from . import work
from .monitor import Monitor

logger = logging.getLogger("dramactl.example")

KEY_PREFIX = "dramactl:example"
EMAIL_QUEUE = "email_processing"
OCR_QUEUE = "ocr_processing"
HIGH_QUEUE = "high_priority"
LOW_QUEUE = "low_priority"
RETRY_OPTIONS = {"max_retries": 3, "min_backoff": 1000, "max_backoff": 60000}
# Bad input is not retried: the message fails at once (Retries' ``throws``).
NO_RETRY_ON = (work.InvalidInput,)


class TransientError(dramatiq.Retry):
    """A failure the input asked for (``fail_times``): retried with the actor's backoff.

    A :class:`dramatiq.Retry`, so Dramatiq logs no traceback for it; the monitor's
    ``event=retry`` line says what happened.
    """


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """redis.Redis arguments for the settings: the URL wins over host/port/db/password."""
    if settings.redis_url:
        return {"url": settings.redis_url}
    return {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "db": settings.redis_db,
        "password": settings.redis_password or None,
    }


def build_broker(settings: Settings) -> RedisBroker:
    """A RedisBroker with Dramatiq's default middleware plus results, current message and the monitor."""
    broker = RedisBroker(namespace=settings.namespace, **connection_kwargs(settings))
    backend = RedisBackend(client=broker.client, namespace=f"{settings.namespace}-results")
    broker.add_middleware(Results(backend=backend))
    broker.add_middleware(CurrentMessage())
    # Before Retries in the list, so its after-hooks (run in reverse order) see Retries' decision.
    broker.add_middleware(Monitor(), before=Retries)
    return broker


class _App:
    """The module's mutable state: the broker in use and what it was built from."""

    broker: RedisBroker | None = None
    key: tuple | None = None
    seconds: float = work.DEFAULT_TASK_SECONDS
    actors: list[dramatiq.Actor] = []


def _key(settings: Settings) -> tuple:
    return (settings.redis_url, settings.redis_host, settings.redis_port, settings.redis_db, settings.redis_password, settings.namespace)


def setup(settings: Settings | None = None, *, task_seconds: float | None = None) -> RedisBroker:
    """Point the app at ``settings`` (default: :func:`dramactl.settings.load`) and return its broker.

    The broker becomes Dramatiq's global broker and every actor is re-declared on it.
    Calling it again with the same Redis settings keeps the broker. ``task_seconds``
    overrides EXAMPLE_TASK_SECONDS (read from the environment and the env files).
    """
    if settings is None:
        settings = load()
    if task_seconds is None:
        values, _ = read_sources()
        task_seconds = work.default_seconds(values)
    _App.seconds = float(task_seconds)
    key = _key(settings)
    if _App.broker is not None and _App.key == key:
        dramatiq.set_broker(_App.broker)  # global again, as documented, if something else was set since
        return _App.broker
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    for actor in _App.actors:
        actor.broker = broker
        broker.declare_actor(actor)
    _App.broker, _App.key = broker, key
    return broker


def get_broker() -> RedisBroker:
    """The broker the actors are declared on."""
    assert _App.broker is not None
    return _App.broker


def key(kind: str, actor_name: str) -> str:
    """Redis key of a per-actor record: kind is processed, ids, attempts or failures."""
    return f"{KEY_PREFIX}:{kind}:{actor_name}"


def record(client: Any, actor_name: str, message_id: str) -> None:
    """Count a finished message: INCR processed, SADD its id (a set, so duplicates show as processed > ids)."""
    pipe = client.pipeline(transaction=True)
    pipe.incr(key("processed", actor_name))
    pipe.sadd(key("ids", actor_name), message_id)
    pipe.execute()


def counts(client: Any, actor_name: str) -> dict[str, int]:
    """What Redis holds for one actor: processed, unique ids, attempts, injected failures."""
    pipe = client.pipeline(transaction=False)
    for kind in ("processed", "attempts", "failures"):
        pipe.get(key(kind, actor_name))
    pipe.scard(key("ids", actor_name))
    processed, attempts, failures, unique = pipe.execute()
    return {"processed": int(processed or 0), "unique": int(unique), "attempts": int(attempts or 0), "failures": int(failures or 0)}


def processed_ids(client: Any, actor_name: str) -> set[str]:
    """The message ids the actor finished."""
    return {m.decode() if isinstance(m, bytes) else m for m in client.smembers(key("ids", actor_name))}


def _run(actor_name: str, data: Any, do: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The shape every actor shares: count the attempt, maybe fail on purpose, work, sleep, record."""
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    client = get_broker().client
    client.incr(key("attempts", actor_name))
    try:
        result = do(data)  # validates first: bad input fails before any injected failure
    except work.DocumentUnavailable as e:  # the task's own failure: retried, then dead-lettered
        client.incr(key("failures", actor_name))
        raise TransientError(str(e)) from None
    failure = work.injected_failure(data, retries)
    if failure:
        client.incr(key("failures", actor_name))
        raise TransientError(failure)
    seconds = work.task_seconds(data, _App.seconds)
    if seconds > 0:
        time.sleep(seconds)
    if message is not None:
        record(client, actor_name, message.message_id)
    return {**result, "attempt": retries + 1}


setup()


@dramatiq.actor(queue_name=EMAIL_QUEUE, store_results=True, throws=NO_RETRY_ON, **RETRY_OPTIONS)
def process_email_task(data: dict) -> dict:
    """Parse an email job (user_id or to, sender, subject, body, attachments) as a mail sender would before sending."""
    return _run("process_email_task", data, work.parse_email)


@dramatiq.actor(queue_name=OCR_QUEUE, store_results=True, throws=NO_RETRY_ON, **RETRY_OPTIONS)
def process_ocr_task(data: dict) -> dict:
    """Count the words of a document (a text file's ``file_path``, or its ``text``); an unreadable file is retried."""
    return _run("process_ocr_task", data, work.ocr_document)


@dramatiq.actor(queue_name=HIGH_QUEUE, priority=0, store_results=True, throws=NO_RETRY_ON, **RETRY_OPTIONS)
def send_notification_task(data: dict) -> dict:
    """Build a user notification (user_id, message): short work that must not wait."""
    return _run("send_notification_task", data, work.build_notification)


@dramatiq.actor(queue_name=LOW_QUEUE, priority=100, store_results=True, throws=NO_RETRY_ON, **RETRY_OPTIONS)
def generate_report_task(data: dict) -> dict:
    """Summarise a list of numbers (count, sum, min, max, mean): background work."""
    return _run("generate_report_task", data, work.build_report)


_App.actors = [process_email_task, process_ocr_task, send_notification_task, generate_report_task]
ACTORS: Mapping[str, dramatiq.Actor] = {a.actor_name: a for a in _App.actors}
QUEUES: Mapping[str, str] = {a.actor_name: a.queue_name for a in _App.actors}


class TaskDispatcher:
    """Validates task input, enqueues it and returns the message id.

    What the application code that used to INSERT into a job table calls instead, on
    the class as the migration guide writes it (``TaskDispatcher.send_email_task(data)``)
    or on an instance, with the guide's payloads as written. Invalid input raises
    :class:`ValueError` naming the field, before anything is sent; whether a document exists
    is the task's business (a missing file fails the task, which is retried and then
    dead-lettered), not the sender's.
    """

    @staticmethod
    def send_email_task(data: Mapping[str, Any]) -> str:
        return TaskDispatcher._send(process_email_task, work.validate_email, data)

    @staticmethod
    def send_ocr_task(data: Mapping[str, Any]) -> str:
        return TaskDispatcher._send(process_ocr_task, work.validate_ocr, data)

    @staticmethod
    def send_notification_task(data: Mapping[str, Any]) -> str:
        return TaskDispatcher._send(send_notification_task, work.validate_notification, data)

    @staticmethod
    def send_report_task(data: Mapping[str, Any]) -> str:
        return TaskDispatcher._send(generate_report_task, work.validate_report, data)

    @staticmethod
    def _send(actor: dramatiq.Actor, validate: Callable[[Any], Mapping[str, Any]], data: Mapping[str, Any]) -> str:
        validate(data)
        return actor.send(dict(data)).message_id
