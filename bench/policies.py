"""The policies compared, each a fresh :class:`~dramactl.sim.simulator.Controller` per run.

``dramactl`` runs the real ``dramactl.policy.decide`` with settings parsed by the real
``dramactl.settings.parse``, and keeps history the way the scaler does: one
``decision.record(now, backlog)`` per tick through ``ScalerState.with_tick``, round-
tripped through JSON like the state file, with the start-up its start jobs took.
The HPA/KEDA controller (dramactl/sim/controllers.py) models Kubernetes' algorithm with its documented
defaults, for comparison only. The clairvoyant reference knows every arrival and
service time in advance.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from dramactl.instance import WorkerUnit
from dramactl.bycount import backlog_per_worker
from dramactl.settings import parse
from dramactl.sim.controllers import DramactlController, HpaController, StaticController
from dramactl.stats import FleetBacklog

from dramactl.sim.simulator import Controller, Workload

# The fleet every policy manages: the settings' own defaults (a trace may change MAX and threads).
FLEET = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8"}


@dataclass(frozen=True)
class PolicySpec:
    """A named policy: how often it ticks, how many workers it starts with, its controller."""

    name: str
    interval: float
    initial_workers: int
    make: Callable[[Workload], Controller]
    victim: str = "least-busy"  # which instances its scale-downs stop (dramactl.sim.simulator.VICTIMS): dramactl's rule


@dataclass
class ClairvoyantController:
    """A reference that knows the future: at each tick, the fleet whose threads finish,
    within the next interval, the work waiting now (at the realised mean service)
    plus the work arriving until the instances it would start now are consuming
    and one interval after; clamped to MIN/MAX. Not optimal, but it needs no
    measurement and reacts before the load arrives."""

    workload: Workload
    interval: float
    threads: int
    min_workers: int
    max_workers: int

    def __post_init__(self) -> None:
        self.prefix = [0.0]
        for s in self.workload.services:
            self.prefix.append(self.prefix[-1] + s)
        self.mean = self.prefix[-1] / len(self.workload.services) if self.workload.services else 0.0
        self.lead = self.workload.model.startup_high

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int:
        a = self.workload.arrivals
        lo = bisect.bisect_right(a, now)
        hi = bisect.bisect_right(a, now + self.lead + self.interval)
        work = backlog.backlog * self.mean + self.prefix[hi] - self.prefix[lo]
        need = math.ceil(work / (self.threads * (self.lead + self.interval)) - 1e-9)
        return max(self.min_workers, min(self.max_workers, need))


def predictable(blocks: Sequence[float], tolerance: float = 30.0) -> list[float]:
    """The blocks a causal policy can know are coming: each that lands within ``tolerance``
    of where the three before it put it (their two gaps agreeing within ``tolerance``),
    the evidence issue 20 asks of a recurring-block prediction. Foresight of any other
    block is knowledge no causal policy has."""
    out = []
    for k in range(3, len(blocks)):
        a, b, c = blocks[k - 3 : k]
        if abs((b - a) - (c - b)) <= tolerance and abs(blocks[k] - (c + (c - b))) <= tolerance:
            out.append(blocks[k])
    return out


@dataclass
class ReferenceController:
    """The causal reference for p95 (``python -m bench.oracle``'s, generalized beyond block
    traces and to what a causal policy can know): MIN while nothing waits; MAX within a
    second of a message waiting (it ticks every second) and for ``after`` s since one
    last waited; and MAX from ``ahead`` s before every block that three earlier ones
    predict (:func:`predictable`; ``blocks`` are those). It needs no estimate of the
    load and no tick: a causal policy that keeps MIN while idle waits about as long."""

    blocks: Sequence[float]
    low: int
    high: int
    ahead: float = 45.0
    after: float = 90.0
    last_waiting: float = -math.inf

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int:
        if backlog.ready > 0:
            self.last_waiting = now
        if now - self.last_waiting <= self.after:
            return self.high
        if any(at - self.ahead <= now <= at + self.after for at in self.blocks):
            return self.high
        return self.low


CLAIRVOYANT = "clairvoyant 15s"
REFERENCE = "causal reference 1s"


def lineup(dramactl_interval: int, overrides: dict[str, str] | None = None, *, max_workers: int = 10, threads: int = 8) -> list[PolicySpec]:
    """Baseline step at 180 s, HPA/KEDA at 15 s, static MAX, the clairvoyant reference,
    dramactl's default (``overrides``: extra settings for dramactl's default only, to
    try knobs); every one with the trace's MAX_PROCESSES and WORKER_THREADS."""
    fleet = {**FLEET, "MAX_PROCESSES": str(max_workers), "WORKER_THREADS": str(threads)}
    step = parse({**fleet, "POLICY": "step", "CHECK_INTERVAL": "180"})
    default = parse({**fleet, **(overrides or {}), "POLICY": "default", "CHECK_INTERVAL": str(dramactl_interval)})
    per_pod = backlog_per_worker(default)  # same metric and per-worker target: only the control law differs
    low, high = default.min_processes, default.max_processes
    return [
        PolicySpec("step 180s (baseline)", 180, low, lambda w: DramactlController(step)),
        PolicySpec("hpa/keda 15s", 15, low, lambda w: HpaController(per_pod, low, high), victim="random"),
        PolicySpec("static MAX", 180, high, lambda w: StaticController(high)),
        PolicySpec(CLAIRVOYANT, 15, low, lambda w: ClairvoyantController(w, 15, threads, low, high)),
        PolicySpec(REFERENCE, 1, low, lambda w: ReferenceController(predictable(sorted({at for at, _ in w.trace.blocks})), low, high)),
        PolicySpec(f"dramactl {dramactl_interval}s", dramactl_interval, low, lambda w: DramactlController(default)),
    ]
