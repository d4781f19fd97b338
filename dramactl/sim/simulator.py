"""A deterministic discrete-event model of a worker fleet under a scaling policy.

Messages arrive (from a :class:`~bench.traces.Trace`) into one FIFO queue (Redis).
Workers fetch them, each holding at most ``prefetch`` unacked messages as Dramatiq's
consumer does (2 x threads), or only as many as its threads while the mean task is
long or unknown (the worker hook's gate), and serve them with their threads in order. Workers are
systemd instances that take a few seconds to start consuming; a stopped worker hands
its not-yet-started messages back and drains the rest with Dramatiq's rule: what
finishes within GRACEFUL_SHUTDOWN_TIMEOUT (``grace``) is done; what is still running
then is cut off, and redelivered from scratch once the broker's heartbeat timeout
(``heartbeat``) has passed. The task-seconds cut off are the run's *work discarded*.
Which instances a scale-down stops is the ``victim`` rule: ``least-busy`` is
dramactl's (:func:`dramactl.victims.choose`, fed the reports the hook would publish,
the wait for long tasks included: an instance waited for fetches nothing new, as
:mod:`dramactl.intake` pauses it), ``highest`` its rule before issue 19, ``random``
what Kubernetes' HPA does with equally ranked pods.

Every ``interval`` seconds the policy sees what the real scaler reads: a
``FleetBacklog`` (with the worker hook's cumulative ``done``/``busy`` counters) and one
``WorkerUnit`` per loaded instance, as a ``Type=notify`` unit reports itself. Its
target is applied like ``dramactl.scaler.plan``: start the lowest free numbers, stop
the highest.

A tick takes time, as the scaler's does: its start jobs last until the instances are
READY (at most ``START_WAIT``), its stop jobs until the stopped instances drained
their started messages (at most ``STOP_WAIT``, and a second before the next tick is due,
as :func:`dramactl.scaler.stop_wait`); the next tick comes at the later of
its schedule and the end of this one (the timer does not start a running service, and
starts it as it ends once the interval has passed: measured in a booted systemd, a
oneshot of 7 s on OnUnitActiveSec=3s started every 7.01 s). The real service starts
some 10-25 ms after each fire (measured with AccuracySec=1ms); the model leaves that
out, as it would only drift the ticks against a trace's blocks, whose phase the trace
chose.
The scaler's recorded start-up reaches the controller through ``observe_startup`` when
it has one: how long its start jobs took when they all ended within ``START_WAIT``,
else the instances still starting, which the next tick times from the units'
timestamps (``started`` and ``since``, as systemd's InactiveExit/ActiveEnter).

The run goes on past the trace's end until every message is served and the fleet has
not acted for :data:`REST` seconds, so every policy does all the work and its stops
after the work are counted; worker-seconds run to the last completion or the last
action, whichever is later, and are comparable with :mod:`bench.bound`.

Simplifications: the consumers' race is a fair draw among those with room (no poll
back-off; the gate's mean task is the fleet's, the hook's its process's), no delayed
messages, the hook's counters and reports are exact (the real hook flushes once a
second), the scaler's "start one first when none is active" is not modelled.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from dramactl import victims as victim_rule
from dramactl.instance import WorkerUnit
from dramactl.stats import FleetBacklog, InstanceReport

from .bound import work_lower_bound
from .traces import Trace

INF = float("inf")
START_WAIT = 30.0  # scaler.START_WAIT: how long a tick waits for its start jobs
STOP_WAIT = 30.0  # scaler.stop_wait: min(GRACEFUL_SHUTDOWN_TIMEOUT + 5, 30) ...
STOP_WAIT_FLOOR = 10.0  # ... and no later than a second before the next tick, but at least this (scaler.STOP_WAIT_FLOOR)
GRACE = 30.0  # GRACEFUL_SHUTDOWN_TIMEOUT's default: what a stopped worker's running messages get to finish
HEARTBEAT = 60.0  # Dramatiq's heartbeat timeout: a cut-off message is redelivered this long after
REST = 600.0  # after the last message, ticks go on until the fleet has not acted for this long (twice HPA's 300 s
              # scale-down window): a policy's stops after the work ends are counted, and its idle fleet until then
VICTIMS = ("least-busy", "highest", "random")
LONG_TASK_SECONDS = 1.0  # the worker hook's: from this mean task its consumers fetch only for free threads


class TooLong(RuntimeError):
    """A run bounded by ``max_ticks`` (:func:`simulate`) reached it before it ended."""


class Controller(Protocol):
    """A policy's per-run state machine: one call per tick, returns the wanted fleet size."""

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int: ...


