"""Per-instance reports: what each worker process on this host is running.

The worker hook (``dramactl_ready.WorkReporter``) writes, every flush (1 s), one
field per worker process into the HASH ``<ns>:__dramactl__.instances.<host>``:
field ``<instance>.<pid>``, value JSON ``{"threads", "busy", "oldest", "held", "at", "paused", "queued", "fleet"}``
(times in epoch ms, ``oldest`` null when idle, ``paused`` true while its intake is paused:
:mod:`dramactl.intake`, ``queued`` the messages it fetched that wait for a free thread; both
absent from hooks before them), and deletes it on a clean shutdown. Each flush also sets the
HASH to expire :data:`REPORTS_TTL` later, so it exists, by Redis' clock, while a process of the
host reports: the other hosts of a fleet count those processes (``fleet``: the FLEET_NAME the
worker was started with) when the host's ticks have stopped (:mod:`dramactl.claims`).
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
import re
import socket
from typing import Callable, Iterable, Sequence

from .settings import cut
from .stats import InstanceReport

# The hook flushes every second: a report older than five flushes is a process that
# no longer reports (stopped, wedged or cut off from Redis).
STALE_SECONDS = 5.0
# Each flush keeps the host's HASH this long (the hook's REPORTS_TTL_MS): by Redis' clock, the
# HASH exists while a process of the host reports, which the fleet's claim script relies on.
REPORTS_TTL = 10.0
# Fields read per probe at most (a host runs at most MAX_PROCESSES instances, one process each).
FIELD_LIMIT = 4096
# A report's bounds: beyond them a value is damaged, never used (a JSON integer has no bound, and
# 10**400 ms has no float, nor 2.999... a pid os.kill takes).
MOST = 1_000_000_000  # threads, busy, held, queued: far above any process, exact as a float
LATEST_MS = 2**53  # epoch ms: every integer up to it is exact as a float (the year 285,000)
AHEAD_SECONDS = 60.0  # a report's ``at`` this far past this host's clock is damaged, not fresh for ever
OLDEST_AHEAD_MS = 86_400_000  # ``oldest`` more than a day past the report's ``at`` is damaged
PID_LIMIT = 4_194_304  # the kernel's PID_MAX_LIMIT: /proc/sys/kernel/pid_max is at most this, and pids are below it
_FIELD = re.compile(r"([0-9]+)\.([0-9]+)")


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


def instances_prefix(namespace: str) -> str:
    """The start of every host's reports HASH key: the host's identity follows."""
    return f"{namespace}:__dramactl__.instances."


def instances_key(namespace: str, host: str | None = None) -> str:
    return instances_prefix(namespace) + (host or host_identity())


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0: nothing is sent)."""
    if not 0 < pid < PID_LIMIT:  # 0 and -1 signal groups; above, os.kill raises OverflowError
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shown(value: object) -> str:
    """A JSON value as a journal line shows it: cut short (10**400 is 401 digits)."""
    try:
        return cut(json.dumps(value) if not isinstance(value, int) or abs(value) < 10**40 else f"{str(value)[:20]}... ({len(str(abs(value)))} digits)")
    except ValueError:  # an int past Python's digit limit for str()
        return "a number of thousands of digits"


def _count(value: object, most: int = MOST) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most else None


def parse_field(name: str, value: str) -> tuple[int, int, InstanceReport]:
    """(instance, pid, report) of one field; ValueError saying what is wrong."""
    m = _FIELD.fullmatch(name)
    if m is None:
        raise ValueError("the field is not <instance>.<pid>")
    instance, pid = m.groups()
    if len(instance) > 9:
        raise ValueError(f"instance {cut(instance)} is not an instance number")
    if len(pid) > 9 or not 0 < int(pid) < PID_LIMIT:
        raise ValueError(f"pid {cut(pid)} is not a process id (1..{PID_LIMIT - 1})")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise ValueError("the value is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the value is not a JSON object")
    threads, busy, held = (_count(data.get(k)) for k in ("threads", "busy", "held"))
    at = _count(data.get("at"), LATEST_MS)
    oldest = data.get("oldest")
    if threads is None or busy is None or held is None or at is None:
        k = next(k for k, v in (("threads", threads), ("busy", busy), ("held", held), ("at", at)) if v is None)
        raise ValueError(f"threads, busy, held and at must be counts (up to {MOST:,}; at, epoch ms, up to 2**53): {k} is {_shown(data.get(k))}")
    if oldest is not None and (_count(oldest, LATEST_MS) is None or oldest > at + OLDEST_AHEAD_MS):
        raise ValueError(f"oldest must be epoch ms, at most a day past at, or null: it is {_shown(oldest)}")
    if busy > threads:
        raise ValueError(f"busy {busy} > threads {threads}")
    paused = data.get("paused", False)
    if not isinstance(paused, bool):
        raise ValueError("paused must be true or false")
    queued = _count(data.get("queued", 0))
    if queued is None:
        raise ValueError(f"queued must be a count (at most {MOST:,})")
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
            damaged.append(f"{key} field {cut(repr(name), 60)}: {exc}; ignored (the worker hook rewrites it every second; delete it with HDEL if it stays)")
            continue
        if report.at > now + AHEAD_SECONDS:  # fresh for ever, else: a clock set back is caught up in one flush
            damaged.append(
                f"{key} field {cut(repr(name), 60)}: at is {report.at - now:.0f}s ahead of this host's clock; ignored"
                " (the worker hook rewrites it every second; delete it with HDEL if it stays)"
            )
            continue
        if now - report.at > STALE_SECONDS or not alive(pid):
            continue
        reports[number] = reports[number].merged(report) if number in reports else report
    return reports, damaged


def unreported(up: Iterable[int], reports: dict[int, InstanceReport]) -> list[int]:
    """The up instances dramactl cannot see inside (no hook, or not reporting yet)."""
    return [n for n in up if n not in reports]
