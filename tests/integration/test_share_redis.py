"""Several hosts, one fleet, against a real Redis: heartbeats, the transaction, expiry."""

from __future__ import annotations

import json
import threading
import time

import redis as redis_lib

from dramactl import share
from dramactl.settings import parse
from dramactl.stats import FleetBacklog
from tests.conftest import RedisServer

FLEET = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "WORKER_THREADS": "2", "CHECK_INTERVAL": "1", "FLEET_NAME": "t", "FLEET_HOST_TTL": "2"}


def settings_for(server: RedisServer, **extra: str):
    return parse({**server.env, **FLEET, **extra})


def test_hosts_ticking_at_the_same_instant_never_claim_more_than_the_target(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Eight hosts' ticks at once, many rounds: every round, what the hosts may run (their
    claims) adds up to at most the fleet's target, and all of them used one decision."""
    settings = settings_for(redis_server, MAX_PROCESSES="3", FLEET_MAX_PROCESSES="10")
    running = {f"h{i}": 0 for i in range(8)}
    backlog = FleetBacklog(ready=500, in_flight=0)
    for _ in range(4):
        barrier = threading.Barrier(len(running))
        views: dict[str, share.Coordinated] = {}

        def tick(name: str) -> None:
            client = redis_lib.Redis(port=redis_server.port)
            barrier.wait()
            up = running[name]
            views[name] = share.coordinate(client, settings, backlog, up=up, starting=0, occupying=up, name=name)

        threads = [threading.Thread(target=tick, args=(n,)) for n in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, view in views.items():
            running[name] = view.decision.target
        _, hosts, decision, _ = share.read(redis, settings)
        assert decision is not None and decision.target <= 10
        assert sum(h.claim for h in hosts) <= decision.target, [(h.name, h.claim) for h in hosts]
        assert sum(running.values()) <= decision.target
        assert all(running[n] <= 3 for n in running)
        time.sleep(0.6)  # past half a CHECK_INTERVAL: the next round decides again
    # The hosts ended on the decision's shares: the fleet is at its target, not 8 x 3.
    assert sum(running.values()) == decision.target == 10


def test_an_expired_host_is_taken_over_and_the_history_is_one_for_the_fleet(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server)
    backlog = FleetBacklog(ready=100, in_flight=0)
    running = {"a": 0, "b": 0, "c": 0}
    for _ in range(3):
        for name in running:
            up = running[name]
            view = share.coordinate(redis, settings, backlog, up=up, starting=0, occupying=up, name=name)
            running[name] = view.decision.target
            share.settle(redis, settings, claim=running[name], up=running[name], name=name)
        time.sleep(0.6)
    assert running == {"a": 4, "b": 4, "c": 4}
    # c stops ticking (powered off): once its heartbeat expires, a and b take its share.
    deadline = time.monotonic() + settings.host_ttl + settings.check_interval + 2
    while time.monotonic() < deadline:
        for name in ("a", "b"):
            view = share.coordinate(redis, settings, backlog, up=running[name], starting=0, occupying=running[name], name=name)
            running[name] = view.decision.target
        if view.fleet.hosts == ("a", "b"):
            break
        time.sleep(0.3)
    assert view.fleet.hosts == ("a", "b"), view.fleet
    status = share.view(settings, redis)
    assert {h["name"]: h["live"] for h in status["hosts"]} == {"a": True, "b": True, "c": False}
    assert status["fleet"]["cap"] == 8
    # One history for the fleet, written by whichever host decided.
    raw = redis.hget(share.fleet_key(settings), "history")
    records = json.loads(raw)
    assert len(records) >= 3 and all(r["target"] <= 12 for r in records)


def test_a_dry_run_writes_nothing(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server)
    view = share.coordinate(redis, settings, FleetBacklog(ready=10), up=1, starting=0, occupying=1, name="a", write=False)
    assert view.fresh and view.fleet.target >= 1
    assert redis.exists(share.fleet_key(settings)) == 0