@dataclass(frozen=True)
class WorkerModel:
    """Threads per worker, a lognormal service time, and a uniform start-up delay."""

    threads: int = 8
    prefetch: int = 16  # Dramatiq's default: 2 x threads per consumer
    mean_service: float = 4.0
    service_cv: float = 1.0
    startup_low: float = 3.0
    startup_high: float = 6.0

    def service_times(self, rng: random.Random, n: int) -> list[float]:
        sigma = math.sqrt(math.log(1.0 + self.service_cv**2))
        mu = math.log(self.mean_service) - sigma**2 / 2.0
        return [rng.lognormvariate(mu, sigma) for _ in range(n)]

    def startup_delays(self, rng: random.Random, n: int) -> list[float]:
        return [rng.uniform(self.startup_low, self.startup_high) for _ in range(n)]


@dataclass(frozen=True)
class Workload:
    """One trace's messages, drawn once and replayed identically for every policy."""

    trace: Trace
    model: WorkerModel
    arrivals: list[float]
    services: list[float]
    startups: list[float]  # the k-th worker started in a run gets the k-th delay
    seed: int = 0

    @classmethod
    def draw(cls, trace: Trace, model: WorkerModel, seed: int) -> "Workload":
        """The trace's messages; ``model`` with the trace's own overrides (threads, service, start-up)."""
        model = replace(model, **dict(trace.model))
        arrivals = trace.arrivals(random.Random(f"{seed}/{trace.name}/arrivals"))
        services = model.service_times(random.Random(f"{seed}/{trace.name}/service"), len(arrivals))
        startups = model.startup_delays(random.Random(f"{seed}/{trace.name}/startup"), 4096)
        return cls(trace, model, arrivals, services, startups, seed)


@dataclass
class Tick:
    at: float
    ready: int
    in_flight: int
    oldest_age: float | None
    workers: int
    target: int
    acted: bool = False  # started or stopped instances


@dataclass
class RunResult:
    """What one policy did on one trace."""

    trace: str
    policy: str
    waits: list[float]  # per message: arrival to start of service (censored at the end)
    worker_seconds: float
    lower_bound: float
    peak_workers: int
    actions: int  # ticks that started or stopped instances
    duration: float
    ticks: list[Tick] = field(default_factory=list)
    horizon: float = 0.0  # when the last message completed or the fleet last acted (>= duration): worker-seconds run to here
    seed: int = 0
    flaps: int = 0  # actions undone by an opposite action within the next two ticks (:func:`count_flaps`)
    discarded: float = 0.0  # task-seconds cut off by scale-downs (run again from scratch)
    cut: int = 0  # messages cut off by scale-downs
    deferred: int = 0  # ticks that stopped instances a scale-down had waited for (least-busy's wait split it)
    after_end: int = 0  # actions at or after the trace's end: the arrivals have stopped and the fleet drains
    stopped_starting: int = 0  # instances stopped within their start-up of being started (before READY=1)

    def wait_percentile(self, q: float) -> float:
        """Nearest-rank percentile of the queue waits."""
        ordered = sorted(self.waits)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]

    @property
    def p50(self) -> float:
        return self.wait_percentile(50)

    @property
    def p95(self) -> float:
        return self.wait_percentile(95)

    @property
    def max_wait(self) -> float:
        return max(self.waits, default=0.0)

    @property
    def ratio(self) -> float:
        return self.worker_seconds / self.lower_bound

    @property
    def actions_per_hour(self) -> float:
        return self.actions * 3600.0 / self.duration

    @property
    def flaps_per_hour(self) -> float:
        return self.flaps * 3600.0 / self.duration


