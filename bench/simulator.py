"""A deterministic discrete-event model of a worker fleet under a scaling policy.

Messages arrive (from a :class:`~bench.traces.Trace`), wait in one FIFO queue and are
served by worker threads; workers are systemd instances that take a few seconds to
start consuming and finish their in-flight messages when stopped. Every ``interval``
seconds the policy sees what the real scaler would read (a ``FleetBacklog`` and one
``WorkerUnit`` per loaded instance, as a ``Type=notify`` unit reports itself) and its
target is applied the way ``dramactl.scaler.plan`` does: start the lowest free
numbers, stop the highest. Simplifications: no prefetch, no delayed messages, stops
always complete gracefully, a tick takes no time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from dramactl.instance import WorkerUnit
from dramactl.stats import FleetBacklog

from .traces import Trace

INF = float("inf")


class Controller(Protocol):
    """A policy's per-run state machine: one call per tick, returns the wanted fleet size."""

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int: ...


@dataclass(frozen=True)
class WorkerModel:
    """Threads per worker, a lognormal service time, and a uniform start-up delay."""

    threads: int = 8
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

    @classmethod
    def draw(cls, trace: Trace, model: WorkerModel, seed: int) -> "Workload":
        arrivals = trace.arrivals(random.Random(f"{seed}/{trace.name}/arrivals"))
        services = model.service_times(random.Random(f"{seed}/{trace.name}/service"), len(arrivals))
        startups = model.startup_delays(random.Random(f"{seed}/{trace.name}/startup"), 4096)
        return cls(trace, model, arrivals, services, startups)


@dataclass
class Tick:
    at: float
    ready: int
    in_flight: int
    oldest_age: float | None
    workers: int
    target: int


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


@dataclass
class _Worker:
    number: int
    started: float
    ready_at: float
    ready: bool = False
    busy: int = 0
    stopping_since: float | None = None
    gone: bool = False

    def unit(self) -> WorkerUnit:
        """How systemd would report this instance (``Type=notify``: activating until READY=1)."""
        if self.stopping_since is not None:
            return WorkerUnit(self.number, "deactivating", "stop-sigterm", pid=1000 + self.number, since=self.stopping_since)
        if not self.ready:
            return WorkerUnit(self.number, "activating", "start", pid=1000 + self.number, since=self.started)
        return WorkerUnit(self.number, "active", "running", pid=1000 + self.number, since=self.ready_at)


def simulate(
    workload: Workload,
    controller: Controller,
    *,
    policy: str,
    interval: float,
    initial_workers: int,
    min_workers: int,
    keep_ticks: bool = False,
) -> RunResult:
    """Replay ``workload`` against ``controller``; deterministic for a given workload."""
    trace, model = workload.trace, workload.model
    arrivals, services, startups = workload.arrivals, workload.services, workload.startups
    threads, duration, n = model.threads, trace.duration, len(arrivals)

    workers: list[_Worker] = [_Worker(k + 1, -3600.0, -3600.0, ready=True) for k in range(initial_workers)]
    waiting: deque[int] = deque()
    completions: list[tuple[float, int, _Worker]] = []
    readiness: list[tuple[float, int, _Worker]] = []
    waits: list[float] = []
    ticks: list[Tick] = []
    free_slots = threads * initial_workers
    in_flight = 0
    seq = 0
    started = 0
    actions = 0
    live = len(workers)
    peak = live
    worker_seconds = 0.0
    last_change = 0.0
    next_arrival = 0
    next_tick = 0.0

    def retire(w: _Worker, now: float) -> None:
        nonlocal live, worker_seconds, last_change
        w.gone = True
        workers.remove(w)
        worker_seconds += live * (now - last_change)
        live, last_change = live - 1, now

    while True:
        t_arrival = arrivals[next_arrival] if next_arrival < n else INF
        t_done = completions[0][0] if completions else INF
        t_ready = readiness[0][0] if readiness else INF
        now = min(t_arrival, t_done, t_ready, next_tick)
        if now > duration:
            break
        if t_done == now:
            _, _, w = heapq.heappop(completions)
            w.busy -= 1
            in_flight -= 1
            if w.stopping_since is None:
                free_slots += 1
            elif w.busy == 0:
                retire(w, now)
        elif t_ready == now:
            _, _, w = heapq.heappop(readiness)
            if not w.gone and w.stopping_since is None:
                w.ready = True
                free_slots += threads
        elif t_arrival == now:
            waiting.append(next_arrival)
            next_arrival += 1
        else:
            backlog = FleetBacklog(
                ready=len(waiting),
                in_flight=in_flight,
                oldest_age=now - arrivals[waiting[0]] if waiting else None,
            )
            target = controller.target(backlog, [w.unit() for w in workers], now)
            up = sorted((w for w in workers if w.stopping_since is None), key=lambda w: w.number)
            if target != len(up):
                actions += 1
            if target > len(up):
                taken = {w.number for w in workers}
                free_numbers = (k for k in range(1, 10**6) if k not in taken)
                worker_seconds += live * (now - last_change)
                for _ in range(target - len(up)):
                    w = _Worker(next(free_numbers), now, now + startups[started % len(startups)])
                    started += 1
                    workers.append(w)
                    seq += 1
                    heapq.heappush(readiness, (w.ready_at, seq, w))
                live, last_change = len(workers), now
                peak = max(peak, live)
            for w in reversed(up[target:] if target < len(up) else []):
                w.stopping_since = now
                if w.ready:
                    free_slots -= threads - w.busy
                if w.busy == 0:
                    retire(w, now)
            if keep_ticks:
                ticks.append(Tick(now, backlog.ready, in_flight, backlog.oldest_age, len(up), target))
            next_tick += interval
        while waiting and free_slots:
            w = max((w for w in workers if w.ready and w.stopping_since is None), key=lambda w: threads - w.busy)
            m = waiting.popleft()
            waits.append(now - arrivals[m])
            w.busy += 1
            in_flight += 1
            free_slots -= 1
            seq += 1
            heapq.heappush(completions, (now + services[m], seq, w))

    worker_seconds += live * (duration - last_change)
    waits.extend(duration - arrivals[m] for m in waiting)
    waits.extend(duration - arrivals[m] for m in range(next_arrival, n))
    bound = trace.fluid_lower_bound(model.mean_service, threads, min_workers)
    return RunResult(trace.name, policy, waits, worker_seconds, bound, peak, actions, duration, ticks)
