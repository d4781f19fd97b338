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
    records = [json.loads(r) for r in redis.lrange(share.history_key(settings), 0, -1)]
    assert len(records) >= 3 and all(r["target"] <= 12 for r in records)
    assert redis.hget(share.fleet_key(settings), "history") is None  # out of the hash every tick watches


def test_a_dry_run_writes_nothing(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server)
    view = share.coordinate(redis, settings, FleetBacklog(ready=10), up=1, starting=0, occupying=1, name="a", write=False)
    assert view.fresh and view.fleet.target >= 1
    assert redis.exists(share.fleet_key(settings)) == 0


# --- issue 18 ---------------------------------------------------------------------------------

import pytest  # noqa: E402


def test_two_hosts_with_one_hostname_keep_two_heartbeats_and_the_cap(redis: redis_lib.Redis, redis_server: RedisServer, tmp_path, monkeypatch) -> None:
    """Cloned VMs: both hostnames are 'web', their machine-ids differ. They must not overwrite
    each other's heartbeat (which let the fleet run 7 with a cap of 6)."""
    import socket

    settings = settings_for(redis_server, MAX_PROCESSES="4", FLEET_MAX_PROCESSES="6")
    monkeypatch.setattr(socket, "gethostname", lambda: "web")
    ids = {}
    for n, letter in enumerate("ab"):
        path = tmp_path / f"machine-id-{letter}"
        path.write_text(f"{n + 1:032x}\n")
        ids[letter] = str(path)
    running = {"a": 0, "b": 0}
    for _ in range(4):
        for letter in "ab":
            monkeypatch.setattr(share, "MACHINE_ID", ids[letter])
            up = running[letter]
            view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=up, starting=0, occupying=up)
            running[letter] = view.decision.target
            share.settle(redis, settings, claim=running[letter], up=running[letter])
            assert sum(running.values()) <= 6, running
        time.sleep(0.6)
    assert sum(running.values()) == 6
    _, hosts, _, _ = share.read(redis, settings)
    assert len(hosts) == 2 and {h.label for h in hosts} == {"web"}


def test_scale_to_beyond_the_fleets_room_is_refused_and_within_it_claimed(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server, MAX_PROCESSES="4", FLEET_MAX_PROCESSES="6")
    for name in ("a", "b"):
        share.coordinate(redis, settings, FleetBacklog(ready=500), up=3, starting=0, occupying=3, name=name)
    # c asks for 2 by hand: a and b claim all 6, so there is no room; nothing is written.
    assert share.reserve(redis, settings, target=2, up=0, occupying=0, paused=True, name="c") == 0
    assert redis.hget(share.fleet_key(settings), "host:c") is None
    # a shrinks to 1: c may take 2, and its claim is in the fleet before it starts anything.
    share.settle(redis, settings, claim=1, up=1, name="a")
    assert share.reserve(redis, settings, target=3, up=0, occupying=0, paused=True, name="c") == 2
    assert share.reserve(redis, settings, target=3, up=0, occupying=0, paused=True, partial=True, name="c") == 2
    _, hosts, _, _ = share.read(redis, settings)
    assert {h.name: h.claim for h in hosts} == {"a": 1, "b": 3, "c": 2}
    # b's next tick counts c's claim: the fleet never passes 6.
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=3, starting=0, occupying=3, name="b")
    assert view.decision.target <= 3 and sum(h.claim for h in view.hosts) <= 6


def test_hosts_with_different_min_follow_one_record_and_do_not_flap(redis: redis_lib.Redis, redis_server: RedisServer, caplog) -> None:
    """Issue 18 §3: MIN=5 on a, MIN=2 on b, no backlog: every decision was a fresh one with
    the decider's MIN (5, 2, 5, 2). Now both follow the fleet's record: one target."""
    import logging

    a = settings_for(redis_server, MIN_PROCESSES="5", MAX_PROCESSES="5", POLICY="step")
    b = settings_for(redis_server, MIN_PROCESSES="2", MAX_PROCESSES="5", POLICY="step")
    running = {"a": 0, "b": 0}
    targets = []
    for _ in range(4):
        for name, settings in (("a", a), ("b", b)):
            view = share.coordinate(redis, settings, FleetBacklog(ready=0), up=running[name], starting=0, occupying=running[name], name=name)
            running[name] = view.decision.target
            share.settle(redis, settings, claim=running[name], up=running[name], name=name)
            targets.append(view.fleet.target)
            time.sleep(0.55)  # past half a CHECK_INTERVAL: every tick decides anew
    assert set(targets) == {5}, targets
    assert view.differs == ("MIN_PROCESSES=2 here, 5 for the fleet",) and "following the fleet's" in view.decision.reason
    status = share.view(b, redis)
    assert status["fleet"]["settings_differ"] == ["MIN_PROCESSES=2 here, 5 for the fleet"] and status["fleet"]["min"] == 5
    # The operator sets MIN=2 on a as well: once every live host agrees, the record follows.
    for name in ("a", "b", "a"):
        view = share.coordinate(redis, b, FleetBacklog(ready=0), up=running[name], starting=0, occupying=running[name], name=name)
        time.sleep(0.55)
    assert view.settings["min_processes"] == 2 and view.differs == ()


def test_a_long_outage_does_not_make_the_first_host_back_delete_the_others(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Issue 18 §2b: every heartbeat is two hours old (Redis was down): a ticks first and must
    keep b's entry, which still counts its instances until b has had a TTL to come back."""
    settings = settings_for(redis_server, MAX_PROCESSES="4", FLEET_MAX_PROCESSES="6")
    seconds, _ = redis.time()
    key = share.fleet_key(settings)
    old = seconds - 7200
    for name in ("a", "b"):
        redis.hset(key, f"host:{name}", share.HostEntry(name, 4, up=3, claim=3, at=old, expires=old + 2).to_json())
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=3, starting=0, occupying=3, name="a")
    assert redis.hget(key, "host:b") is not None
    assert [h.name for h in view.hosts] == ["a", "b"] and view.decision.target <= 3


def test_a_failing_host_hands_the_floor_to_a_host_that_serves(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server, MIN_PROCESSES="1", POLICY="step")
    view = share.coordinate(redis, settings, FleetBacklog(ready=0), up=0, starting=0, occupying=0, name="a")
    view = share.coordinate(redis, settings, FleetBacklog(ready=0), up=0, starting=0, occupying=0, name="b")
    assert view.fleet.shares == {"a": 1, "b": 0}
    # a's start failed (settle reports it at once): b's next tick takes the floor.
    share.settle(redis, settings, claim=1, up=1, name="a", failing=True, working=0)
    view = share.coordinate(redis, settings, FleetBacklog(ready=0), up=0, starting=0, occupying=0, name="b")
    assert view.fleet.failing == ("a",) and view.share == 1 and view.floor == 1 and view.decision.target == 1