FLAP_TICKS = 2  # an action undone within this many ticks is a flap


def count_flaps(moves: Sequence[tuple[int, int]], within: int = FLAP_TICKS) -> int:
    """Actions undone within ``within`` ticks: ``moves`` are (tick number, +1 grow / -1
    shrink) of the ticks that acted; each action is counted once, when a later one
    in the opposite direction comes at most ``within`` ticks after it."""
    undone = 0
    for k, (at, way) in enumerate(moves):
        if any(later - at <= within and other == -way for later, other in moves[k + 1 :]):
            undone += 1
    return undone


@dataclass
class _Worker:
    number: int
    started: float
    ready_at: float
    ready: bool = False
    busy: int = 0
    held: deque[int] = field(default_factory=deque)  # fetched, waiting for a free thread
    stopping_since: float | None = None
    paused: bool = False  # intake paused (dramactl.intake): a scale-down waits for its tasks
    gone: bool = False
    last_done: float = 0.0  # when its last started message completes
    running: dict[int, tuple[float, int]] = field(default_factory=dict)  # message -> (start, completion seq)

    def report(self, threads: int, now: float) -> InstanceReport:
        """What its worker hook would publish."""
        starts = [start for start, _ in self.running.values()]
        return InstanceReport(self.number, threads=threads, busy=len(starts), oldest=min(starts) if starts else None, at=now, paused=self.paused, queued=len(self.held))

    @property
    def outstanding(self) -> int:
        return self.busy + len(self.held)

    def unit(self) -> WorkerUnit:
        """How systemd reports this instance through ``ListUnitsByPatterns`` and the
        unit's timestamps, as :meth:`dramactl.fleet.Fleet.instances` reads them
        (``Type=notify``): activating/start with its start job pending until READY=1;
        active/running with no job; draining after a stop is deactivating/stop-sigterm
        *with its stop job pending* (without the job it would read as a crashed unit
        coming back by itself). ``started`` is when the start job began
        (InactiveExitTimestamp), ``since`` when it entered its current state
        (ActiveEnterTimestamp once active). tests/system/test_unit_states.py compares
        these with what the real Fleet lists from a booted systemd."""
        pid = 1000 + self.number
        if self.stopping_since is not None:
            return WorkerUnit(self.number, "deactivating", "stop-sigterm", pid=pid, since=self.stopping_since, job="stop", started=self.started)
        if not self.ready:
            return WorkerUnit(self.number, "activating", "start", pid=pid, since=self.started, job="start", started=self.started)
        return WorkerUnit(self.number, "active", "running", pid=pid, since=self.ready_at, started=self.started)


