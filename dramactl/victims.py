"""Which instances a scale-down stops: the least busy first (pure, no I/O).

Stopping an instance drains it: Dramatiq stops taking messages and gives the ones
running GRACEFUL_SHUTDOWN_TIMEOUT (G) to finish; a message still running then is cut
off, redelivered after the broker's heartbeat timeout and started from scratch. So
the instance whose stop loses least goes first, from the worker hook's reports
(:mod:`dramactl.reports`):

1. idle instances (no message running, none held);
2. instances with no report (a worker without the hook, or one not reporting yet):
   nothing is known to be lost;
3. busy instances, the one whose oldest running message began most recently first
   (the least work cut off);

ties go to the highest number (the rule when nothing is reported).

**The wait.** When a stop would cut off a *long* task, the stop waits instead, and
the tick says so. What counts as long (:func:`long_after`): when the app's mean task
(the hook's counters: busy seconds / messages done) is longer than G, every running
task, since even one just begun is expected to outlive the drain; otherwise a task
that has already run longer than G/2, an outlier for this app: for the long-tailed
durations of OCR-like work a task's expected remaining time grows with the time it
has run, so one that has outlived half the drain window is unlikely to finish inside
it, and cutting it discards its age plus the drain (at least 1.5 G task-seconds)
and redoes it from scratch. Waiting a tick costs at most one instance-tick of its
idle threads. Only busy instances wait: the idle ones of the same scale-down stop at
once (idle capacity is never kept alive by the wait), and the wait ends after
:data:`WAIT_LIMIT` seconds, so a stream of long tasks cannot pin the fleet forever.
A tick that does not scale down ends the wait (the next one's limit counts afresh).

**Why the wait is no shorter.** An instance the scale-down waits for keeps taking
messages: Dramatiq's consumer fetches whenever it holds fewer than its prefetch (during a
stop's drain too, then requeues them), and pausing it (``Worker.pause``)
would also stop the broker heartbeats its polling sends, so while a long task runs
without an ack the broker would count the worker dead and redeliver that task. When
the app's tasks outlast G on average the wait therefore lasts until *some* instance
is idle at a tick, and the delay costs worker-seconds. The only way to shorten the wait is to stop a busy
instance, and with tasks longer than the drain that cuts work: each way of doing it
that was measured (stopping only after the tasks running when the wait began have
ended; a rent-or-buy bound that waits until the surplus capacity paid, threads x
seconds waited, reaches K times the task-seconds the cut would discard; waiting only
for tasks older than G/2; a shorter limit) moved worker-seconds toward the
highest-number rule's by discarding work again, on the traces of
``python -m bench.victim_rules`` and on the minutes-long tasks of the same tool,
where a cut is almost certain. Which of the two costs matters more depends on the
app (a redone OCR page, a repeated side effect, a message that never finishes), so
the rule keeps the issue's priority: a long task is not cut before the limit.
``python -m bench.victim_rules`` measured the choices (docs: policy, "What the
benchmark measured").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .stats import InstanceReport

BOUND_SHARE = 0.5  # of GRACEFUL_SHUTDOWN_TIMEOUT: a task older than this is a long task (short-task apps)
WAIT_LIMIT = 1800.0  # seconds a scale-down waits for long tasks at most, then proceeds


def long_after(graceful_shutdown_timeout: float, mean_service: float | None = None) -> float:
    """Seconds after which a running task is a long one a scale-down waits for: 0 (any
    running task) when the app's mean task is longer than the drain, else G/2."""
    if mean_service is not None and mean_service > graceful_shutdown_timeout:
        return 0.0
    return BOUND_SHARE * graceful_shutdown_timeout


def mean_service(done_total: float | None, busy_seconds_total: float | None) -> float | None:
    """The app's mean task in seconds from the hook's cumulative counters (None: none yet)."""
    if not done_total or busy_seconds_total is None:
        return None
    return busy_seconds_total / done_total


@dataclass(frozen=True)
class Pick:
    """One instance the scale-down chose, and why (as the tick line shows it)."""

    number: int
    why: str

    def __str__(self) -> str:
        return f"@{self.number} ({self.why})"


@dataclass(frozen=True)
class Choice:
    """The instances to stop now, and those the scale-down waits for (long tasks)."""

    stop: tuple[Pick, ...] = ()
    waiting: tuple[Pick, ...] = ()

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(p.number for p in self.stop)


def _busy_why(r: InstanceReport, now: float) -> str:
    age = r.age(now)
    text = f"busy {r.busy}/{r.threads}" + ("" if age is None else f", oldest {age:.0f}s")
    return text + (f", {r.held} held" if r.held else "")


def rank(up: Sequence[int], reports: Mapping[int, InstanceReport] | None, now: float) -> list[Pick]:
    """The up instances, the first to stop first, each with its reason."""
    reports = reports or {}
    if not any(n in reports for n in up):
        return [Pick(n, "highest number: no instance reports") for n in sorted(up, reverse=True)]

    def key(n: int) -> tuple:
        r = reports.get(n)
        if r is None:
            return (1, 0.0, -n)
        if r.idle:
            return (0, 0.0, -n)
        # Most recent start first: the larger the start time, the less work lost. Held
        # messages without a running one (a hold) count as started now.
        start = r.oldest if r.oldest is not None else now
        return (2, -start, -n)

    picks = []
    for n in sorted(up, key=key):
        r = reports.get(n)
        why = "no report: cannot see inside" if r is None else "idle" if r.idle else _busy_why(r, now)
        picks.append(Pick(n, why))
    return picks


def choose(
    up: Sequence[int],
    count: int,
    reports: Mapping[int, InstanceReport] | None,
    now: float,
    *,
    long_after: float | None = None,
    waiting_since: float | None = None,
    limit: float | None = None,
) -> Choice:
    """``count`` instances of ``up`` to stop, least busy first.

    ``long_after`` (seconds; None: never wait, as for a manual command): a chosen
    instance whose oldest running task is older is not stopped but waited for, until
    the wait (which began at ``waiting_since``, None: now) reaches ``limit``.
    """
    if count <= 0:
        return Choice()
    chosen = rank(up, reports, now)[:count]
    if long_after is None:
        return Choice(stop=tuple(chosen))
    limit = WAIT_LIMIT if limit is None else limit
    waited = 0.0 if waiting_since is None else max(0.0, now - waiting_since)
    stop, waiting = [], []
    for pick in chosen:
        r = (reports or {}).get(pick.number)
        age = r.age(now) if r is not None else None
        if age is not None and r is not None and r.busy and age >= long_after:
            if waited < limit:
                waiting.append(pick)
                continue
            pick = Pick(pick.number, f"{pick.why}; waited {waited:.0f}s, the limit")
        stop.append(pick)
    return Choice(stop=tuple(stop), waiting=tuple(waiting))
