"""The policies compared, each a fresh :class:`~bench.simulator.Controller` per run.

``dramactl`` runs the real ``dramactl.policy.decide`` with settings parsed by the real
``dramactl.settings.parse``, and keeps history the way the scaler does: one
``decision.record(now, backlog)`` per tick through ``ScalerState.with_tick``, round-
tripped through JSON like the state file. The HPA/KEDA controller is a model of
Kubernetes' algorithm with its documented defaults, for comparison only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from dramactl.instance import WorkerUnit
from dramactl.policy import ScalingDecision, backlog_per_worker, decide
from dramactl.settings import Settings, parse
from dramactl.state import ScalerState
from dramactl.stats import FleetBacklog

from .simulator import Controller

# The fleet every policy manages: the settings' own defaults.
FLEET = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8"}


@dataclass(frozen=True)
class PolicySpec:
    """A named policy: how often it ticks, how many workers it starts with, its controller."""

    name: str
    interval: float
    initial_workers: int
    make: Callable[[], Controller]


class DramactlController:
    """The real policy, with history persisted between ticks as the oneshot scaler does."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = ScalerState()
        self.decisions: list[tuple[float, ScalingDecision]] = []

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int:
        decision = decide(backlog, units, self.settings, self.state.history, now)
        saved = json.dumps(self.state.with_tick(decision.record(now, backlog)).to_dict())
        self.state = ScalerState.from_dict(json.loads(saved))
        self.decisions.append((now, decision))
        return decision.target


@dataclass
class HpaController:
    """Kubernetes HPA on a KEDA external metric (AverageValue target), default behaviour:

    desired = ceil(total / target-per-pod) unless within the 10 % tolerance; scale-up
    stabilization 0 s and at most max(+100 %, +4 pods) per 15 s; scale-down to the
    highest recommendation of the last 300 s, at most -100 % per 15 s; then MIN/MAX.
    It gets dramactl's metric (ready + due + in flight) and per-worker target, not
    KEDA's Redis default (LLEN alone, 5 per pod), so only the control law differs.
    """

    per_pod: float
    min_replicas: int
    max_replicas: int
    tolerance: float = 0.1
    down_window: float = 300.0
    recommendations: list[tuple[float, int]] = field(default_factory=list)

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int:
        current = sum(1 for u in units if u.is_up)
        total = backlog.backlog
        desired = current
        if current == 0 or abs(1.0 - total / (self.per_pod * current)) > self.tolerance:
            desired = math.ceil(total / self.per_pod)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - self.down_window]
        self.recommendations.append((now, desired))
        down = max(r for _, r in self.recommendations)
        if desired > current:
            wanted = desired  # scale-up window 0 s: the newest recommendation
        elif down < current:
            wanted = down
        else:
            wanted = current
        wanted = min(wanted, max(2 * current, current + 4))
        return max(self.min_replicas, min(self.max_replicas, wanted))


@dataclass
class StaticController:
    size: int

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int:
        return self.size


def lineup(dramactl_interval: int, overrides: dict[str, str] | None = None) -> list[PolicySpec]:
    """Baseline step at 180 s, HPA/KEDA at 15 s, static MAX, dramactl's default
    (``overrides``: extra settings for dramactl's default only, to try knobs)."""
    step = parse({**FLEET, "POLICY": "step", "CHECK_INTERVAL": "180"})
    default = parse({**FLEET, **(overrides or {}), "POLICY": "default", "CHECK_INTERVAL": str(dramactl_interval)})
    per_pod = backlog_per_worker(default)  # same metric and per-worker target: only the control law differs
    low, high = default.min_processes, default.max_processes
    return [
        PolicySpec("step 180s (baseline)", 180, low, lambda: DramactlController(step)),
        PolicySpec("hpa/keda 15s", 15, low, lambda: HpaController(per_pod, low, high)),
        PolicySpec("static MAX", 180, high, lambda: StaticController(high)),
        PolicySpec(f"dramactl {dramactl_interval}s", dramactl_interval, low, lambda: DramactlController(default)),
    ]
