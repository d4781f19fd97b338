"""Prometheus metrics in the text exposition format (version 0.0.4), rendered from what a tick or status saw.

Three deliveries, one renderer:

- each tick writes ``dramactl.prom`` into ``METRICS_TEXTFILE_DIR`` (node_exporter's
  textfile collector reads it), atomically: a temporary file in the same directory,
  then a rename;
- ``dramactl metrics`` prints the same text from ``dramactl status``'s object;
- the dashboard serves it at ``/metrics``.

The text is written here rather than with ``prometheus_client``: importing it costs
about 60 ms, more than a whole tick's margin over its budget (``bench.tick_budget``).
The format is small and fixed; the tests parse the output with prometheus_client's
own parser and a real Prometheus scrapes it.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .victims import KINDS

TEXTFILE_NAME = "dramactl.prom"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: systemd's ActiveState values: each is exported, 0 included, so a state that empties reads 0, not absent.
STATES = ("active", "activating", "deactivating", "failed", "inactive", "reloading")
DIRECTIONS = ("up", "down")

QUEUE_FIGURES = (
    ("ready", "dramactl_queue_ready_messages", "Messages ready to be fetched."),
    ("delayed", "dramactl_queue_delayed_messages", "Messages in the delay queue."),
    ("due", "dramactl_queue_due_messages", "Delayed messages whose eta has passed."),
    ("in_flight", "dramactl_queue_in_flight_messages", "Messages fetched by a live worker and not yet acked."),
    ("orphaned", "dramactl_queue_orphaned_messages", "Messages fetched by a worker whose heartbeat expired."),
    ("dead", "dramactl_queue_dead_messages", "Dead-lettered messages."),
    ("oldest_age", "dramactl_queue_oldest_message_age_seconds", "Wait of the oldest ready message (0 when none is ready)."),
)

#: Every metric name with its type and help, in the order rendered (README's table lists the same).
METRICS = [(name, "gauge", text) for _, name, text in QUEUE_FIGURES] + [
    ("dramactl_instances", "gauge", "Worker instances (dramatiq-worker@N.service) by systemd active state."),
    ("dramactl_target_instances", "gauge", "Fleet size the last tick decided."),
    ("dramactl_scaling_actions_total", "counter", "Worker instances started (direction=up) or stopped (direction=down) by ticks and manual commands."),
    ("dramactl_scale_down_stops_total", "counter", "Worker instances scale-downs stopped, by what each ran when chosen: idle, busy (no idle one was left), unreported (no hook report)."),
    ("dramactl_scale_down_waiting_since_timestamp_seconds", "gauge", "When the scale-down the last tick made began to wait for long tasks (Unix time; absent when none waits)."),
    ("dramactl_recycles_total", "counter", "Worker instances replaced because their memory passed WORKER_RECYCLE_MEMORY."),
    ("dramactl_instance_memory_bytes", "gauge", "Memory of each running worker instance (systemd's MemoryCurrent), when read."),
    ("dramactl_tick_duration_seconds", "gauge", "How long the last tick took: read, decide, act."),
    ("dramactl_last_tick_timestamp_seconds", "gauge", "When the last tick ran (Unix time)."),
    ("dramactl_paused", "gauge", "1 when autoscaling is paused, else 0."),
    # Several hosts, one fleet (FLEET_NAME set): as this host saw the fleet at its last tick or status.
    ("dramactl_fleet_target_instances", "gauge", "The fleet-wide target of the last fleet decision."),
    ("dramactl_fleet_cap_instances", "gauge", "The fleet's cap: FLEET_MAX_PROCESSES, or the live hosts' MAX_PROCESSES added up."),
    ("dramactl_fleet_host_instances", "gauge", "Instances up on each live host of the fleet (host=hostname, host_id=machine-id)."),
    ("dramactl_fleet_host_share_instances", "gauge", "Each live host's share of the fleet's target."),
    ("dramactl_fleet_live_hosts", "gauge", "Hosts of the fleet whose heartbeat has not expired."),
    ("dramactl_fleet_failing_hosts", "gauge", "Live hosts whose instances fail: left out of the split of the target and MIN."),
    ("dramactl_instance_threads", "gauge", "Worker threads of an instance, as its dramactl hook reports them (absent: no report)."),
    ("dramactl_instance_busy_threads", "gauge", "Worker threads of an instance running a message (the hook's report)."),
    ("dramactl_instance_oldest_task_age_seconds", "gauge", "How long the oldest message an instance runs has run (0 when idle)."),
    ("dramactl_instance_held_messages", "gauge", "Messages an instance holds unacked because Redis has not stored their follow-ups (a retry, a next step, a result) yet."),
    ("dramactl_instance_intake_paused", "gauge", "1 while an instance takes no new messages: a scale-down waits for its running tasks."),
]
#: Families left out when nothing reports them (no instance with the hook).
OPTIONAL = {"dramactl_scale_down_waiting_since_timestamp_seconds", "dramactl_instance_threads", "dramactl_instance_busy_threads", "dramactl_instance_oldest_task_age_seconds", "dramactl_instance_held_messages", "dramactl_instance_intake_paused"}


@dataclass
class Snapshot:
    """What the metrics say, from a tick's Outcome or from the status object."""

    queues: list[dict] = field(default_factory=list)
    instances: dict[str, int] | None = field(default_factory=dict)  # None: systemd was not read (no series, not 0s)
    target: int | None = None
    actions: dict[str, int] = field(default_factory=dict)
    stopped_by: dict[str, int] = field(default_factory=dict)  # victims.KINDS -> count
    waiting_since: float | None = None  # the last tick's scale-down waits for long tasks since (epoch seconds)
    duration: float | None = None
    last_tick: float | None = None
    paused: bool = False
    recycles: int | None = None
    memory: dict[int, int] = field(default_factory=dict)  # instance number -> bytes
    fleet: dict | None = None  # {"target", "cap", "hosts": [{"name", "id", "up", "share", "failing"}]}: live hosts only
    work: dict[int, dict] = field(default_factory=dict)  # instance number -> {threads, busy, oldest_age}


