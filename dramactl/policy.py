"""The scaling decision: pure functions of what a tick saw, no I/O.

``decide`` is the one entry point; ``POLICY=step`` selects the classic threshold
step operators know, ``POLICY=default`` the backlog/latency policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .instance import WorkerUnit
from .settings import Settings
from .state import TickRecord
from .stats import FleetBacklog


@dataclass(frozen=True)
class ScalingDecision:
    """How many instances there should be, and why (one line for the journal)."""

    current: int
    target: int
    reason: str
    held: bool = False  # True when the policy wanted more but refused (failing units)

    @property
    def delta(self) -> int:
        return self.target - self.current

    def to_dict(self) -> dict:
        return {"current": self.current, "target": self.target, "delta": self.delta, "reason": self.reason, "held": self.held}


def clamp(n: int, settings: Settings) -> int:
    return max(settings.min_processes, min(settings.max_processes, n))


def decide(
    backlog: FleetBacklog,
    instances: Sequence[WorkerUnit],
    settings: Settings,
    history: Sequence[TickRecord] = (),
    now: float = 0.0,
) -> ScalingDecision:
    """The decision for one tick. ``history`` holds earlier ticks, oldest first."""
    current = sum(1 for u in instances if u.is_up)
    if settings.policy == "step":
        target, reason = step_target(backlog, current, settings)
    else:
        target, reason = default_target(backlog, current, settings, history, now)
    failing = sorted(u.number for u in instances if u.is_failing)
    if failing and target > current:
        names = ", ".join(f"@{n}" for n in failing)
        return ScalingDecision(current, current, f"hold: {len(failing)} failing instance(s) ({names}); {reason}", held=True)
    return ScalingDecision(current, target, reason)


def step_target(backlog: FleetBacklog, current: int, settings: Settings) -> tuple[int, str]:
    """The baseline: one more when depth > N x up, one fewer when depth < N x down."""
    depth = backlog.depth
    if current < settings.min_processes:
        return settings.min_processes, f"below MIN_PROCESSES={settings.min_processes}"
    if current > settings.max_processes:
        return settings.max_processes, f"above MAX_PROCESSES={settings.max_processes}"
    up = current * settings.scale_up_multiplier
    down = current * settings.scale_down_multiplier
    if depth > up and current < settings.max_processes:
        return current + 1, f"step: depth {depth} > {up:g}"
    if depth < down and current > settings.min_processes:
        return current - 1, f"step: depth {depth} < {down:g}"
    return current, f"step: depth {depth} within [{down:g}, {up:g}]"


def default_target(
    backlog: FleetBacklog,
    current: int,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
) -> tuple[int, str]:
    """Backlog-proportional sizing with a latency guard and a scale-down window."""
    per_worker = settings.target_backlog_per_worker or settings.worker_threads * 2.0
    want = math.ceil(backlog.backlog / per_worker) if backlog.backlog else 0
    reason = f"backlog {backlog.backlog} / {per_worker:g} per worker = {want}"
    if backlog.oldest_age is not None and backlog.oldest_age > settings.max_queue_wait and want <= current:
        want = current + 1
        reason = f"oldest message waited {backlog.oldest_age:.0f}s > MAX_QUEUE_WAIT={settings.max_queue_wait:g}s"
    want = clamp(want, settings)
    if want > current:
        step = settings.max_scale_up_step or settings.max_processes
        return min(want, current + step), reason
    if want < current:
        window = [r.target for r in history if r.at >= now - settings.scale_down_stabilization]
        floor = max([want, *window]) if window else current
        target = max(want, min(current, floor), current - settings.max_scale_down_step)
        return target, reason + (f"; stabilizing at {target}" if target > want else "")
    return current, reason
