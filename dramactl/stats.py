"""What the queue looks like at one moment: per-queue figures and the fleet's backlog."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class QueueStats:
    """One Dramatiq queue as read from Redis in a single round trip.

    ``delayed`` counts every message in the delay queue; ``due`` those whose eta has
    passed (they are ready work a worker will move back any moment). ``in_flight`` are
    fetched by a live worker and not yet acked; ``orphaned`` were fetched by a worker
    whose heartbeat expired (work nobody runs until Dramatiq requeues it).
    ``oldest_age`` is the wait, in seconds, of the head ready message (None when
    nothing is ready); ``newest_age`` the time since the newest one (the tail) was sent
    (None when nothing is ready or the tail's timestamp is not the newest's:
    :func:`dramactl.queue.newest_age`), so the ready messages came between ``oldest_age``
    and about ``newest_age`` before the read (a tail built before it was pushed, e.g. a
    retry or a pipeline's step, makes that bound early). ``error`` says why the queue could not be read (its figures are
    then zeros). ``done_total`` and ``busy_seconds_total`` are the worker hook's
    cumulative counters (messages completed, seconds spent on them), ``busy_sq_total``
    the sum of each message's seconds squared (their spread: ``dramactl replay``); None
    while no worker with the hook (one that counts it, for ``busy_sq_total``) has
    reported on this queue.
    """

    name: str
    ready: int = 0
    delayed: int = 0
    due: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_age: float | None = None
    orphaned: int = 0
    done_total: float | None = None
    busy_seconds_total: float | None = None
    busy_sq_total: float | None = None
    error: str | None = None
    newest_age: float | None = None

    @property
    def backlog(self) -> int:
        """Work that needs a worker now: ready + due-delayed + in flight + orphaned."""
        return self.ready + self.due + self.in_flight + self.orphaned

    def to_dict(self) -> dict:
        return {**asdict(self), "backlog": self.backlog}


@dataclass(frozen=True)
class FleetBacklog:
    """The sum over the fleet's queues: the fleet is sized to all of them together.

    ``oldest_age`` is the largest of the queues' and ``newest_age`` the smallest: each
    queue's ready messages came between its own two, so all of them came between these
    two, which bound the summed ``ready`` (the newest the latest arrival anywhere). A
    queue with ready messages but no ``newest_age`` could have had one just before the
    read, so then there is no such bound: None.
    """

    ready: int = 0
    delayed: int = 0
    due: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_age: float | None = None
    orphaned: int = 0
    done_total: float | None = None  # the hook's counters summed over queues; None when no queue has them
    busy_seconds_total: float | None = None
    newest_age: float | None = None

    @property
    def backlog(self) -> int:
        return self.ready + self.due + self.in_flight + self.orphaned

    @property
    def depth(self) -> int:
        """What the classic step policy calls depth: messages waiting to be picked up."""
        return self.ready + self.due

    def to_dict(self) -> dict:
        return {**asdict(self), "backlog": self.backlog}

    @classmethod
    def of(cls, queues: Iterable[QueueStats]) -> "FleetBacklog":
        qs = list(queues)
        ages = [q.oldest_age for q in qs if q.oldest_age is not None]
        newest = [q.newest_age for q in qs if q.ready > 0]
        return cls(
            ready=sum(q.ready for q in qs),
            delayed=sum(q.delayed for q in qs),
            due=sum(q.due for q in qs),
            in_flight=sum(q.in_flight for q in qs),
            dead=sum(q.dead for q in qs),
            oldest_age=max(ages) if ages else None,
            orphaned=sum(q.orphaned for q in qs),
            done_total=_sum_known(q.done_total for q in qs),
            busy_seconds_total=_sum_known(q.busy_seconds_total for q in qs),
            newest_age=min(newest) if newest and None not in newest else None,
        )


def _sum_known(values: Iterable[float | None]) -> float | None:
    """The sum of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@dataclass(frozen=True)
class InstanceReport:
    """What one instance's worker process(es) run, as the worker hook reported it.

    ``threads`` worker threads, ``busy`` of them running a message; ``oldest`` the
    epoch seconds the oldest running message began (None when idle); ``held``
    messages held back from their ack; ``at`` the epoch seconds of the newest report;
    ``processes`` how many live processes of the instance reported; ``paused`` its
    intake is paused (:mod:`dramactl.intake`): it takes no new messages; ``queued``
    messages it has fetched that wait for a free worker thread (Dramatiq's work queue).
    """

    instance: int
    threads: int = 0
    busy: int = 0
    oldest: float | None = None
    held: int = 0
    at: float = 0.0
    processes: int = 1
    paused: bool = False
    queued: int = 0

    @property
    def idle(self) -> bool:
        return self.busy == 0 and self.held == 0

    def age(self, now: float) -> float | None:
        """Seconds the oldest running message has run (None when nothing runs)."""
        return None if self.oldest is None else max(0.0, now - self.oldest)

    def merged(self, other: "InstanceReport") -> "InstanceReport":
        """Two processes of one instance as one."""
        starts = [t for t in (self.oldest, other.oldest) if t is not None]
        return InstanceReport(
            instance=self.instance,
            threads=self.threads + other.threads,
            busy=self.busy + other.busy,
            oldest=min(starts) if starts else None,
            held=self.held + other.held,
            at=max(self.at, other.at),
            processes=self.processes + other.processes,
            paused=self.paused or other.paused,
            queued=self.queued + other.queued,
        )

    def to_dict(self, now: float) -> dict:
        age = self.age(now)
        return {**asdict(self), "oldest_age": None if age is None else round(age, 1)}
