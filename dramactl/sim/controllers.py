"""The controllers a replay runs: the real policy, Kubernetes' HPA, a static fleet.

``dramactl`` runs the real ``dramactl.policy.decide`` with settings parsed by the real
``dramactl.settings.parse``, and keeps history the way the scaler does: one
``decision.record(now, backlog)`` per tick through ``ScalerState.with_tick``, round-
tripped through JSON like the state file, with the start-up its start jobs took.
The HPA/KEDA controller is a model of Kubernetes' algorithm with its documented
defaults, for comparison only. ``bench/policies.py`` adds the benchmark's references.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from dramactl.instance import WorkerUnit
from dramactl.policy import ScalingDecision, decide
from dramactl.rates import measure_startup
from dramactl.settings import Settings
from dramactl.state import ScalerState, TickRecord
from dramactl.stats import FleetBacklog


class DramactlController:
    """The real policy, with history persisted between ticks as the oneshot scaler does."""

    def __init__(self, settings: Settings, roundtrip: bool = True) -> None:
        self.settings = settings
        self.roundtrip = roundtrip  # False: keep the state in memory (a replay's ticks; the JSON is most of their cost)
        self.state = ScalerState()
        self.decisions: list[tuple[float, ScalingDecision]] = []

    def target(self, backlog: FleetBacklog, units: Sequence[WorkerUnit], now: float) -> int:
        history = self.state.history
        # As scaler.tick: the instances the last tick left starting are timed by systemd's timestamps.
        timed, still = measure_startup(units, history[-1].starting if history else (), now)
        decision = decide(backlog, units, self.settings, history, now)
        record = replace(decision.record(now, backlog), startup=None if timed is None else round(timed, 3), starting=still)
        self._save(record)
        self.decisions.append((now, decision))
        return decision.target

    def _save(self, record: TickRecord) -> None:
        if not self.roundtrip:
            self.state = self.state.with_tick(record)
            return
        saved = json.dumps(self.state.with_tick(record).to_dict())
        self.state = ScalerState.from_dict(json.loads(saved))

    def observe_startup(self, seconds: float | None, late: Sequence[int] = ()) -> None:
        """What scaler.tick does after its start jobs: when they all ended within its wait,
        the record keeps how long they took; the ``late`` ones are left for the next tick
        to time from systemd's timestamps."""
        *kept, last = self.state.history
        if seconds is not None:
            last = replace(last, startup=round(max(seconds, last.startup or 0.0), 3))
        last = replace(last, starting=tuple(sorted({*last.starting, *late})))
        self.state = replace(self.state, history=(*kept, last))


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