class _Run:
    """One replay: the event loop and its bookkeeping."""

    def __init__(
        self, workload: Workload, controller: Controller, interval: float, initial_workers: int,
        victim: str = "least-busy", grace: float = GRACE, heartbeat: float = HEARTBEAT, schedule: Sequence[float] = (),
        max_ticks: int | None = None,
    ) -> None:
        self.max_ticks = max_ticks  # None: no bound (the bench's traces end)
        if victim not in VICTIMS:
            raise ValueError(f"victim rule {victim!r}: one of {', '.join(VICTIMS)}")
        self.victim, self.grace, self.heartbeat = victim, grace, heartbeat
        self.victim_rng = random.Random(f"{workload.seed}/{workload.trace.name}/victims")
        self.fetch_rng = random.Random(f"{workload.seed}/{workload.trace.name}/fetch")  # which consumer's fetch comes first
        self.waiting_since: float | None = None  # least-busy: a scale-down waits for long tasks since
        self.timers: list[tuple[float, int, str, object]] = []  # drain cut-offs and redeliveries
        self.cancelled: set[int] = set()  # completion seqs of messages cut off
        self.discarded = 0.0
        self.cut = 0
        self.deferred = 0
        self.workload = workload
        self.controller = controller
        self.interval = interval
        self.schedule = deque(sorted(schedule))  # the ticks' times, when given; every interval after them
        self.arrivals = workload.arrivals
        self.services = workload.services
        self.threads = workload.model.threads
        self.prefetch = max(workload.model.prefetch, workload.model.threads)
        self.duration = workload.trace.duration
        self.workers = [_Worker(k + 1, -3600.0, -3600.0, ready=True) for k in range(initial_workers)]
        self.waiting: deque[int] = deque()
        self.completions: list[tuple[float, int, _Worker]] = []
        self.readiness: list[tuple[float, int, _Worker]] = []
        self.waits: dict[int, float] = {}  # per message, the wait before the start that completed it
        self.ticks: list[Tick] = []
        self.in_flight = 0
        self.seq = 0
        self.started = 0
        self.actions = 0
        self.after_end = 0
        self.stopped_starting = 0
        self.moves: list[tuple[int, int]] = []  # (tick number, direction) of every tick that acted
        self.tick_count = 0
        self.live = initial_workers
        self.peak = initial_workers
        self.worker_seconds = 0.0
        self.last_change = 0.0
        self.done = 0
        self.busy = 0.0
        self.end = 0.0
        self.last_action = 0.0

    def count_live(self, now: float) -> None:
        self.worker_seconds += self.live * (now - self.last_change)
        self.live, self.last_change = len(self.workers), now
        self.peak = max(self.peak, self.live)

    def begin(self, w: _Worker, m: int, now: float) -> None:
        self.waits[m] = now - self.arrivals[m]
        w.busy += 1
        self.seq += 1
        w.running[m] = (now, self.seq)
        w.last_done = max(w.last_done, now + self.services[m])
        heapq.heappush(self.completions, (now + self.services[m], self.seq, w, m))

    def fetch(self, now: float) -> None:
        """Hand ready messages to consuming workers as Dramatiq's consumers take them: they
        race, each fetching whenever it holds fewer than its limit, so a fetch goes to a
        worker drawn at random among those with room, and takes all the room it has. The
        limit is the threads while the mean task is long (:data:`LONG_TASK_SECONDS`) or not
        known yet (the worker hook's :class:`FreeThreads` fetches only for free threads), else
        the prefetch."""
        limit = self.threads if not self.done or self.busy / self.done >= LONG_TASK_SECONDS else self.prefetch
        while self.waiting:
            consuming = [w for w in self.workers if w.ready and w.stopping_since is None and not w.paused and w.outstanding < limit]
            if not consuming:
                return
            w = consuming[0] if len(consuming) == 1 else self.fetch_rng.choice(consuming)
            for _ in range(min(len(self.waiting), limit - w.outstanding)):  # one fetch: all it may hold
                m = self.waiting.popleft()
                self.in_flight += 1
                if w.busy < self.threads:
                    self.begin(w, m, now)
                else:
                    w.held.append(m)

    def complete(self, w: _Worker, now: float, m: int) -> None:
        service = self.services[m]
        w.running.pop(m, None)
        w.busy -= 1
        self.in_flight -= 1
        self.done += 1
        self.busy += service
        self.end = now
        if w.held:
            self.begin(w, w.held.popleft(), now)
        elif w.stopping_since is not None and w.busy == 0:
            w.gone = True
            self.workers.remove(w)
            self.count_live(now)

    def stop(self, w: _Worker, now: float) -> None:
        """SIGTERM: prefetched messages go back to the queue, started ones get ``grace`` to finish."""
        w.stopping_since = now
        if w.held:
            self.in_flight -= len(w.held)
            self.waiting = deque(sorted([*self.waiting, *w.held], key=lambda m: self.arrivals[m]))
            w.held.clear()
        if w.busy == 0:
            w.gone = True
            self.workers.remove(w)
        elif w.last_done > now + self.grace:
            self.seq += 1
            heapq.heappush(self.timers, (now + self.grace, self.seq, "cut", w))

    def cut_off(self, w: _Worker, now: float) -> None:
        """GRACEFUL_SHUTDOWN_TIMEOUT passed: the process exits; what still runs is lost and,
        unacked, comes back once the heartbeat timeout has passed."""
        if w.gone:
            return
        for m, (start, seq) in w.running.items():
            self.discarded += now - start
            self.cut += 1
            self.cancelled.add(seq)
            self.seq += 1
            heapq.heappush(self.timers, (now + self.heartbeat, self.seq, "redeliver", m))
        w.running.clear()
        w.busy = 0
        w.gone = True
        self.workers.remove(w)
        self.count_live(now)

    def redeliver(self, m: int) -> None:
        """Dramatiq's maintenance requeues a dead worker's message (in arrival order, as a stop's are)."""
        self.in_flight -= 1
        self.waiting = deque(sorted([*self.waiting, m], key=lambda k: self.arrivals[k]))

    def victims(self, up: list[_Worker], count: int, now: float, backlog: FleetBacklog) -> list[_Worker]:
        """The ``count`` workers a scale-down stops (fewer when least-busy waits for long tasks)."""
        if self.victim == "highest":
            return sorted(up, key=lambda w: -w.number)[:count]
        if self.victim == "random":
            return self.victim_rng.sample(up, count)
        by_number = {w.number: w for w in up}
        reports = {w.number: w.report(self.threads, now) for w in up if w.ready}
        long_after = victim_rule.long_after(self.grace, victim_rule.mean_service(backlog.done_total, backlog.busy_seconds_total))
        choice = victim_rule.choose(list(by_number), count, reports, now, waiting_since=self.waiting_since, long_after=long_after)
        self.deferred += bool(self.waiting_since is not None and choice.numbers)
        self.waiting_since = (self.waiting_since or now) if choice.waiting else None
        paused = set(victim_rule.to_pause(choice.waiting, long_after, victim_rule.messages_wait(backlog.ready, reports, [p.number for p in choice.waiting]), others_stay=count < len(up)))  # as scaler.tick
        for w in up:
            w.paused = w.number in paused
        return [by_number[n] for n in choice.numbers]

    def tick(self, now: float, keep: bool) -> float:
        """One tick at ``now``; returns when it ends (its start or stop jobs done)."""
        if self.max_ticks is not None and self.tick_count >= self.max_ticks:
            raise TooLong(f"{self.tick_count} ticks by {now:.0f}s, the run's bound, before every message was served and the fleet rested")
        backlog = FleetBacklog(
            ready=len(self.waiting),
            in_flight=self.in_flight,
            oldest_age=now - self.arrivals[self.waiting[0]] if self.waiting else None,
            done_total=float(self.done),
            busy_seconds_total=self.busy,
        )
        target = self.controller.target(backlog, [w.unit() for w in self.workers], now)
        up = sorted((w for w in self.workers if w.stopping_since is None), key=lambda w: w.number)
        self.tick_count += 1
        ends = now
        acted = target > len(up)  # a scale-down that waits for long tasks stops nothing: not an action
        if target > len(up):
            taken = {w.number for w in self.workers}
            free_numbers = (k for k in range(1, 10**6) if k not in taken)
            startups = self.workload.startups
            late = []
            for _ in range(target - len(up)):
                w = _Worker(next(free_numbers), now, now + startups[self.started % len(startups)])
                self.started += 1
                self.workers.append(w)
                self.seq += 1
                heapq.heappush(self.readiness, (w.ready_at, self.seq, w))
                ends = max(ends, min(w.ready_at, now + START_WAIT))
                if w.ready_at > now + START_WAIT:
                    late.append(w.number)  # its start job still pending when the tick stops waiting
            observe = getattr(self.controller, "observe_startup", None)
            if observe is not None:
                # As scaler.tick: the jobs' duration when all ended in the wait; the late ones by timestamps next tick.
                observe(None if late else ends - now, tuple(late))
        if target >= len(up):
            for w in up:
                w.paused = False  # as scaler.tick: a tick that waits for none removes the pauses
            self.waiting_since = None  # as scaler.tick: a tick that does not wait (no scale-down) ends the wait
        for w in self.victims(up, len(up) - target, now, backlog) if target < len(up) else []:
            acted = True
            self.stopped_starting += now < w.ready_at
            self.stop(w, now)
            ends = max(ends, min(w.last_done, now + self.grace, now + STOP_WAIT, now + max(STOP_WAIT_FLOOR, self.interval - 1.0)))
        self.actions += acted
        self.after_end += acted and now >= self.workload.trace.duration
        if acted:
            self.last_action = now
            self.moves.append((self.tick_count, 1 if target > len(up) else -1))
        self.count_live(now)
        if keep:
            self.ticks.append(Tick(now, backlog.ready, self.in_flight, backlog.oldest_age, len(up), target, acted))
        return ends

    def run(self, keep_ticks: bool) -> None:
        arrivals, n = self.arrivals, len(self.arrivals)
        next_arrival = 0
        next_tick = 0.0
        while True:
            t_arrival = arrivals[next_arrival] if next_arrival < n else INF
            t_done = self.completions[0][0] if self.completions else INF
            t_ready = self.readiness[0][0] if self.readiness else INF
            t_timer = self.timers[0][0] if self.timers else INF
            now = min(t_arrival, t_done, t_ready, t_timer, next_tick)
            if now > self.duration and next_arrival == n and not self.waiting and not self.in_flight and now > max(self.end, self.last_action) + REST:
                break  # past the trace, every message served, and the fleet at rest
            if t_done == now:
                _, seq, w, m = heapq.heappop(self.completions)
                if seq in self.cancelled:
                    self.cancelled.discard(seq)  # cut off by a stop: it never completes
                else:
                    self.complete(w, now, m)
            elif t_timer == now:
                _, _, kind, what = heapq.heappop(self.timers)
                if kind == "cut":
                    self.cut_off(what, now)  # type: ignore[arg-type]
                else:
                    self.redeliver(what)  # type: ignore[arg-type]
            elif t_ready == now:
                w = heapq.heappop(self.readiness)[2]
                if not w.gone and w.stopping_since is None:
                    w.ready = True
            elif t_arrival == now:
                self.waiting.append(next_arrival)
                next_arrival += 1
            else:
                ends = self.tick(now, keep_ticks)
                while self.schedule and self.schedule[0] <= now:
                    self.schedule.popleft()
                next_tick = max(self.schedule.popleft() if self.schedule else next_tick + self.interval, ends)
            if self.waiting:
                self.fetch(now)
        self.horizon = max(self.duration, self.end, self.last_action)
        if self.last_change > self.horizon:  # the ticks at rest counted past it: the fleet has not changed since
            self.worker_seconds -= self.live * (self.last_change - self.horizon)
        else:
            self.count_live(self.horizon)


