"""Per-instance reports: what each worker process on this host is running.

The worker hook (``dramactl_ready.WorkReporter``) writes, every flush (1 s), one
field per worker process into the HASH ``<ns>:__dramactl__.instances.<host>``:
field ``<instance>.<pid>``, value JSON ``{"threads", "busy", "oldest", "held", "at", "paused", "queued"}``
(times in epoch ms, ``oldest`` null when idle, ``paused`` true while its intake is paused:
:mod:`dramactl.intake`, ``queued`` the messages it fetched that wait for a free thread; both
absent from hooks before them), and deletes it on a clean shutdown.
The probe (:mod:`dramactl.queue`) reads this host's hash in its round trip; this
module turns the raw fields into one :class:`~dramactl.stats.InstanceReport` per
instance. ``<host>`` is this host's identity (/etc/machine-id), computed the same way
by the hook, so a fleet sharing one Redis keeps one hash per host.

A field is ignored when it is stale (its ``at`` older than :data:`STALE_SECONDS`: the
process stopped reporting) or its process is gone; a damaged one (not JSON, wrong
shapes) is ignored and named in ``damaged``, never a traceback. Times are compared
with this host's clock: the reporting processes run on this host.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Callable, Iterable, Sequence

from .stats import InstanceReport

# The hook flushes every second: a report older than five flushes is a process that
# no longer reports (stopped, wedged or cut off from Redis).
STALE_SECONDS = 5.0
# Fields read per probe at most (a host runs at most MAX_PROCESSES instances, one process each).
FIELD_LIMIT = 4096


MACHINE_ID = "/etc/machine-id"


def host_identity(path: str | None = None) -> str:
    """This host's identity: /etc/machine-id (unique per installation, kept across reboots,
    unlike a hostname that clones and containers share), else its hostname. The fleet
    (share.host_id) and the worker hook (its own copy: it cannot import dramactl) use it."""
    try:
        with open(path or MACHINE_ID, encoding="ascii") as f:
            ident = f.read().strip()
    except (OSError, ValueError):
        return socket.gethostname()
    return ident if len(ident) == 32 and all(c in "0123456789abcdef" for c in ident) else socket.gethostname()


def instances_key(namespace: str, host: str | None = None) -> str:
    return f"{namespace}:__dramactl__.instances.{host or host_identity()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0: nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    except OSError:
        return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_field(name: str, value: str) -> tuple[int, int, InstanceReport]:
    """(instance, pid, report) of one field; ValueError saying what is wrong."""
    instance, _, pid = name.partition(".")
    if not instance.isdigit() or not pid.isdigit():
        raise ValueError("the field is not <instance>.<pid>")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise ValueError("the value is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the value is not a JSON object")
    threads, busy, held, at = (_count(data.get(k)) for k in ("threads", "busy", "held", "at"))
    oldest = data.get("oldest")
    if threads is None or busy is None or held is None or at is None:
        raise ValueError("threads, busy, held and at must be counts")
    if oldest is not None and _count(oldest) is None:
        raise ValueError("oldest must be epoch ms or null")
    if busy > threads:
        raise ValueError(f"busy {busy} > threads {threads}")
    paused = data.get("paused", False)
    if not isinstance(paused, bool):
        raise ValueError("paused must be true or false")
    queued = _count(data.get("queued", 0))
    if queued is None:
        raise ValueError("queued must be a count")
    report = InstanceReport(int(instance), threads, busy, None if oldest is None else oldest / 1000.0, held, at / 1000.0, paused=paused, queued=queued)
    return int(instance), int(pid), report


def parse(
    pairs: Sequence[bytes | str], now: float, *, key: str = "the instances hash", alive: Callable[[int], bool] = process_alive
) -> tuple[dict[int, InstanceReport], list[str]]:
    """The reports per instance from HGETALL's flat ``[field, value, ...]`` reply, and a
    line naming each damaged field (ignored). Stale fields and gone processes are dropped."""
    reports: dict[int, InstanceReport] = {}
    damaged: list[str] = []
    for i in range(0, len(pairs) - 1, 2):
        name, value = _text(pairs[i]), _text(pairs[i + 1])
        try:
            number, pid, report = parse_field(name, value)
        except ValueError as exc:
            damaged.append(f"{key} field {name!r}: {exc}; ignored (the worker hook rewrites it every second; delete it with HDEL if it stays)")
            continue
        if now - report.at > STALE_SECONDS or not alive(pid):
            continue
        reports[number] = reports[number].merged(report) if number in reports else report
    return reports, damaged


def unreported(up: Iterable[int], reports: dict[int, InstanceReport]) -> list[int]:
    """The up instances dramactl cannot see inside (no hook, or not reporting yet)."""
    return [n for n in up if n not in reports]
