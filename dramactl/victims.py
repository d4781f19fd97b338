"""Which instances a scale-down stops: the least busy first (pure, no I/O).

Stopping an instance drains it: Dramatiq stops taking messages and gives the ones
running GRACEFUL_SHUTDOWN_TIMEOUT (G) to finish; a message still running then is cut
off, redelivered after the broker's heartbeat timeout and started from scratch. So
the instance whose stop loses least goes first, from the worker hook's reports
(:mod:`dramactl.reports`):

1. idle instances (no message running, none held);
2. instances with no report (a worker without the hook, or one not reporting yet):
   nothing is known to be lost;
3. when a tick chooses whom to wait for (below), busy instances whose intake an earlier
   tick's wait paused: they take no new work, and choosing another would pause a second
   one (a manual stop, or the stop at the wait's limit, cuts work: it skips this step);
4. other busy instances, the one whose oldest running message began most recently
   first (the least work cut off);

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
A tick that does not scale down ends the wait, as do a manual scale and a rolling restart
(the next one's limit counts afresh).

**The wait pauses the instance's intake** (:func:`to_pause`, :mod:`dramactl.intake`) when
the app's tasks outlast the drain and no message waits for a thread: the tick marks each
instance it waits for in Redis, and that instance's worker hook makes its consumers fetch
nothing while the mark lasts (they keep calling Dramatiq's fetch script, with a count of 0,
so the broker heartbeat goes on, and the hook's maintenance dispatches every few seconds
anyway: its running tasks are not counted dead), so the
instance drains to completion: the messages it already holds run, new ones go to the
instances that stay, and once it is idle the next tick stops it as idle. Before this, an
instance waited for kept fetching and the wait lasted until *some* instance happened to be
idle at a tick, which cost worker-seconds (``python -m bench.victim_rules``: ocr-day 5-6 %
over the highest-number rule's, 1.8-2.8 % with the pause, none once the hook fetched only for
free threads: a waited-for instance then holds no prefetched messages). For an app whose mean task is
shorter than G the intake is not paused: only a task older than G/2 is waited for, new ones
are young, so the wait ends with that task whatever the instance takes meanwhile, and
pausing would only leave its free threads idle while the queue fills. Nor while messages
wait for a thread (:func:`messages_wait`: the fleet is saturated, and a paused instance's
free threads would idle while they wait), nor when no instance would stay (target 0). A worker without the hook is never paused; it cannot be waited for either
(it reports nothing). The wait still ends at the limit, so a hook that cannot reach Redis,
or a task that never ends, cannot pin the fleet forever.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from .stats import InstanceReport

KINDS = ("idle", "busy", "unreported")  # what a stopped instance ran when chosen: dramactl_scale_down_stops_total{chosen=...}
BOUND_SHARE = 0.5  # of GRACEFUL_SHUTDOWN_TIMEOUT: a task older than this is a long task (short-task apps)
WAIT_LIMIT = 1800.0  # seconds a scale-down waits for long tasks at most, then proceeds


def long_after(graceful_shutdown_timeout: float, mean_service: float | None = None) -> float:
    """Seconds after which a running task is a long one a scale-down waits for: 0 (any
    running task) when the app's mean task is longer than the drain, else G/2."""
    if mean_service is not None and mean_service > graceful_shutdown_timeout:
        return 0.0
    return BOUND_SHARE * graceful_shutdown_timeout


def messages_wait(ready: int, reports: Mapping[int, InstanceReport] | None, waited: Sequence[int] = ()) -> bool:
    """Whether messages wait for a thread: ``ready`` in Redis (the caller adds the due and
    orphaned ones, soon ready), or fetched by an instance that stays and queued behind its
    busy threads. Either way the fleet is saturated and the scale-down's surplus is not
    there yet. (What a waited-for instance holds it runs itself, paused or not.)"""
    return ready > 0 or any(r.queued for n, r in (reports or {}).items() if n not in waited)


def to_pause(waiting: Sequence[Pick], long_after: float | None, messages_waiting: bool, *, others_stay: bool = True) -> list[int]:
    """The instances whose intake the tick pauses: those it waits for, when every running
    task counts as long (``long_after`` 0: the app's mean task outlasts the drain, so new
    intake would keep the wait going), no message waits for a thread (the fleet is
    saturated: a paused instance's free threads would be idle while messages wait), and
    some instance stays to take what arrives (``others_stay``: the target is not 0)."""
    if long_after != 0.0 or messages_waiting or not others_stay:
        return []
    return [p.number for p in waiting]


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
    kind: str = "unreported"  # of KINDS: idle, busy, or no report to tell

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
    return text + (f", {r.held} held" if r.held else "") + (", intake paused" if r.paused else "")


def rank(up: Sequence[int], reports: Mapping[int, InstanceReport] | None, now: float, *, prefer_paused: bool = False) -> list[Pick]:
    """The up instances, the first to stop first, each with its reason. ``prefer_paused``
    (a tick choosing whom to wait for): busy instances whose intake is paused come before
    other busy ones; otherwise (a manual stop, a stop at the wait's limit: a cut) the most
    recent start goes first whatever the pause."""
    reports = reports or {}
    if not any(n in reports for n in up):
        return [Pick(n, "highest number: no instance reports", "unreported") for n in sorted(up, reverse=True)]

    def key(n: int) -> tuple:
        r = reports.get(n)
        if r is None:
            return (1, 0.0, -n)
        if r.idle:
            return (0, 0.0, -n)
        if r.paused and prefer_paused:  # already draining to completion: take no new one
            return (2, -(r.oldest if r.oldest is not None else now), -n)
        # Most recent start first: the larger the start time, the less work lost. Held
        # messages without a running one (a hold) count as started now.
        start = r.oldest if r.oldest is not None else now
        return (3, -start, -n)

    picks = []
    for n in sorted(up, key=key):
        r = reports.get(n)
        if r is None:
            picks.append(Pick(n, "no report: cannot see inside", "unreported"))
        else:
            picks.append(Pick(n, "idle", "idle") if r.idle else Pick(n, _busy_why(r, now), "busy"))
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
    if long_after is None:
        return Choice(stop=tuple(rank(up, reports, now)[:count]))
    limit = WAIT_LIMIT if limit is None else limit
    waited = 0.0 if waiting_since is None else max(0.0, now - waiting_since)
    chosen = rank(up, reports, now, prefer_paused=waited < limit)[:count]
    stop, waiting = [], []
    for pick in chosen:
        r = (reports or {}).get(pick.number)
        age = r.age(now) if r is not None else None
        if age is not None and r is not None and r.busy and age >= long_after:
            if waited < limit:
                waiting.append(pick)
                continue
            pick = replace(pick, why=f"{pick.why}; waited {waited:.0f}s, the limit")
        stop.append(pick)
    return Choice(stop=tuple(stop), waiting=tuple(waiting))
