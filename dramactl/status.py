"""Everything ``dramactl status`` shows, gathered as one plain dict.

Each source is read independently: when Redis or systemd cannot be reached the
rest is still reported, the problem lands in ``errors`` and the source in ``unread``
(``"redis"``, ``"systemd"``), from which ``dramactl status`` takes its exit code.
"""

from __future__ import annotations

import time
from dataclasses import replace

from . import policyview, queue, share
from .fleet import Fleet, FleetError
from .settings import Settings, SettingsError
from .state import StateStore
from .stats import FleetBacklog


def limits(settings: Settings) -> dict:
    """MIN/MAX, the policy and the thresholds in force."""
    return {
        "min": settings.min_processes,
        "max": settings.max_processes,
        "policy": settings.policy,
        "check_interval": settings.check_interval,
        "scale_up_multiplier": settings.scale_up_multiplier,
        "scale_down_multiplier": settings.scale_down_multiplier,
        "target_backlog_per_worker": settings.target_backlog_per_worker or None,
        "max_queue_wait": settings.max_queue_wait,
        "scale_down_stabilization": settings.scale_down_stabilization,
    }


def collect(settings: Settings, *, systemd: bool = True, fleet: Fleet | None = None) -> dict:
    """The status object printed by ``dramactl status --json``."""
    errors: list[str] = []
    unread: list[str] = []
    now = time.time()
    out: dict = {"time": now, "queues": [], "totals": None, "instances": [], "timer": None}
    backlog: FleetBacklog | None = None
    units: list = []
    client = queue.connect(settings)
    work: dict = {}
    try:
        probe = queue.read_probe(settings, client, strict=False)
        stats, work = probe.queues, probe.instances
        errors += [f"redis: {line}" for line in probe.damaged]
        good = [q for q in stats if q.error is None]
        out["queues"] = [q.to_dict() for q in good]
        backlog = FleetBacklog.of(good)
        out["totals"] = backlog.to_dict()
        errors += [f"redis: {queue.queue_error(q)}" for q in stats if q.error is not None]
        if len(good) < len(stats):
            unread.append("redis")
    except SettingsError as exc:
        errors.append(f"redis: {exc}")
        unread.append("redis")
    out["fleet"], out["hosts"] = None, []
    if settings.fleet_name:
        try:
            with queue.redis_errors(settings):
                out.update(share.view(settings, client))
        except SettingsError as exc:
            errors.append(f"fleet: {exc}")
            if "redis" not in unread:
                unread.append("redis")
    if systemd:
        try:
            fleet = fleet or Fleet()
            units = fleet.instances(details=True)
            out["instances"] = [
                {
                    **u.to_dict(),
                    "uptime": round(now - u.since, 1) if u.since and u.active_state == "active" else None,
                    # what it runs, from the worker hook's report (None: no report, dramactl cannot see inside it)
                    "work": work[u.number].to_dict(now) if u.number in work else None,
                }
                for u in units
            ]
            out["timer"] = fleet.timer().to_dict()
        except FleetError as exc:
            errors.append(f"systemd: {exc}")
            unread.append("systemd")
    state = StateStore(settings.state_dir).load()
    out["paused"] = state.paused
    out["size"] = state.size
    out["recovery"] = state.recovery.__dict__
    out["threads"] = state.threads or settings.worker_threads
    out["last_tick"] = state.history[-1].__dict__ if state.history else None
    out["scaling_actions"] = {"up": state.actions[0], "down": state.actions[1]}
    out["scale_down_stops"] = state.stops_by_kind()
    out["recycles"] = state.recycles
    from .rollout import in_progress

    out["rollout"] = in_progress(settings.state_dir)  # a rolling restart holding the fleet, or None
    out["recycle_memory"] = settings.worker_recycle_memory or None
    out["limits"] = limits(settings)
    # What the active policy decides from: the default policy's measured figures, or the step rule's thresholds.
    # The policy sizes the workers by the threads they run (the operator's --threads T), as the tick does.
    out["policy"] = policyview.view(backlog, units, replace(settings, worker_threads=out["threads"]), state.history, now)
    timer = out["timer"]
    if timer and timer.get("interval") and abs(timer["interval"] - settings.check_interval) > 0.5:
        errors.append(
            f"CHECK_INTERVAL: timer fires every {timer['interval']:g}s but CHECK_INTERVAL={settings.check_interval}; run `dramactl install` to apply it"
        )
    out["errors"] = errors
    out["unread"] = unread
    return out