def _fleet_of_outcome(outcome: Any) -> dict | None:
    view = getattr(outcome, "fleet", None)
    if view is None:
        return None
    f = view.fleet
    hosts = [
        {"name": h.display, "id": h.name, "up": h.up, "share": h.claim if h.paused else h.share if h.name in f.failing else f.shares.get(h.name, 0), "failing": h.failing or h.name in f.failing}
        for h in view.hosts
    ]
    return {"target": f.target, "cap": f.cap, "hosts": hosts}


def _fleet_of_status(status: dict) -> dict | None:
    fleet = status.get("fleet")
    if not isinstance(fleet, dict):
        return None
    hosts = [h for h in status.get("hosts") or [] if isinstance(h, dict) and h.get("live")]
    return {"target": fleet.get("target"), "cap": fleet.get("cap"), "hosts": hosts}


def from_outcome(outcome: Any) -> Snapshot:
    """A tick's Outcome (with the state counters and instances the tick saw)."""
    counts: dict[str, int] = {}
    for u in outcome.instances:
        counts[u.active_state] = counts.get(u.active_state, 0) + 1
    return Snapshot(
        queues=[q.to_dict() for q in outcome.queues or []],
        instances=counts,
        target=outcome.decision.target,
        actions=dict(outcome.actions),
        stopped_by=dict(getattr(outcome, "stopped_by", None) or {}),
        waiting_since=getattr(outcome, "waiting_since", None),
        duration=outcome.duration,
        last_tick=outcome.at,
        paused=outcome.paused,
        recycles=getattr(outcome, "recycles", None),
        memory={u.number: u.memory for u in outcome.instances if getattr(u, "memory", None) is not None},
        fleet=_fleet_of_outcome(outcome),
        work={n: r.to_dict(outcome.at or 0.0) for n, r in (getattr(outcome, "reports", None) or {}).items()},
    )


def from_status(status: dict) -> Snapshot:
    """``dramactl status --json``'s object (queues and instances now, the tick figures from the last tick).

    A source status could not read (``unread``) has no series: its queues are absent, and so are the
    instance counts when systemd was not read (``dramactl_instances{state="active"} 0`` would be a claim)."""
    counts: dict[str, int] = {}
    for i in status.get("instances") or []:
        counts[i["active_state"]] = counts.get(i["active_state"], 0) + 1
    tick = status.get("last_tick") or {}
    return Snapshot(
        queues=list(status.get("queues") or []),
        instances=None if "systemd" in (status.get("unread") or []) else counts,
        target=tick.get("target"),
        actions=dict(status.get("scaling_actions") or {}),
        stopped_by=dict(status.get("scale_down_stops") or {}),
        waiting_since=tick.get("waiting_since"),
        duration=tick.get("duration"),
        last_tick=tick.get("at"),
        paused=bool(status.get("paused")),
        recycles=status.get("recycles"),
        memory={i["number"]: i["memory"] for i in status.get("instances") or [] if i.get("memory") is not None},
        fleet=_fleet_of_status(status),
        work={i["number"]: i["work"] for i in status.get("instances") or [] if isinstance(i.get("work"), dict)},
    )


