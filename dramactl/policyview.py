"""The active policy's own view, for ``status`` and the dashboard: what it decides from, as fields.

For ``POLICY=default`` these are the figures of the tick's reason, as the same pure :func:`dramactl.policy.aim`
returns them over the same backlog, instances and tick history (not computed again here): the measured arrival
rate, the mean service time, the busy threads, the learned start-up, and the fleet each rule asks for (the
arrivals, the drain of what waits beyond the queue's noise, the latency guard, a recurring block). Before the workers have reported
any work the policy sizes by count, and the view says so. For ``POLICY=step`` it is the step rule's thresholds
only. Pure: no I/O; not on the tick's path.
"""

from __future__ import annotations

from typing import Sequence

from . import policy
from .instance import WorkerUnit
from .rates import learned_startup
from .settings import Settings
from .state import TickRecord
from .stats import FleetBacklog


def step_view(current: int, backlog: FleetBacklog | None, settings: Settings) -> dict:
    """The step rule: one more above ``workers x SCALE_UP_THRESHOLD_MULTIPLIER``, one fewer below the down one."""
    return {
        "name": "step",
        "workers": current,
        "depth": None if backlog is None else backlog.depth,
        "scale_up_above": current * settings.scale_up_multiplier,
        "scale_down_below": current * settings.scale_down_multiplier,
    }


def default_view(
    backlog: FleetBacklog, units: Sequence[WorkerUnit], settings: Settings, history: Sequence[TickRecord], now: float
) -> dict:
    """The default policy's inputs and each rule's fleet, as a tick at ``now`` would see them:
    the figures :func:`dramactl.policy.aim` rested on, as it returns them."""
    up = [u for u in units if u.is_up]
    current, starting = len(up), sum(1 for u in up if policy.is_starting(u))
    decision = policy.aim(backlog, current, starting, settings, history, now)
    return {
        "name": "default",
        "workers": current,
        "starting": starting,
        "startup": round(learned_startup(history), 2),
        "startup_learned": any(r.startup is not None for r in history),
        "arrival_rate": None,
        "service_time": None,
        "busy_threads": None,
        **(decision.figures or {}),
        "wanted": decision.wanted,
        "target": decision.target,
        "reason": decision.reason,
    }


def view(
    backlog: FleetBacklog | None, units: Sequence[WorkerUnit], settings: Settings, history: Sequence[TickRecord], now: float
) -> dict:
    """The active policy's view; ``backlog`` None (Redis not read): the default policy's figures are unknown."""
    if settings.policy == "step":
        return step_view(sum(1 for u in units if u.is_up), backlog, settings)
    if backlog is None:
        return {"name": settings.policy, "by": None, "unavailable": "Redis could not be read"}
    out = default_view(backlog, units, settings, history, now)
    if settings.fleet_name:
        out["note"] = f"this host's view; fleet {settings.fleet_name} decides from every host's instances and its own history (see fleet)"
    return out


def _n(value: object) -> str:
    return "-" if value is None else str(value)


def describe(v: dict) -> list[str]:
    """The view as text lines (``status``); the dashboard shows the same fields as cards."""
    if v.get("name") == "step":
        return [
            f"policy step: up above {v['scale_up_above']:g}, down below {v['scale_down_below']:g} "
            f"(depth {_n(v.get('depth'))}, {v['workers']} workers x SCALE_UP/DOWN_THRESHOLD_MULTIPLIER)"
        ]
    if v.get("by") is None:
        return [f"policy {v.get('name')}: {v.get('unavailable', 'unknown')}"]
    startup = f"start-up {v['startup']:g}s ({'learned' if v['startup_learned'] else 'assumed until a start is timed'})"
    needs = v["needs"]
    if v["by"] == "count":
        lines = [f"policy default, by count until workers report work: {v['backlog_per_worker']:g} per worker; {startup}"]
        lines.append(f"  needs: backlog {_n(needs.get('backlog'))}, latency guard {_n(needs.get('latency_guard'))}; wants {_n(v['wanted'])}, target {v['target']}")
        if v.get("note"):
            lines.append(f"  ({v['note']})")
        return lines
    rate = "-" if v["arrival_rate"] is None else f"{v['arrival_rate']:.2f}/s"
    lines = [f"policy default, by work: arrivals {rate} x E[S] {v['service_time']:.2f}s = {v['busy_threads']:.1f} busy threads; {startup}"]
    lines.append(
        f"  needs: arrivals {_n(needs.get('arrivals'))}, drain {_n(needs.get('drain'))} ({v['waiting']} waiting, in {v['drain_seconds']:g}s), "
        f"latency guard {_n(needs.get('latency_guard'))}, recurring block {_n(needs.get('recurring'))}, rising load {_n(needs.get('rising'))}; "
        f"wants {_n(v['wanted'])}, target {v['target']}"
    )
    if v.get("note"):
        lines.append(f"  ({v['note']})")
    return lines