def test_check_and_status_say_when_this_hosts_settings_differ_from_the_fleets(redis: redis_lib.Redis, redis_server: RedisServer, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from dramactl.cli import main

    first = settings_for(redis_server, MIN_PROCESSES="1")
    share.coordinate(redis, first, FleetBacklog(ready=0), up=1, starting=0, occupying=1, name="other")
    monkeypatch.chdir(tmp_path)
    env = {
        **redis_server.env, **FLEET, "MIN_PROCESSES": "2", "STATE_DIR": str(tmp_path / "state"), "DRAMATIQ_COMMAND": "dramatiq app.tasks",
        "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/dramactl-test/system_bus_socket",
    }
    res = CliRunner().invoke(main, ["check"], env=env, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "this host's settings differ from the fleet's record (MIN_PROCESSES=2 here, 1 for the fleet): it follows the fleet's" in res.output
    # These tests' TTL of 2 s at a 1 s interval leaves outages unseen (docs/fleet.md); the default TTL does not.
    assert "dramactl: warning: FLEET_HOST_TTL=2s is below 2 x CHECK_INTERVAL + 2s (4s)" in res.output
    res = CliRunner().invoke(main, ["check"], env={k: v for k, v in env.items() if k != "FLEET_HOST_TTL"}, catch_exceptions=False)
    assert res.exit_code == 0 and "settings ok" in res.output and "warning" not in res.output, res.output
    res = CliRunner().invoke(main, ["status"], env=env, catch_exceptions=False)
    assert "MIN 1 for the whole fleet" in res.output and "MIN_PROCESSES=2 here, 1 for the fleet" in res.output, res.output


def test_the_history_is_read_only_for_a_new_decision_and_kept_out_of_the_watched_hash(redis: redis_lib.Redis, redis_server: RedisServer, caplog) -> None:
    """Issue 18 §6: the hash every tick reads (and re-reads on a conflict) must not grow with the
    history. A hash written by the layout before (history inside) is migrated at the next decision,
    and a damaged record in the LIST is left out and named."""
    import logging

    settings = settings_for(redis_server)
    key, hist = share.fleet_key(settings), share.history_key(settings)
    redis.hset(key, "history", json.dumps([{"at": 1.0, "backlog": 1, "workers": 1, "target": 1}] * 500))
    share.coordinate(redis, settings, FleetBacklog(ready=10), up=1, starting=0, occupying=1, name="a")
    assert redis.hget(key, "history") is None and redis.llen(hist) == 1
    size = sum(len(k) + len(v) for k, v in redis.hgetall(key).items())
    for _ in range(5):
        time.sleep(0.55)
        share.coordinate(redis, settings, FleetBacklog(ready=10), up=1, starting=0, occupying=1, name="a")
    assert redis.llen(hist) == 6
    assert sum(len(k) + len(v) for k, v in redis.hgetall(key).items()) < size + 200
    share._named.clear()
    redis.rpush(hist, "{not json", json.dumps({"at": 1e400}).replace("1e+400", "Infinity"), "[" * 100_000)
    now = share.snapshot(redis, settings).now
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        assert len(share.read_history(redis, settings, now)) == 6
    assert caplog.text.count(hist) == 3


# --- the claim script and one decision per half interval (1,000 hosts) -------------------------

import multiprocessing  # noqa: E402

from dramactl import claims  # noqa: E402


def _host_process(port: int, env: dict, name: str, rounds: int, barrier, results) -> None:
    """One host in its own process: ``rounds`` ticks, each at the same instant as every other
    host's (the barrier), running what its tick granted, then settling."""
    client = redis_lib.Redis(port=port)
    settings = parse(env)
    up = 0
    for r in range(rounds):
        barrier.wait()
        view = share.coordinate(client, settings, FleetBacklog(ready=1000), up=up, starting=0, occupying=up, name=name)
        up = view.decision.target
        share.settle(client, settings, claim=up, up=up, name=name)
        results.put((r, name, up))
        barrier.wait()
        time.sleep(0.3)


def test_many_hosts_in_processes_ticking_at_one_instant_never_pass_the_cap(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """24 hosts, each its own process, tick at one instant for several rounds with a backlog
    that asks for every instance: what they run never adds up to more than
    FLEET_MAX_PROCESSES, no tick fails, and the fleet ends at its cap."""
    env = {**redis_server.env, **FLEET, "MAX_PROCESSES": "3", "FLEET_MAX_PROCESSES": "10"}
    hosts, rounds = 24, 6
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(hosts), ctx.Queue()
    procs = [ctx.Process(target=_host_process, args=(redis_server.port, env, f"h{i:02d}", rounds, barrier, results)) for i in range(hosts)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * hosts
    running: dict[int, dict[str, int]] = {}
    while not results.empty():
        r, name, up = results.get()
        running.setdefault(r, {})[name] = up
    assert sorted(running) == list(range(rounds)) and all(len(v) == hosts for v in running.values())
    totals = [sum(running[r].values()) for r in range(rounds)]
    assert max(totals) <= 10, totals
    assert all(up <= 3 for r in running for up in running[r].values())
    assert totals[-1] == 10, totals


def test_hosts_claiming_at_one_instant_are_granted_the_room_once(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The claim script alone, 40 threads at once, each asking for 3 from 0 under a cap of 10:
    the grants add up to exactly 10 (not 40 x 3, as a read-then-write would allow)."""
    settings = settings_for(redis_server)
    barrier = threading.Barrier(40)
    grants: dict[str, int] = {}

    def one(i: int) -> None:
        client = redis_lib.Redis(port=redis_server.port)
        barrier.wait()
        grants[f"h{i}"] = claims.claim(client, settings, f"h{i}", "tick", share=3, up=0, occupying=0, target=10, cap=10)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(grants.values()) == 10 and max(grants.values()) <= 3
    stored = redis.hgetall(share.claims_key(settings))
    assert sum(claims.unpack(v)[0] for v in stored.values()) == 10


def test_hosts_that_find_the_decision_stale_at_one_instant_publish_one_decision(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """One decision per half interval: 16 hosts tick at one instant on a stale decision; one
    of them publishes (one record appended to the fleet's history), every host applies it."""
    settings = settings_for(redis_server, MAX_PROCESSES="2", FLEET_MAX_PROCESSES="40")
    names = [f"h{i:02d}" for i in range(16)]
    for name in names:  # every host known, then the decision goes stale
        share.coordinate(redis, settings, FleetBacklog(ready=500), up=0, starting=0, occupying=0, name=name)
    time.sleep(0.6)
    before = redis.llen(share.history_key(settings))
    barrier = threading.Barrier(len(names))
    views: dict[str, share.Coordinated] = {}

    def tick(name: str) -> None:
        client = redis_lib.Redis(port=redis_server.port)
        barrier.wait()
        views[name] = share.coordinate(client, settings, FleetBacklog(ready=500), up=0, starting=0, occupying=0, name=name)

    threads = [threading.Thread(target=tick, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, _, stored, _ = share.read(redis, settings)
    assert redis.llen(share.history_key(settings)) == before + 1
    assert all(v.fleet == stored for v in views.values())
    assert sum(1 for v in views.values() if v.fresh) == 1


def test_the_floor_moves_to_a_host_that_serves_when_the_hosts_holding_it_fail(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """MIN=2 on four idle hosts: the two that hold the floor fail (one's starts fail, one stops
    ticking): the two others run the floor, and the fleet stays within its cap throughout."""
    settings = settings_for(redis_server, MIN_PROCESSES="2", MAX_PROCESSES="2", FLEET_MAX_PROCESSES="4", POLICY="step")
    running = {n: 0 for n in "abcd"}

    def tick(name: str, failing: bool = False) -> share.Coordinated:
        up = running[name]
        view = share.coordinate(redis, settings, FleetBacklog(ready=0), up=up, starting=0, occupying=up, name=name, failing=failing, working=0 if failing else None)
        running[name] = view.decision.target
        share.settle(redis, settings, claim=running[name], up=running[name], name=name)
        return view

    for _ in range(2):
        for name in "abcd":
            tick(name)
        time.sleep(0.55)
    holders = sorted(n for n in running if running[n])
    assert sum(running.values()) == 2 and len(holders) == 2, running
    sick, dead = holders
    healthy = [n for n in "abcd" if n not in holders]
    deadline = time.monotonic() + settings.host_ttl + 3 * settings.check_interval + 2
    while time.monotonic() < deadline:
        tick(sick, failing=True)  # its instances fail; `dead` ticks no more
        for name in healthy:
            tick(name)
        stored = {k.decode(): claims.unpack(v)[0] for k, v in redis.hgetall(share.claims_key(settings)).items()}
        assert sum(stored.values()) <= 4, stored
        if sum(running[n] for n in healthy) >= 2:
            break
        time.sleep(0.3)
    assert sum(running[n] for n in healthy) == 2, running


def test_claims_written_before_a_long_outage_still_count_when_the_first_host_is_back(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Every heartbeat and claim is two hours old (Redis was down): a new host's tick must
    count the others' claims (stretched by the silence) and find no room under the cap."""
    settings = settings_for(redis_server, MAX_PROCESSES="4", FLEET_MAX_PROCESSES="6")
    seconds, _ = redis.time()
    old = seconds - 7200
    for name in ("a", "b"):
        entry = share.HostEntry(name, 4, up=3, claim=3, at=old, expires=old + 2)
        redis.hset(share.fleet_key(settings), f"host:{name}", entry.to_json())
        redis.hset(share.claims_key(settings), name, claims.value(entry))
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=0, starting=0, occupying=0, name="c")
    assert view.decision.target == 0, view.decision.reason
    assert claims.unpack(redis.hget(share.claims_key(settings), "c"))[0] == 0


@pytest.mark.parametrize(
    "value",
    [
        b"3 3 1.0 2.0",  # text, not the packed form
        claims.pack(3, 3, 1.0, 2.0)[:-1],  # one byte short
        claims.pack(100_001, 1, 1.0, 2.0),  # above MOST
        claims.pack(3, 4, 1.0, 2.0),  # counts more under the target than it claims
        claims.pack(3, 3, 1.0, float("inf")),
        claims.pack(3, 3, float("nan"), 2.0),
        claims.pack(3, 3, 2.0, 1.0),  # expires before it was written
        claims.pack(3, 3, 1.0, 1.0 + 2 * 86_400),  # lasts longer than FLEET_HOST_TTL may
        claims.pack(3, 3, 4e9, 4e9 + 60),  # written in the future
    ],
)
def test_a_damaged_claim_is_left_out_and_named(redis: redis_lib.Redis, redis_server: RedisServer, value: bytes, caplog) -> None:
    import logging

    settings = settings_for(redis_server, FLEET_MAX_PROCESSES="6")
    redis.hset(share.claims_key(settings), "bad", value)
    share._named.clear()
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=0, starting=0, occupying=0, name="a")
    assert view.decision.target >= 1
    assert f"ignoring damaged {share.claims_key(settings)} field bad" in caplog.text


def test_a_heartbeat_decision_or_history_record_with_a_huge_integer_is_ignored_and_named(redis: redis_lib.Redis, redis_server: RedisServer, caplog) -> None:
    """A JSON integer no float can hold (10**400) in a heartbeat, the decision or a history record: each is left out
    and named once, and the tick goes on, never an OverflowError."""
    import logging

    settings = settings_for(redis_server)
    for name in ("a", "b"):
        share.coordinate(redis, settings, FleetBacklog(ready=10), up=0, starting=0, occupying=0, name=name)
    key, history = share.fleet_key(settings), share.history_key(settings)
    heartbeat = json.loads(redis.hget(key, "host:b"))
    redis.hset(key, "host:b", json.dumps({**heartbeat, "expires": 10**400}))
    decision = json.loads(redis.hget(key, "decision"))
    redis.hset(key, "decision", json.dumps({**decision, "at": 10**400}))
    record = json.loads(redis.lindex(history, 0))
    redis.lset(history, 0, json.dumps({**record, "busy": 10**400}))
    share._named.clear()
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        _, hosts, read_decision, _ = share.read(redis, settings)
        assert [h.name for h in hosts] == ["a"] and read_decision is None
        view = share.coordinate(redis, settings, FleetBacklog(ready=10), up=0, starting=0, occupying=0, name="a")
    assert view.decision.target >= 1
    assert f"ignoring damaged {key} field host:b in Redis (expires: 1000" in caplog.text
    assert f"ignoring damaged {key} field decision in Redis (at: 1000" in caplog.text
    assert f"ignoring damaged {history} field" in caplog.text and "busy: 1000" in caplog.text


def test_a_failing_hosts_heartbeat_stays_failing_through_a_rolls_renewals(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """reserve (a roll's Seat.room / Seat.beat, a scale-to) renews the heartbeat with the tick's own knowledge kept:
    failing, working, share and starting, so the other hosts keep covering a failing host's share."""
    settings = settings_for(redis_server, MIN_PROCESSES="1", POLICY="step")
    share.coordinate(redis, settings, FleetBacklog(ready=0), up=0, starting=0, occupying=0, name="a")
    share.coordinate(redis, settings, FleetBacklog(ready=0), up=0, starting=0, occupying=0, name="b")
    share.settle(redis, settings, claim=1, up=1, name="a", failing=True, working=0)
    before = next(h for h in share.read(redis, settings)[1] if h.name == "a")
    assert before.failing and before.working == 0
    for _ in range(2):  # a roll: room for a replacement, then a renewal
        share.reserve(redis, settings, target=2, up=1, occupying=1, paused=False, partial=True, name="a")
        share.reserve(redis, settings, target=1, up=1, occupying=1, paused=False, partial=True, name="a")
    after = next(h for h in share.read(redis, settings)[1] if h.name == "a")
    assert (after.failing, after.working, after.share, after.starting) == (True, before.working, before.share, before.starting)
    view = share.coordinate(redis, settings, FleetBacklog(ready=0), up=0, starting=0, occupying=0, name="b")
    assert view.fleet.failing == ("a",) and view.share == 1


def test_reserve_on_a_host_without_a_heartbeat_writes_a_plain_one(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server)
    share.reserve(redis, settings, target=2, up=1, occupying=1, paused=False, name="n")
    entry = next(h for h in share.read(redis, settings)[1] if h.name == "n")
    assert (entry.failing, entry.working, entry.share, entry.starting, entry.claim) == (False, 1, 0, 0, 2)


@pytest.mark.parametrize("which", ["claims", "history"])
def test_a_fleet_key_of_the_wrong_type_is_one_line_naming_it_and_the_fix(redis: redis_lib.Redis, redis_server: RedisServer, which: str) -> None:
    """The claims HASH or the history LIST holding another kind of value (WRONGTYPE): a tick (and, for the claims, a
    settle and a roll's reserve) fails with one line naming the key and the fix, not a raw reply; once deleted, all is well."""
    from dramactl.settings import SettingsError

    settings = settings_for(redis_server)
    tick = lambda: share.coordinate(redis, settings, FleetBacklog(ready=10), up=0, starting=0, occupying=0, name="a")  # noqa: E731
    calls = [tick]
    if which == "claims":
        tick()  # a heartbeat for settle to update
        key = share.claims_key(settings)
        calls += [lambda: share.reserve(redis, settings, target=1, up=0, occupying=0, paused=False, name="a"),
                  lambda: share.settle(redis, settings, claim=1, up=1, name="a")]
    else:
        key = share.history_key(settings)  # no decision yet: the tick reads the history to make one
    redis.delete(key)
    redis.set(key, "not yours")
    for call in calls:
        with pytest.raises(SettingsError) as err:
            call()
        line = str(err.value)
        assert line.startswith(f"FLEET_NAME: Redis key {key} holds a string") and f"DEL {key}" in line and "\n" not in line, line
    redis.delete(key)
    assert tick().decision.target >= 1


# --- hosts whose ticks stop while their workers run; a paused host back; a tick longer than the TTL ---------

from dramactl import reports  # noqa: E402


class Reporting:
    """A host's worker processes reporting as the hook does (dramactl_ready.WorkReporter.flush):
    one field per process, rewritten twice a second with that host's clock, the HASH set to expire
    REPORTS_TTL after each write; ``skew`` shifts that host's clock."""

    def __init__(self, server: RedisServer, settings, host: str, processes: int, skew: float = 0.0, fleet: str | None = None) -> None:
        self.client = redis_lib.Redis(port=server.port)
        self.key = reports.instances_key(settings.namespace, host)
        self.processes, self.skew = processes, skew
        self.fleet = settings.fleet_name if fleet is None else fleet  # the FLEET_NAME the workers were started with
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def write(self) -> None:
        at = int((time.time() + self.skew) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for n in range(1, self.processes + 1):
            report = {"threads": 2, "busy": 1, "oldest": at - 1000, "held": 0, "at": at, "paused": False, "queued": 0, "fleet": self.fleet}
            pipe.hset(self.key, f"{n}.{1000 + n}", json.dumps(report))
        pipe.pexpire(self.key, int(reports.REPORTS_TTL * 1000))
        pipe.execute()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.write()

    def __enter__(self) -> "Reporting":
        self.write()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _ticks(redis: redis_lib.Redis, settings, running: dict[str, int], rounds: int, backlog: FleetBacklog) -> list[share.Coordinated]:
    views = []
    for _ in range(rounds):
        for name in running:
            view = share.coordinate(redis, settings, backlog, up=running[name], starting=0, occupying=running[name], name=name)
            running[name] = view.decision.target
            share.settle(redis, settings, claim=running[name], up=running[name], name=name)
            views.append(view)
        time.sleep(0.6)
    return views


def test_a_host_whose_ticks_stop_while_its_workers_run_still_counts_against_the_cap(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """a's timer stops (or its env file breaks, or its tick hangs) while its 3 workers run on: once
    its heartbeat and claim expire, b must not take a's share on top of them (it reached 9 of a cap
    of 6, for as long as it lasted). b counts a's processes by their reports (a's clock 2 minutes
    off: only their own times are compared), says so, and takes the room once they stop."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"a": 0, "b": 0}
    _ticks(redis, settings, running, 4, backlog)
    assert running == {"a": 3, "b": 3}
    with Reporting(redis_server, settings, "a", 3, skew=-120.0):
        deadline = time.monotonic() + 3 * settings.host_ttl
        b = {"b": running["b"]}
        while time.monotonic() < deadline:
            (view,) = _ticks(redis, settings, b, 1, backlog)
            assert b["b"] + running["a"] <= 6, (b, view.decision.reason)
        assert view.fleet.hosts == ("b",), "a's heartbeat expired: the decision is b's alone"
        assert "3 worker process(es) of hosts whose heartbeat expired still report" in view.decision.reason
        # a is not forgotten while its workers report, even once its entry is old enough.
        raw = redis.hget(share.fleet_key(settings), "host:a")
        assert claims.forget(redis, settings, {"a": raw}) == [] and redis.hget(share.fleet_key(settings), "host:a") == raw
    redis.delete(reports.instances_key(settings.namespace, "a"))  # its workers stopped (or the HASH expired)
    _ticks(redis, settings, b, 2, backlog)
    assert b["b"] == 6, "with a's workers gone, b takes the room"
    assert claims.forget(redis, settings, {"a": raw}) == ["a"]
    assert redis.hget(share.fleet_key(settings), "host:a") is None and redis.hget(share.claims_key(settings), "a") is None


def test_reports_without_an_expiry_or_out_of_shape_are_not_counted(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """A reports HASH with no expiry (a hook older than it: its fields may be a dead host's) is not
    counted; nor are fields stale next to the newest, nor damaged ones."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    seconds, _ = redis.time()
    entry = share.HostEntry("a", 6, up=3, claim=3, at=seconds - 100, expires=seconds - 98)
    redis.hset(share.fleet_key(settings), "host:a", entry.to_json())
    redis.hset(share.claims_key(settings), "a", claims.value(entry))
    key = reports.instances_key(settings.namespace, "a")
    now_ms = int(time.time() * 1000)

    def field(at: float, fleet: str = "t") -> str:
        return json.dumps({"threads": 2, "busy": 0, "oldest": None, "held": 0, "at": at, "paused": False, "queued": 0, "fleet": fleet})

    redis.hset(key, mapping={
        "1.11": field(now_ms),
        "2.12": field(now_ms - 60_000),  # a process that died a minute ago
        "3.13": "[" * 5000,
        "4.14": json.dumps({"at": "soon", "fleet": "t"}),
        "5.15": field(now_ms + 30_000),  # a field far from the others (a clock stepped): not the live ones' group
        "6.16": field(now_ms, fleet="other"),  # a worker of another fleet
        "7.17": json.dumps({"threads": 2, "busy": 0, "oldest": None, "held": 0, "at": now_ms, "paused": False, "queued": 0}),  # an older hook
        "8.18": '{"at": 1e400, "fleet": "t"}',
    })
    got = claims.claim(redis, settings, "b", "tick", share=6, up=0, occupying=0, target=6, cap=6, fleet_max=6)
    assert got == claims.Claimed(6, 6, 0), "no expiry: not counted"
    redis.pexpire(key, 10_000)
    redis.hset(share.claims_key(settings), "b", claims.pack(0, 0, seconds, seconds + 2))
    got = claims.claim(redis, settings, "b", "tick", share=6, up=0, occupying=0, target=6, cap=6, fleet_max=6)
    assert got == claims.Claimed(5, 5, 1), "one live process of this fleet counted; the stale, far, foreign and damaged left out"
    redis.hset(key, "9.19", field(now_ms - 2_000))
    got = claims.claim(redis, settings, "b", "tick", share=6, up=0, occupying=0, target=6, cap=6, fleet_max=6)
    assert got == claims.Claimed(4, 4, 2), "two that write within 5 s of each other"
    got = claims.claim(redis, settings, "b", "tick", share=6, up=0, occupying=0, target=6, cap=6)
    assert got == claims.Claimed(6, 6, 0), "without FLEET_MAX_PROCESSES: the default cap leaves a's own capacity out, so its processes are not counted"


def test_a_paused_host_back_after_a_reboot_grows_to_its_size_only_under_the_cap(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """a was paused at 3 (scale-to 3), rebooted and was gone longer than the TTL; b took the room.
    Back, a's tick must not restore its 3 on top of b's 6 (it did: 9 of a cap of 6)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    running = {"b": 0}
    _ticks(redis, settings, running, 3, FleetBacklog(ready=500))
    assert running == {"b": 6}
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=0, starting=0, occupying=0, pinned=3, name="a")
    assert view.decision.target == 0 and "paused host's size 3, 0 for now" in view.decision.reason, view.decision.reason
    assert claims.unpack(redis.hget(share.claims_key(settings), "a"))[0] == 0
    share.settle(redis, settings, claim=4, up=4, name="b")  # b shrinks: a may grow into the room, and no more
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=0, starting=0, occupying=0, pinned=3, name="a")
    assert view.decision.target == 2 and claims.unpack(redis.hget(share.claims_key(settings), "a"))[0] == 2
    share.settle(redis, settings, claim=2, up=2, name="b")
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=2, starting=0, occupying=2, pinned=3, name="a")
    assert view.decision.target == 3, "with room, its own size"


def test_a_size_by_hand_leaves_room_for_the_instances_coming_back(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """scale-to 4 on a host with 2 up and 1 in systemd's restart loop (coming back), b at 2, cap
    6: the one coming back will be up beside what it starts, so 3 is all it may have (4 gave 7)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    share.coordinate(redis, settings, FleetBacklog(ready=2), up=2, starting=0, occupying=2, name="b")
    share.settle(redis, settings, claim=2, up=2, name="b")
    assert share.reserve(redis, settings, target=4, up=2, occupying=3, paused=True, name="a") == 3, "refused in full: nothing written"
    assert share.reserve(redis, settings, target=4, up=2, occupying=3, paused=True, partial=True, name="a") == 3
    assert claims.unpack(redis.hget(share.claims_key(settings), "a"))[0] == 4, "3 up and the one coming back"


def test_a_tick_longer_than_the_ttl_settles_with_a_live_claim(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """A tick that waited for its start jobs longer than FLEET_HOST_TTL: its settle must write a
    claim and a heartbeat that are live (it wrote the tick's old expiry: what it started went
    unclaimed, and b grew into the same room)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    running = {"a": 0, "b": 0}
    _ticks(redis, settings, running, 3, FleetBacklog(ready=500))
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=running["a"], starting=0, occupying=running["a"], name="a")
    time.sleep(settings.host_ttl + 0.5)  # a's jobs take longer than its TTL
    share.settle(redis, settings, claim=view.decision.target, up=view.decision.target, name="a")
    seconds, micros = redis.time()
    _, expires = claims.unpack(redis.hget(share.claims_key(settings), "a"))[2:]
    assert expires > seconds + micros / 1e6
    _, hosts, _, _ = share.read(redis, settings)
    assert next(h for h in hosts if h.name == "a").expires > seconds
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=running["b"], starting=0, occupying=running["b"], name="b")
    assert view.decision.target + running["a"] <= 6


def test_forgetting_a_host_keeps_it_when_it_came_back_meanwhile(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The forget step chooses from its read; a host whose heartbeat changed since (it came back
    between that read and the delete) keeps its heartbeat and its claim."""
    settings = settings_for(redis_server)
    share.coordinate(redis, settings, FleetBacklog(ready=5), up=1, starting=0, occupying=1, name="x")
    old = redis.hget(share.fleet_key(settings), "host:x")
    time.sleep(0.05)
    share.coordinate(redis, settings, FleetBacklog(ready=5), up=1, starting=0, occupying=1, name="x")  # x ticks again
    assert claims.forget(redis, settings, {"x": old}) == []
    assert redis.hget(share.fleet_key(settings), "host:x") is not None and redis.hget(share.claims_key(settings), "x") is not None


def _two_hosts_at_3_then_redis_empty(redis: redis_lib.Redis, redis_server: RedisServer):
    """a and b run 3 each under a cap of 6 (ticks with their state's marks), then Redis restarts
    without persistence (FLUSHALL): (settings, running, marks, tick)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    backlog = FleetBacklog(ready=500)
    running = {"a": 0, "b": 0}
    marks: dict[str, tuple[float | None, float | None]] = {"a": (None, None), "b": (None, None)}

    def tick(name: str) -> share.Coordinated:
        return _marked_tick(redis, settings, backlog, running, marks, name)

    for _ in range(3):
        for name in running:
            tick(name)
        time.sleep(0.6)
    assert running == {"a": 3, "b": 3}
    redis.flushall()
    return settings, running, marks, tick


def _marked_tick(
    redis: redis_lib.Redis, settings, backlog: FleetBacklog, running: dict[str, int], marks: dict[str, tuple[float | None, float | None]], name: str,
) -> share.Coordinated:
    """One host's tick and settle, with what its state file keeps between ticks (``marks``: when it
    last claimed, when it found the fleet's records lost)."""
    claimed, lost = marks[name]
    view = share.coordinate(redis, settings, backlog, up=running[name], starting=0, occupying=running[name], name=name,
                            claimed_at=claimed, lost_at=lost)
    running[name] = view.decision.target
    share.settle(redis, settings, claim=running[name], up=running[name], name=name)
    marks[name] = (view.claimed_at, view.lost_at)
    return view


def test_after_redis_restarts_empty_no_host_grows_before_the_others_have_claimed_again(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Redis restarts without persistence (here FLUSHALL): every heartbeat and claim is gone while a
    and b run 3 each under a cap of 6. a's first tick after it saw no other host and took the whole
    cap (9 in all). a finds its own heartbeat gone though it wrote one a moment ago: it holds its
    growth for FLEET_HOST_TTL, says why, and the fleet then grows to its cap and no further."""
    settings, running, marks, tick = _two_hosts_at_3_then_redis_empty(redis, redis_server)
    view = tick("a")
    assert running["a"] == 3 and "the fleet's records in Redis were lost" in view.decision.reason, view.decision.reason
    tick("b")
    assert running == {"a": 3, "b": 3}
    deadline = time.monotonic() + settings.host_ttl + 2
    while time.monotonic() < deadline:
        for name in running:
            tick(name)
            assert sum(running.values()) <= 6, running
        time.sleep(0.3)
    assert marks["a"][1] is None and marks["b"][1] is None, "the hold ends after FLEET_HOST_TTL"
    assert sum(running.values()) == 6


def test_a_tick_that_fails_after_writing_the_record_while_the_records_are_lost_leaves_the_loss_seen(
    redis: redis_lib.Redis, redis_server: RedisServer, monkeypatch
) -> None:
    """Redis restarts empty under a and b (3 each, cap 6), and a's next tick rewrites the settings
    record, then fails before its claim (Redis goes again). Its state is not saved, so the tick after
    it must still find a's heartbeat gone and hold its growth: b's 3 still run, their claim lost.
    (The record's write carried the heartbeat, so the next tick found it and grew to 6 beside b's 3.)"""
    import pytest
    from dramactl import claims

    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    busy = FleetBacklog(ready=500)
    first = share.coordinate(redis, settings, busy, up=3, starting=0, occupying=3, name="a")
    share.coordinate(redis, settings, busy, up=3, starting=0, occupying=3, name="b")
    redis.flushall()

    def gone(*args, **kwargs):
        raise redis_lib.ConnectionError("Connection reset by peer")

    with monkeypatch.context() as patch:
        patch.setattr(claims, "claim", gone)
        with pytest.raises(redis_lib.ConnectionError):
            share.coordinate(redis, settings, busy, up=3, starting=0, occupying=3, name="a", claimed_at=first.claimed_at)
    assert redis.hget(share.fleet_key(settings), "settings") is not None  # the record was written before the failure
    view = share.coordinate(redis, settings, busy, up=3, starting=0, occupying=3, name="a", claimed_at=first.claimed_at)
    assert view.lost_at is not None and view.decision.target == 3, (view.lost_at, view.decision)


def test_a_renewal_while_the_host_acts_keeps_what_its_tick_wrote_and_never_recreates_a_lost_heartbeat(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The tick's seat (dramactl.seat) renews the host's heartbeat and claim while it acts. A renewal went through
    the manual claim: a failing host's claim then counted in full under the target (3 for its 1 working instance)
    and its heartbeat said 3 up; and after Redis restarted empty mid-tick it wrote the heartbeat again, so the
    host's next tick missed the lost-records hold and took the whole cap (9 of 6)."""
    from dramactl.seat import Seat

    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    view = share.coordinate(redis, settings, FleetBacklog(ready=5), up=3, starting=0, occupying=3, failing=True, working=1, name="a")
    assert claims.unpack(redis.hget(share.claims_key(settings), "a"))[:2] == (3, 1)
    seat = Seat(redis, settings, paused=False, name="a", marks=(view.claimed_at, view.lost_at))  # as the tick's seat (scaler._seat_kept)
    seat.claim = view.claim
    time.sleep(0.05)
    seat.beat()
    claim, counted, at, expires = claims.unpack(redis.hget(share.claims_key(settings), "a"))
    assert (claim, counted) == (3, 1) and expires > at, "renewed, its counted instances as the tick wrote them"
    entry = next(h for h in share.snapshot(redis, settings).hosts if h.name == "a")
    assert (entry.up, entry.failing, entry.working) == (3, True, 1)
    redis.flushall()  # Redis restarts empty while the host acts
    seat.beat()
    # The heartbeat is not recreated (the next tick must see the loss); what runs stays claimed (the others count it).
    assert redis.hget(share.fleet_key(settings), "host:a") is None
    assert claims.unpack(redis.hget(share.claims_key(settings), "a"))[:2] == (3, 3) and redis.ttl(share.claims_key(settings)) > 0
    # A host forgotten (its heartbeat and claim removed an hour after they expired) whose settle comes late
    # (its tick hung): no claim comes back without a heartbeat, which nothing would ever remove.
    redis.flushall()
    share.settle(redis, settings, claim=3, up=3, name="a", claimed_at=view.claimed_at - share.FORGET_AFTER - 1)
    assert redis.hget(share.claims_key(settings), "a") is None
    share.settle(redis, settings, claim=3, up=3, name="a", failing=True, working=1, claimed_at=view.claimed_at)
    assert claims.unpack(redis.hget(share.claims_key(settings), "a"))[:2] == (3, 1), "a failing host counts its working ones"
    redis.flushall()
    view = share.coordinate(redis, settings, FleetBacklog(ready=500), up=3, starting=0, occupying=3, name="a", claimed_at=view.claimed_at)
    assert view.decision.target == 3 and view.lost_at is not None, "the next tick holds its growth"


class WritesSettingsThen(redis_lib.Redis):
    """A real client that runs ``then()`` (once) right after the first command to write the fleet's
    settings record has run, however it is sent (a command, or a pipeline): another host's tick
    reads the fleet at that instant."""

    def __init__(self, *args, then, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.then = then

    def _after(self, commands) -> None:
        writes = any(
            (args[0] == "HSETNX" and args[2:3] == ("settings",)) or (args[0] == "HSET" and "settings" in args[2::2]) for args in commands
        )
        if writes and self.then is not None:
            then, self.then = self.then, None
            then()

    def execute_command(self, *args, **options):
        out = super().execute_command(*args, **options)
        self._after([args])
        return out

    def pipeline(self, transaction=True, shard_hint=None):
        client = self

        class Pipe(redis_lib.client.Pipeline):
            def execute(self, raise_on_error=True):
                commands = [args for args, _ in self.command_stack]
                out = super().execute(raise_on_error)
                client._after(commands)
                return out

        return Pipe(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def test_a_host_reading_the_fleet_just_after_another_wrote_the_record_follows_it(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Three hosts' first ticks with MIN 1, 2 and 3 (the booted fleet's case): b writes the record
    (MIN 2) and a reads the fleet the instant after. a must find b live beside it, disagreeing,
    and follow b's record. It found the record without b's heartbeat (written at the end of b's
    tick), took every live host (none) for agreeing with it, and replaced the record with its own:
    the fleet's target went 2, then 1."""
    values = {name: settings_for(redis_server, MIN_PROCESSES=m, MAX_PROCESSES="4", POLICY="step") for name, m in zip("abc", "123")}
    backlog = FleetBacklog(ready=0)
    views = {}

    def a_reads() -> None:
        views["a"] = share.coordinate(redis, values["a"], backlog, up=0, starting=0, occupying=0, name="a")

    b_client = WritesSettingsThen(host="127.0.0.1", port=redis_server.port, then=a_reads)
    views["b"] = share.coordinate(b_client, values["b"], backlog, up=0, starting=0, occupying=0, name="b")
    assert "a" in views, "a's tick never ran between b's record and the end of b's tick"
    targets = []
    for _ in range(3):
        for name in "cab":
            time.sleep(0.55)  # past half a CHECK_INTERVAL: every tick decides anew
            view = share.coordinate(redis, values[name], backlog, up=0, starting=0, occupying=0, name=name)
            targets.append(view.fleet.target)
    record = json.loads(redis.hget(share.fleet_key(values["a"]), "settings"))
    assert record["min_processes"] == 2 and views["a"].settings["min_processes"] == 2, (record, views["a"].settings)
    assert set(targets) == {2}, targets


def test_a_host_whose_first_write_after_a_long_outage_is_a_settle_records_the_silence(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """a, b and c run 2 each at the cap of 6 when Redis goes for longer than FLEET_HOST_TTL. c's tick
    was waiting for a start job (its worker's READY=1 waits for Redis): when Redis is back, c's first
    write is that tick's settle, a fresh heartbeat. The silence must be recorded then, or b's next
    tick finds c's heartbeat fresh, a's expired and a's claim with it, decides for b and c alone and
    grows to 3 beside a's 2 (7 of 6: seen in the booted fleet)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"a": 0, "b": 0, "c": 0}
    _ticks(redis, settings, running, 3, backlog)
    assert running == {"a": 2, "b": 2, "c": 2}
    time.sleep(settings.host_ttl + 1)  # Redis unreachable for every host
    share.settle(redis, settings, claim=2, up=2, name="c")
    for name in ("b", "a", "c"):
        view = share.coordinate(redis, settings, backlog, up=running[name], starting=0, occupying=running[name], name=name)
        running[name] = view.decision.target
        assert view.fleet.hosts == ("a", "b", "c"), (name, view.fleet)
        assert sum(running.values()) <= 6, (running, view.decision.reason)


def test_the_claim_of_the_last_tick_before_a_long_outage_still_counts_when_it_is_back(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """A tick's claim is written by the claim script a moment after the Redis clock its heartbeat
    carries, so the last tick before an outage leaves a claim newer than the newest heartbeat, where
    the silence starts. It is stretched like the others: after the outage a size by hand on a new
    host finds no room beside a's and c's 3 under the cap of 6."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"a": 0, "c": 0}
    _ticks(redis, settings, running, 3, backlog)
    assert running == {"a": 3, "c": 3}
    for name in ("a", "c"):  # steady ticks: nothing to act on, so no settle after the claim
        share.coordinate(redis, settings, backlog, up=3, starting=0, occupying=3, name=name)
    time.sleep(settings.host_ttl + 1)
    got = share.reserve(redis, settings, target=3, up=0, occupying=0, paused=False, partial=True, name="b")
    assert got == 0, "b was granted room that a's or c's claim holds"


def test_a_claim_written_during_a_silence_is_stretched_only_by_the_rest_of_it(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """A claim script sent to a hung Redis runs when it resumes, inside the silence the next tick
    records; that host then dies. Its claim gets the part of the silence after it was written, not
    the whole silence: otherwise it holds room (and the fleet below MIN) for the hang's length after
    its host's heartbeat expired."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6", FLEET_HOST_TTL="3")
    seconds, micros = redis.time()
    now = seconds + micros / 1e6
    silence = share.Silence(now - 20, now - 5)
    redis.hset(share.claims_key(settings), "c", claims.pack(3, 3, now - 10, now - 7))  # written 5 s before the silence ended
    got = claims.claim(redis, settings, "a", "tick", share=6, up=0, occupying=0, target=6, cap=6, silence=silence, fleet_max=6)
    assert got.grant == 6, "c's claim expired 2 s ago, counting the silence after it was written"
    redis.hset(share.claims_key(settings), "c", claims.pack(3, 3, now - 10, now - 3))
    got = claims.claim(redis, settings, "b", "tick", share=6, up=0, occupying=0, target=6, cap=6, silence=silence, fleet_max=6)
    assert got.grant == 0, "a's 6 are claimed, and c's 3 count for 2 s more"


def test_a_reports_key_of_another_type_for_an_expired_host_is_not_counted_and_ticks_go_on(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Another kind of value where an expired host's worker reports belong (the claim script counts
    that host's processes there): the other hosts' ticks go on (HLEN on it failed every tick with
    WRONGTYPE), counting none there; that host's own probe names its key."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"a": 0, "b": 0}
    _ticks(redis, settings, running, 4, backlog)
    assert running == {"a": 3, "b": 3}
    redis.set(reports.instances_key(settings.namespace, "b"), "x", ex=600)
    a = {"a": running["a"]}
    deadline = time.monotonic() + 3 * settings.host_ttl
    while time.monotonic() < deadline and a["a"] < 6:  # b's ticks stopped: its heartbeat and claim expire
        (view,) = _ticks(redis, settings, a, 1, backlog)
    assert view.fleet.hosts == ("a",) and a["a"] == 6, (a, view.decision.reason)


def test_after_redis_restarts_empty_a_roll_or_a_size_by_hand_claims_no_room_and_the_next_tick_still_holds(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Redis restarts without persistence while a and b run 3 each under a cap of 6. a's first write
    after it is not a tick but a rolling restart's claim (or a scale-to): it found no claim of b's and
    was granted a replacement beside b's 3, and the heartbeat it wrote hid the loss from a's next
    tick, which took the whole cap (9 of 6). Now neither claims room while the records are lost (the
    roll drains first, scale-to says why in one line), what a runs stays claimed, and a's next tick
    holds its growth."""
    from dramactl.seat import Seat

    settings, running, marks, tick = _two_hosts_at_3_then_redis_empty(redis, redis_server)
    seat = Seat(redis, settings, paused=False, name="a", marks=marks["a"])
    seat.beat(3)
    allowed, why = seat.room(3, 1)
    assert allowed == 3 and "records in Redis were lost" in why, (allowed, why)
    with pytest.raises(share.RecordsLost, match=r"^FLEET_NAME: fleet t's records in Redis were lost .*; try again in \d+s$"):
        share.reserve(redis, settings, target=6, up=3, occupying=3, paused=False, name="a", claimed_at=marks["a"][0], lost_at=marks["a"][1])
    # What a runs stays claimed (the others count it), its heartbeat stays gone (its next tick sees the loss).
    assert redis.hget(share.fleet_key(settings), "host:a") is None and claims.unpack(redis.hget(share.claims_key(settings), "a"))[0] == 3
    redis.delete(share.claims_key(settings))
    seat.beat()  # a renewal during the roll keeps the claim of what runs
    assert redis.hget(share.fleet_key(settings), "host:a") is None and claims.unpack(redis.hget(share.claims_key(settings), "a"))[0] == 3
    view = tick("a")
    assert running["a"] == 3 and "the fleet's records in Redis were lost" in view.decision.reason, view.decision.reason


def _tick_settled(redis: redis_lib.Redis, settings, running: dict[str, int], name: str, backlog: FleetBacklog) -> share.Coordinated:
    view = share.coordinate(redis, settings, backlog, up=running[name], starting=0, occupying=running[name], name=name)
    running[name] = view.decision.target
    share.settle(redis, settings, claim=running[name], up=running[name], name=name)
    return view


def test_an_outage_a_little_shorter_than_the_ttl_is_a_silence_too(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """b ticks, a and c an interval later, then Redis is unreachable for 3 s of a FLEET_HOST_TTL of 4:
    b's heartbeat expired during it though no heartbeat is older than the TTL. The newest one is
    older than a live host goes without one (halfway from CHECK_INTERVAL to the TTL), so the first
    tick after it records the silence, and b stays live: a does not grow into b's share (7 of 6)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6", FLEET_HOST_TTL="4", CHECK_INTERVAL="1")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"a": 0, "b": 0, "c": 0}
    _ticks(redis, settings, running, 3, backlog)
    assert running == {"a": 2, "b": 2, "c": 2}
    _tick_settled(redis, settings, running, "b", backlog)
    time.sleep(1.0)
    for name in ("a", "c"):
        _tick_settled(redis, settings, running, name, backlog)
    time.sleep(3.0)  # nobody can write: 3 s < FLEET_HOST_TTL, and b's heartbeat expires meanwhile
    view = _tick_settled(redis, settings, running, "a", backlog)
    assert view.fleet.hosts == ("a", "b", "c") and sum(running.values()) <= 6, (running, view.decision.reason)


def test_two_outages_in_a_row_stretch_the_hosts_that_wrote_before_both(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Two outages longer than FLEET_HOST_TTL with Redis back for a moment between them, in which only
    a ticked: the second silence must not replace the first, or b and c, which wrote before both,
    are stretched by the second alone and judged dead, and a grows into their shares (10 of 6)."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6", FLEET_HOST_TTL="3")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"a": 0, "b": 0, "c": 0}
    _ticks(redis, settings, running, 3, backlog)
    assert running == {"a": 2, "b": 2, "c": 2}
    time.sleep(4.0)
    first = _tick_settled(redis, settings, running, "a", backlog)
    assert first.fleet.hosts == ("a", "b", "c"), first.fleet
    time.sleep(4.3)
    view = _tick_settled(redis, settings, running, "a", backlog)
    assert view.fleet.hosts == ("a", "b", "c") and sum(running.values()) <= 6, (running, view.decision.reason)
    silence = share.Silence.parse(redis.hget(share.fleet_key(settings), "silence"))
    assert len(silence.spans()) == 2, silence
    # b and c, silent since before both, expire a TTL after the second silence like hosts that died.
    assert not any(h.live(silence.end + 3.0 + 0.1, silence) for h in share.read(redis, settings)[1] if h.name != "a")


def test_a_claim_a_hung_redis_runs_long_after_the_ticks_read_grants_no_growth(redis: redis_lib.Redis, redis_server: RedisServer, monkeypatch) -> None:
    """Redis hangs (SIGSTOP) between a new host's read of the fleet and its claim script, for longer
    than FLEET_HOST_TTL (here shorter than the client's wait, so the tick gets the answer): the
    script runs on resume with the read's view, in which b's and c's claims were live and nothing
    was stretched; by then they look expired. It grants no growth (a was granted its 2 beside b's
    and c's 3: 8 of 6), and a's next tick, which records the silence, leaves the fleet at its cap."""
    import os
    import signal

    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6", FLEET_HOST_TTL="3", CHECK_INTERVAL="2")
    backlog = FleetBacklog(ready=500, in_flight=0)
    running = {"b": 0, "c": 0}
    _ticks(redis, settings, running, 3, backlog)
    assert running == {"b": 3, "c": 3}
    time.sleep(1.1)  # past half a CHECK_INTERVAL: a's tick decides anew
    claim = claims.claim
    timer = threading.Timer(4.0, os.kill, (redis_server.proc.pid, signal.SIGCONT))

    def hung(*args, **kwargs):
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        timer.start()
        return claim(*args, **kwargs)

    monkeypatch.setattr(claims, "claim", hung)
    try:
        view = share.coordinate(redis, settings, backlog, up=0, starting=0, occupying=0, name="a")
    finally:
        timer.join()
    monkeypatch.setattr(claims, "claim", claim)
    assert view.decision.target == 0 and claims.unpack(redis.hget(share.claims_key(settings), "a"))[0] == 0, view.decision.reason
    running["a"] = 0
    view = _tick_settled(redis, settings, running, "a", backlog)
    assert view.fleet.hosts == ("a", "b", "c") and sum(running.values()) <= 6, (running, view.decision.reason)


def test_a_size_by_hand_whose_claim_redis_runs_late_writes_nothing_and_says_why(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """The claim script past its deadline (a hung Redis resumed it): a scale-to (nothing claimed
    unless all of it fits) writes nothing; a tick or a scale-up claims what runs, with no growth;
    the answer says it was late."""
    settings = settings_for(redis_server, MAX_PROCESSES="6", FLEET_MAX_PROCESSES="6")
    seconds, _ = redis.time()
    late = seconds - 1.0
    got = claims.claim(redis, settings, "a", "manual", share=4, up=2, occupying=2, cap=6, partial=False, deadline=late, fleet_max=6)
    assert got == claims.Claimed(2, None, 0, True) and redis.hget(share.claims_key(settings), "a") is None
    got = claims.claim(redis, settings, "a", "manual", share=4, up=2, occupying=2, cap=6, partial=True, deadline=late, fleet_max=6)
    assert got == claims.Claimed(2, 2, 0, True)
    got = claims.claim(redis, settings, "a", "tick", share=4, up=2, occupying=2, target=6, cap=6, deadline=late, fleet_max=6)
    assert got == claims.Claimed(2, 2, 0, True)
    got = claims.claim(redis, settings, "a", "tick", share=1, up=2, occupying=2, target=6, cap=6, deadline=late, fleet_max=6)
    assert got.grant == 1 and not got.late, "shrinking is never held back"
    got = claims.claim(redis, settings, "a", "tick", share=4, up=2, occupying=2, target=6, cap=6, deadline=seconds + 60.0, fleet_max=6)
    assert got == claims.Claimed(4, 4, 0, False)