def _value(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(snap: Snapshot) -> str:
    """The exposition text (pure). A figure that is not known (no tick yet) is left out, not made 0."""
    samples: dict[str, list[tuple[str, float | int]]] = {name: [] for name, _, _ in METRICS}
    for q in snap.queues:
        labels = f'{{queue_name="{_label(str(q["name"]))}"}}'
        for key, name, _ in QUEUE_FIGURES:
            value = q.get(key)
            samples[name].append((labels, 0.0 if value is None and key == "oldest_age" else value or 0))
    for state in sorted(set(STATES) | set(snap.instances)) if snap.instances is not None else ():
        samples["dramactl_instances"].append((f'{{state="{_label(state)}"}}', snap.instances.get(state, 0)))
    if snap.target is not None:
        samples["dramactl_target_instances"].append(("", snap.target))
    for direction in DIRECTIONS:
        samples["dramactl_scaling_actions_total"].append((f'{{direction="{direction}"}}', int(snap.actions.get(direction, 0))))
    for kind in KINDS:
        samples["dramactl_scale_down_stops_total"].append((f'{{chosen="{kind}"}}', int(snap.stopped_by.get(kind, 0))))
    if isinstance(snap.waiting_since, (int, float)):
        samples["dramactl_scale_down_waiting_since_timestamp_seconds"].append(("", float(snap.waiting_since)))
    if snap.recycles is not None:
        samples["dramactl_recycles_total"].append(("", int(snap.recycles)))
    for number, value in sorted(snap.memory.items()):
        samples["dramactl_instance_memory_bytes"].append((f'{{instance="{number}"}}', int(value)))
    if snap.duration is not None:
        samples["dramactl_tick_duration_seconds"].append(("", float(snap.duration)))
    if snap.last_tick is not None:
        samples["dramactl_last_tick_timestamp_seconds"].append(("", float(snap.last_tick)))
    samples["dramactl_paused"].append(("", 1 if snap.paused else 0))
    if snap.fleet is not None:
        for key, name in (("target", "dramactl_fleet_target_instances"), ("cap", "dramactl_fleet_cap_instances")):
            if isinstance(snap.fleet.get(key), int):
                samples[name].append(("", snap.fleet[key]))
        hosts = snap.fleet.get("hosts") or []
        for h in hosts:
            labels = f'{{host="{_label(str(h.get("name")))}",host_id="{_label(str(h.get("id", h.get("name"))))}"}}'
            samples["dramactl_fleet_host_instances"].append((labels, int(h.get("up") or 0)))
            samples["dramactl_fleet_host_share_instances"].append((labels, int(h.get("share") or 0)))
        samples["dramactl_fleet_live_hosts"].append(("", len(hosts)))
        samples["dramactl_fleet_failing_hosts"].append(("", sum(1 for h in hosts if h.get("failing"))))
    for number, work in sorted(snap.work.items()):
        labels = f'{{instance="{number}"}}'
        samples["dramactl_instance_threads"].append((labels, int(work.get("threads") or 0)))
        samples["dramactl_instance_busy_threads"].append((labels, int(work.get("busy") or 0)))
        samples["dramactl_instance_oldest_task_age_seconds"].append((labels, float(work.get("oldest_age") or 0.0)))
        samples["dramactl_instance_held_messages"].append((labels, int(work.get("held") or 0)))
        samples["dramactl_instance_intake_paused"].append((labels, 1 if work.get("paused") is True else 0))

    lines = []
    for name, kind, text in METRICS:
        if not samples[name]:
            continue
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines += [f"{name}{labels} {_value(v)}" for labels, v in samples[name]]
    return "\n".join(lines) + "\n"


def write_textfile(directory: str | os.PathLike[str], text: str) -> Path:
    """Replace ``directory/dramactl.prom`` atomically (node_exporter never reads half a file); mode 0644."""
    target = Path(directory) / TEXTFILE_NAME
    # node_exporter reads *.prom only: the temporary name never matches.
    fd, tmp = tempfile.mkstemp(prefix=".dramactl.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o644)  # on the open file: never a path another user could swap for a link
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target



def publish(directory: str, outcome: Any) -> None:
    """The tick's textfile; a directory the scaler cannot write is logged, never fails the tick."""
    import logging

    try:
        write_textfile(directory, render(from_outcome(outcome)))
    except OSError as exc:
        logging.getLogger("dramactl.metrics").warning(
            "METRICS_TEXTFILE_DIR: cannot write %s/%s (%s); make the directory writable by the scaler's user and run `dramactl configure`",
            directory, TEXTFILE_NAME, exc.strerror or exc,
        )
