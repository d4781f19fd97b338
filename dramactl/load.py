"""Load for demos and tests: enqueue N messages for the example app, optionally rate-limited.

The example app is imported only when load is sent, so ``dramactl`` commands that do
not send load never import Dramatiq's broker.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from dramactl.queue import redis_errors
from dramactl.settings import Settings

# kind -> (actor name, queue); "mixed" cycles through all four.
KINDS: dict[str, tuple[str, str]] = {
    "email": ("process_email_task", "email_processing"),
    "ocr": ("process_ocr_task", "ocr_processing"),
    "high": ("send_notification_task", "high_priority"),
    "low": ("generate_report_task", "low_priority"),
}
MIXED = "mixed"
MIN_RATE = 0.001  # messages per second (one every 1000 s), a demo's floor: --rate 1e-300 sent one, then time.sleep overflowed
KIND_NAMES = (*KINDS, MIXED)

_WORDS = "invoice shipment order payment receipt account customer delivery update reminder".split()


def example_payload(kind: str, i: int, *, seconds: float | None = None, fail_times: int = 0) -> dict[str, Any]:
    """The ``i``-th example message body for one kind (deterministic)."""
    words = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(5 + i % 7))
    if kind == "email":
        data: dict[str, Any] = {
            "to": f"user{i}@example.com",
            "subject": f"Load test message {i}",
            "body": f"Hello user {i},\n{words}\nhttps://example.com/orders/{i}\n",
        }
    elif kind == "ocr":
        data = {"text": f"Scanned page {i}\n{words}\n"}
    elif kind == "high":
        data = {"user_id": i, "message": f"Your code is {i:06d}", "channel": "push"}
    elif kind == "low":
        data = {"values": [(i * 7 + k) % 100 for k in range(1 + i % 10)]}
    else:
        raise ValueError(f"unknown load kind {kind!r}; use one of {', '.join(KIND_NAMES)}")
    if seconds is not None:
        data["seconds"] = seconds
    if fail_times:
        data["fail_times"] = fail_times
    return data


def kinds_for(kind: str) -> list[str]:
    """The concrete kinds a load kind sends, in the order they are cycled."""
    if kind == MIXED:
        return list(KINDS)
    if kind not in KINDS:
        raise ValueError(f"unknown load kind {kind!r}; use one of {', '.join(KIND_NAMES)}")
    return [kind]


def check(settings: Settings, count: int, *, rate: float | None = None, kind: str = "email", seconds: float | None = None, fail_times: int = 0) -> list[str]:
    """Validate the arguments; returns the concrete kinds. ValueError with the fix otherwise."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a whole number >= 0, not {count!r}")
    if rate is not None and not (isinstance(rate, (int, float)) and MIN_RATE <= rate < float("inf")):
        raise ValueError(f"rate (--rate) must be at least {MIN_RATE:g} messages per second, not {rate!r}")
    if seconds is not None and not (isinstance(seconds, (int, float)) and 0 <= seconds <= 3600):
        raise ValueError(f"seconds must be from 0 to 3600, not {seconds!r}")
    if isinstance(fail_times, bool) or not isinstance(fail_times, int) or fail_times < 0:
        raise ValueError(f"fail_times must be a whole number >= 0, not {fail_times!r}")
    kinds = kinds_for(kind)
    missing = [KINDS[k][1] for k in kinds if KINDS[k][1] not in settings.queues]
    if missing:
        raise ValueError(
            f"queue {', '.join(missing)} is not in DRAMATIQ_QUEUE_NAME ({','.join(settings.queues)}): "
            "the fleet would not run these messages; load needs the example app's queues"
        )
    return kinds


def send_load(
    settings: Settings,
    count: int,
    *,
    rate: float | None = None,
    kind: str = "email",
    seconds: float | None = None,
    fail_times: int = 0,
    progress: Callable[[int, int], Any] | None = None,
) -> list[str]:
    """Enqueue ``count`` example messages and return their message ids, in send order.

    ``rate`` caps the pace in messages per second (None: as fast as Redis takes them);
    ``kind`` is email, ocr, high, low or mixed; ``seconds`` sets how long each task
    takes (None: the worker's EXAMPLE_TASK_SECONDS); ``fail_times`` makes each message
    fail that many attempts before it succeeds. ``progress(sent, total)`` is called
    after every message. Raises ValueError for bad arguments, before sending anything,
    and SettingsError (naming REDIS_HOST/REDIS_URL/REDIS_PASSWORD) when Redis cannot be used.
    """
    kinds = check(settings, count, rate=rate, kind=kind, seconds=seconds, fail_times=fail_times)
    from dramactl.example import tasks  # lazy: builds a broker

    tasks.setup(settings)
    actors = [tasks.ACTORS[KINDS[k][0]] for k in kinds]
    ids: list[str] = []
    start = time.monotonic()
    with redis_errors(settings, progress=lambda: f"after sending {len(ids)} of {count} messages"):
        for i in range(count):
            if rate is not None:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            n = i % len(kinds)
            message = actors[n].send(example_payload(kinds[n], i, seconds=seconds, fail_times=fail_times))
            ids.append(message.message_id)
            if progress is not None:
                progress(i + 1, count)
    return ids
