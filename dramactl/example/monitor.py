"""A Dramatiq middleware that logs one journal-friendly line per message event.

Lines are logfmt (``key=value``, values quoted only when they need it), one per event,
never a traceback, so ``journalctl -u 'dramatiq-worker@*'`` can be grepped::

    event=start actor=process_email_task queue=email_processing message_id=… attempt=1 age=0.004s
    event=retry actor=process_email_task queue=email_processing message_id=… attempt=1 duration=0.001s retry=1/3 error="TransientError: …"
    event=finish actor=process_email_task queue=email_processing message_id=… attempt=2 duration=1.002s

``event`` is one of start, finish, retry (it will run again; ``retry=N/M`` is the
retry being scheduled), fail (``retries=N/M`` used up, or an error listed in the actor's
``throws``) and skip. ``age`` is the time since the message was first enqueued.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dramatiq.middleware import Middleware

LOGGER_NAME = "dramactl.example.monitor"


def logfmt(**fields: Any) -> str:
    """``k=v`` pairs on one line; values with spaces, quotes or '=' are double-quoted."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = " ".join(str(value).split())  # one line, whatever the value holds
        if not text or any(c in text for c in ' "=\\'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class Monitor(Middleware):
    """Logs start, finish, retry and failure of every message with its duration.

    Add it *before* :class:`dramatiq.middleware.Retries` (``add_middleware(Monitor(), before=Retries)``):
    Dramatiq runs after-hooks in reverse order, so it then sees Retries' decision.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self._started: dict[str, tuple[float, int]] = {}  # message id -> (monotonic start, attempt)
        self._lock = threading.Lock()

    @staticmethod
    def _fields(message: Any) -> dict[str, Any]:
        return {"actor": message.actor_name, "queue": message.queue_name, "message_id": message.message_id}

    def before_process_message(self, broker: Any, message: Any) -> None:
        attempt = message.options.get("retries", 0) + 1
        with self._lock:
            self._started[message.message_id] = (time.monotonic(), attempt)
        age = max(0.0, time.time() - message.message_timestamp / 1000)  # since first enqueued
        self.logger.info(logfmt(event="start", **self._fields(message), attempt=attempt, age=f"{age:.3f}s"))

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None) -> None:
        with self._lock:
            started, attempt = self._started.pop(message.message_id, (None, None))
        duration = f"{time.monotonic() - started:.3f}s" if started is not None else None
        if exception is None:
            self.logger.info(logfmt(event="finish", **self._fields(message), attempt=attempt, duration=duration))
            return
        # Retries' after-hook ran before ours: it failed the message if it gave up.
        actor = broker.actors.get(message.actor_name)
        max_retries = message.options.get("max_retries", actor.options.get("max_retries") if actor else None)
        error = f"{type(exception).__name__}: {exception}"
        if attempt is None:  # not seen starting (cannot happen with Dramatiq's worker)
            attempt = message.options.get("retries", 0)
        of = f"/{max_retries}" if max_retries is not None else ""
        if message.failed:  # retry=N/M: the retry about to be scheduled; retries=N/M: those used up
            self.logger.error(logfmt(event="fail", **self._fields(message), attempt=attempt, duration=duration, retries=f"{attempt - 1}{of}", error=error))
        else:
            self.logger.warning(logfmt(event="retry", **self._fields(message), attempt=attempt, duration=duration, retry=f"{attempt}{of}", error=error))

    def after_skip_message(self, broker: Any, message: Any) -> None:
        with self._lock:
            self._started.pop(message.message_id, None)
        self.logger.info(logfmt(event="skip", **self._fields(message)))