def simulate(
    workload: Workload,
    controller: Controller,
    *,
    policy: str,
    interval: float,
    initial_workers: int,
    min_workers: int,
    keep_ticks: bool = False,
    victim: str = "least-busy",
    grace: float = GRACE,
    heartbeat: float = HEARTBEAT,
    schedule: Sequence[float] = (),
    max_ticks: int | None = None,
) -> RunResult:
    """Replay ``workload`` against ``controller``; deterministic for a given workload.
    ``victim``: which instances a scale-down stops; ``grace``: GRACEFUL_SHUTDOWN_TIMEOUT;
    ``schedule``: when to tick (a recorded run's ticks; a tick that runs long delays the next,
    as the timer does), then every ``interval`` after its last; ``max_ticks``: TooLong when
    the run would tick more often than that (a guard for ``dramactl replay``; None: none)."""
    run = _Run(workload, controller, interval, initial_workers, victim, grace, heartbeat, schedule, max_ticks)
    run.run(keep_ticks)
    bound = work_lower_bound(workload.arrivals, workload.services, workload.model.threads, min_workers, workload.trace.duration)
    return RunResult(
        workload.trace.name, policy, list(run.waits.values()), run.worker_seconds, bound, run.peak, run.actions, workload.trace.duration,
        run.ticks, run.horizon, workload.seed, count_flaps(run.moves), run.discarded, run.cut, run.deferred, run.after_end,
        run.stopped_starting,
    )
