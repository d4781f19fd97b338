"""Replace-then-drain on a host of a shared fleet, against a real Redis: the replacement's place is
claimed in the fleet before it starts (or the old instance drains first when the fleet is at
FLEET_MAX_PROCESSES), and a rolling restart keeps the host's heartbeat alive however long it runs;
a host whose share shrinks stops its least busy instances (issue 19).

systemd's side is a stand-in (:class:`StandIn`: units appear and disappear when asked, a stop may
take time); what is checked is what the real tick, ``dramactl restart`` and share.py write to the
real Redis around each job. The same steps against a real systemd: tests/system/test_rollout.py.
"""

from __future__ import annotations

from dataclasses import replace
import time
from typing import Iterable

import pytest
import redis as redis_lib

from dramactl import rollout, scaler, share
from dramactl.fleet import JobResult
from dramactl.instance import WorkerUnit, unit_name
from dramactl.settings import parse

MIB = 1 << 20
OTHER = "other-host"  # the fleet's other host, written through share.reserve as its manual size would be


class StandIn:
    """This host's instances as systemd would list them; each job is checked against the fleet in Redis."""

    def __init__(self, client: redis_lib.Redis, settings, stop_seconds: float = 0.0) -> None:
        self.client, self.settings, self.stop_seconds = client, settings, stop_seconds
        self.units: dict[int, WorkerUnit] = {}
        self.jobs: list[tuple[str, tuple[int, ...]]] = []
        self.seen: list[dict] = []  # the fleet as Redis held it at each job, with what ran here
        self.other = 0  # the other host's instances: it renews its heartbeat before each look, as its ticks would

    def look(self, when: str) -> None:
        if self.other:
            share.reserve(self.client, self.settings, target=self.other, up=self.other, occupying=self.other, paused=False, name=OTHER)
        snap = share.snapshot(self.client, self.settings)
        live = {h.name: h for h in snap.live()}
        me = live.get(share.host_id())
        self.seen.append({
            "when": when,
            "here": len(self.units),
            "claim": me.claim if me else None,
            "live": me is not None,
            "others_up": sum(h.up for n, h in live.items() if n != share.host_id()),
        })

    def instances(self, details: bool = False, timed: Iterable[int] = (), memory: bool = False) -> list[WorkerUnit]:
        return [self.units[n] for n in sorted(self.units)]

    def start(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        numbers = tuple(numbers)
        if numbers:
            self.jobs.append(("start", numbers))
            for n in numbers:
                self.units[n] = WorkerUnit(n, "active", "running", memory=50 * MIB)
            self.look(f"start {numbers}")
        return [JobResult(unit_name(n), "start", "done") for n in numbers]

    def stop(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        numbers = tuple(numbers)
        if numbers:
            self.jobs.append(("stop", numbers))
            deadline = time.monotonic() + self.stop_seconds
            while time.monotonic() < deadline:  # a drain that takes its time: the fleet is looked at meanwhile
                time.sleep(0.2)
                self.look(f"draining {numbers}")
            for n in numbers:
                self.units.pop(n, None)
            self.look(f"stopped {numbers}")
        return [JobResult(unit_name(n), "stop", "done") for n in numbers]

    def restart(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        return []

    def timeouts(self, number: int) -> tuple[float, float]:
        return 90.0, 75.0

    def why_not_started(self, number: int) -> str:
        return ""

    def kill(self, numbers: Iterable[int], signal: int = 9) -> None:
        pass

    def reset_failed(self, numbers: Iterable[int]) -> None:
        pass


@pytest.fixture
def fleet_env(settings_env: dict[str, str]) -> dict[str, str]:
    return {**settings_env, "FLEET_NAME": "f", "MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "CHECK_INTERVAL": "1", "GRACEFUL_SHUTDOWN_TIMEOUT": "5"}


def host_with_two(redis: redis_lib.Redis, env: dict[str, str], stop_seconds: float = 0.0, other: int = 2):
    """This host at two instances (scale-to, as an operator would: its claim written first), the other host
    at ``other``: with FLEET_MAX_PROCESSES=4 and other=2 the fleet is at its cap."""
    settings = parse(env)
    here = StandIn(redis, settings)
    scaler.scale_to(settings, 2, fleet=here)  # type: ignore[arg-type]
    assert share.reserve(redis, settings, target=other, up=other, occupying=other, paused=False, name=OTHER) == other
    here.jobs.clear(), here.seen.clear()
    here.stop_seconds, here.other = stop_seconds, other
    return settings, here


def never_past(here: StandIn, cap: int) -> None:
    """At every job: what runs here is claimed in the fleet, and the fleet runs at most its cap."""
    assert here.seen
    for s in here.seen:
        assert s["claim"] is not None and s["here"] <= s["claim"], s
        assert s["here"] + s["others_up"] <= cap, s


def test_a_recycle_at_the_fleets_cap_drains_first_and_says_so(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    settings, here = host_with_two(redis, {**fleet_env, "FLEET_MAX_PROCESSES": "4", "WORKER_RECYCLE_MEMORY": "128M"})
    here.units[1] = WorkerUnit(1, "active", "running", memory=200 * MIB)
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.recycled is not None and outcome.recycled.startswith("recycle @1 (200 MiB > 128 MiB)"), outcome.summary()
    assert "recycle @1 (200 MiB > 128 MiB); @1 drained before its replacement (FLEET_MAX_PROCESSES reached: fleet f's other hosts claim the rest)" in outcome.summary(), outcome.summary()
    assert here.jobs == [("stop", (1,)), ("start", (1,))]
    never_past(here, 4)


def test_a_recycle_with_room_in_the_fleet_claims_the_replacement_before_it_starts(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    settings, here = host_with_two(redis, {**fleet_env, "FLEET_MAX_PROCESSES": "5", "WORKER_RECYCLE_MEMORY": "128M"})
    here.units[2] = WorkerUnit(2, "active", "running", memory=200 * MIB)
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.recycled == "recycle @2 (200 MiB > 128 MiB)", outcome.summary()
    assert here.jobs == [("start", (3,)), ("stop", (2,))]
    assert here.seen[0]["claim"] == 3  # the replacement was claimed before its start
    never_past(here, 5)
    assert next(h for h in share.snapshot(redis, settings).hosts if h.name == share.host_id()).claim == 2  # and given back


def test_a_rolling_restart_at_the_fleets_cap_drains_each_instance_first(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    settings, here = host_with_two(redis, {**fleet_env, "FLEET_MAX_PROCESSES": "4"})
    lines: list[str] = []
    outcome = rollout.restart(settings, fleet=here, progress=lines.append)  # type: ignore[arg-type]
    assert outcome.failure is None
    assert here.jobs == [("stop", (2,)), ("start", (2,)), ("stop", (1,)), ("start", (1,))]
    assert sum("FLEET_MAX_PROCESSES reached: fleet f's other hosts claim the rest: draining @" in line for line in lines) == 2, lines
    assert "2 drained before their replacement (FLEET_MAX_PROCESSES reached: fleet f's other hosts claim the rest)" in outcome.summary(), outcome.summary()
    never_past(here, 4)


def test_a_rolling_restart_with_room_claims_each_replacement_before_it_starts(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    settings, here = host_with_two(redis, {**fleet_env, "FLEET_MAX_PROCESSES": "5"})
    rollout.restart(settings, fleet=here)  # type: ignore[arg-type]
    assert here.jobs == [("start", (3,)), ("stop", (2,)), ("start", (2,)), ("stop", (1,))]
    assert [s["claim"] for s in here.seen if s["when"].startswith("start")] == [3, 3]
    never_past(here, 5)


def test_a_rolling_restart_longer_than_the_host_ttl_keeps_the_heartbeat_alive(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    """FLEET_HOST_TTL=2 s; each drain takes 2.5 s (longer than the TTL by itself), the roll about 5 s, while the
    other host keeps ticking: at every look (five a second) this host is live in the fleet."""
    settings, here = host_with_two(redis, {**fleet_env, "FLEET_HOST_TTL": "2", "FLEET_MAX_PROCESSES": "6"}, stop_seconds=2.5)
    began = time.monotonic()
    rollout.restart(settings, fleet=here)  # type: ignore[arg-type]
    assert time.monotonic() - began > 2 * settings.host_ttl
    assert len(here.seen) > 20
    assert all(s["live"] for s in here.seen), [s for s in here.seen if not s["live"]]
    never_past(here, 6)


def test_a_fleet_that_cannot_be_asked_gives_no_room_and_the_renewal_says_so(fleet_env: dict[str, str]) -> None:
    """Redis gone between the tick's probe and the step: no claim can be written, so the replacement does not
    start first (the old instance drains first, and the step names why); a failed renewal is one line, no traceback."""
    from dramactl.seat import Seat
    from tests.conftest import free_port

    settings = parse(fleet_env)
    lines: list[str] = []
    seat = Seat(redis_lib.Redis(port=free_port(), socket_connect_timeout=1), settings, paused=False, report=lines.append)
    allowed, why = seat.room(2, 1)
    assert allowed == 2 and why.startswith("fleet f could not be asked for room (") and "Connection refused" in why, why
    limit, why = rollout.bound(4, allowed, why)
    assert rollout.next_step({1, 2}, 2, [2, 1], limit, 1, why).stop_first
    seat.beat(2)
    assert len(lines) == 1 and lines[0].startswith("fleet f: could not renew this host's heartbeat (") and "Traceback" not in lines[0], lines


class SlowStart(StandIn):
    """Start jobs that take ``start_seconds`` (a slow app import before READY=1); the fleet is looked at meanwhile."""

    start_seconds = 0.0

    def start(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        numbers = tuple(numbers)
        deadline = time.monotonic() + (self.start_seconds if numbers else 0.0)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            self.look(f"starting {numbers}")
        return super().start(numbers, timeout)


def test_a_tick_whose_start_jobs_outlast_the_host_ttl_keeps_the_heartbeat_and_claim_alive(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    """FLEET_HOST_TTL=2 s; the tick grows from 2 to 4 and its start jobs take 2.5 s, while the other host keeps
    ticking: at every look this host is live with its claim covering what it starts (the claim was written once at
    the tick's start and expired halfway through the jobs, letting the other host take the same room)."""
    settings = parse({**fleet_env, "FLEET_HOST_TTL": "2", "FLEET_MAX_PROCESSES": "6"})
    here = SlowStart(redis, settings)
    here.start_seconds, here.other = 2.5, 2
    assert share.reserve(redis, settings, target=2, up=2, occupying=2, paused=False, name=OTHER) == 2
    redis.rpush(f"dramatiq:{settings.queues[0]}", *[f"m{i}" for i in range(200)])  # a backlog: the tick grows
    began = time.monotonic()
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert time.monotonic() - began > settings.host_ttl
    assert outcome.started, outcome.summary()
    starting = [s for s in here.seen if s["when"].startswith("starting")]
    assert len(starting) > 8 and all(s["live"] for s in starting), [s for s in starting if not s["live"]]
    # The first start alone (no instance proves the command yet), then the rest: 5 s of jobs, twice the TTL.
    assert [j for j, _ in here.jobs] == ["start", "start"] and len(here.units) == outcome.decision.target >= 3, here.jobs
    assert all(s["claim"] is not None and s["claim"] >= outcome.decision.target for s in starting), starting
    never_past(here, 6)


def test_a_recycle_whose_drain_outlasts_the_host_ttl_keeps_the_heartbeat_alive(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    """The tick's memory recycle at the fleet's cap drains first; the drain takes 2.5 s, longer than FLEET_HOST_TTL=2:
    at every look this host is live (the tick's seat renews it, as a rolling restart's does)."""
    settings, here = host_with_two(redis, {**fleet_env, "FLEET_HOST_TTL": "2", "FLEET_MAX_PROCESSES": "4", "WORKER_RECYCLE_MEMORY": "128M"}, stop_seconds=2.5)
    scaler.tick(settings, fleet=here)  # type: ignore[arg-type]  # the host's heartbeat and claim as a tick writes them
    here.jobs.clear(), here.seen.clear()
    here.units[1] = WorkerUnit(1, "active", "running", memory=200 * MIB)
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.recycled is not None and "drained before its replacement" in outcome.summary(), outcome.summary()
    assert here.jobs == [("stop", (1,)), ("start", (1,))]
    assert len(here.seen) > 8 and all(s["live"] for s in here.seen), [s for s in here.seen if not s["live"]]
    never_past(here, 4)


def test_the_tick_holds_growth_after_redis_lost_the_fleets_records_and_not_after_a_move_to_another_fleet(
    redis: redis_lib.Redis, fleet_env: dict[str, str]
) -> None:
    """The state file keeps when the host last wrote its claim, and in which fleet. Its heartbeat gone from that
    fleet within the hour (FLUSHALL: Redis restarted empty), the tick keeps what runs and says why; its FLEET_NAME
    changed, the new fleet never had its heartbeat, and the tick grows as a new host would (it said the records
    were lost, and held growth for a TTL)."""
    settings = parse({**fleet_env, "FLEET_MAX_PROCESSES": "8", "MAX_SCALE_UP_STEP": "1"})  # one more a tick: a hold shows
    here = StandIn(redis, settings)
    redis.rpush(f"dramatiq:{settings.queues[0]}", *[f"m{i}" for i in range(200)])
    first = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert first.decision.target >= 1 and len(here.units) == first.decision.target
    redis.delete(share.fleet_key(settings), share.claims_key(settings))  # Redis restarted empty (the queue kept, for the test)
    held = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert held.decision.target == len(here.units) == first.decision.target, held.summary()
    assert "the fleet's records in Redis were lost" in held.decision.reason, held.decision.reason
    moved = replace(settings, fleet_name="g")
    grew = scaler.tick(moved, fleet=here)  # type: ignore[arg-type]
    assert "records in Redis were lost" not in grew.decision.reason, grew.decision.reason
    assert grew.decision.target > first.decision.target, grew.summary()


def test_a_host_whose_share_shrinks_stops_its_least_busy_instances(redis: redis_lib.Redis, fleet_env: dict[str, str]) -> None:
    """Issue 19 in a fleet: the fleet's target falls to MIN and this host's share from 3 to 1. Its tick
    stops the idle @2, then the busy @1 whose task began most recently, and keeps @3 and its older task
    (the highest numbers, the rule without reports, would have cut it)."""
    import json
    import os
    import re

    from dramactl import reports

    settings = parse({**fleet_env, "SCALE_DOWN_STABILIZATION": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "30"})
    here = StandIn(redis, settings)
    scaler.scale_to(settings, 3, fleet=here)  # type: ignore[arg-type]
    scaler.set_paused(settings, False)
    assert share.reserve(redis, settings, target=1, up=1, occupying=1, paused=False, name=OTHER) == 1
    here.jobs.clear()
    now = time.time()
    for number, oldest in ((1, now - 2.0), (2, None), (3, now - 10.0)):  # tasks of 2 s and 10 s: neither long (G/2 = 15 s)
        value = {"threads": 1, "busy": int(oldest is not None), "oldest": None if oldest is None else int(oldest * 1000), "held": 0, "at": int(now * 1000)}
        redis.hset(reports.instances_key(settings.namespace), f"{number}.{os.getpid()}", json.dumps(value))
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.fleet is not None and outcome.fleet.share == 1, outcome.summary()
    assert [p.number for p in outcome.plan.picks] == [2, 1], outcome.summary()
    assert sorted(here.units) == [3]
    assert outcome.stopped_by == {"idle": 1, "busy": 1, "unreported": 0}
    assert [v["chosen"] for v in outcome.to_dict()["victims"]] == ["idle", "busy"]
    assert re.search(r"\| stop @2 \(idle\) @1 \(busy 1/1, oldest [23]s\) \|", outcome.summary()), outcome.summary()
