"""The pure part of several hosts, one fleet: shares, room, the fleet decision (dramactl.share)."""

from __future__ import annotations

import itertools

import pytest

from dramactl.fleetrecords import FLEET_SETTINGS, differences, fleet_values
from dramactl.settings import SettingsError, parse
from dramactl.share import FleetDecision, HostEntry, fleet_cap, plan_share, room_for, split
from dramactl.stats import FleetBacklog

SETTINGS = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "WORKER_THREADS": "2", "CHECK_INTERVAL": "10", "FLEET_NAME": "t", "POLICY": "step"}


def host(name: str, max_: int = 4, up: int = 0, claim: int | None = None, paused: bool = False) -> HostEntry:
    return HostEntry(name, max_, up=up, claim=up if claim is None else claim, at=0.0, expires=100.0, paused=paused)


@pytest.mark.parametrize(
    "total, limits, expected",
    [
        (6, [("a", 4), ("b", 4), ("c", 4)], {"a": 2, "b": 2, "c": 2}),
        (7, [("c", 4), ("a", 4), ("b", 4)], {"a": 3, "b": 2, "c": 2}),  # the remainder goes by name, not by order given
        (7, [("a", 2), ("b", 3), ("c", 4)], {"a": 2, "b": 3, "c": 2}),
        (8, [("a", 2), ("b", 3), ("c", 4)], {"a": 2, "b": 3, "c": 3}),
        (20, [("a", 2), ("b", 3), ("c", 4)], {"a": 2, "b": 3, "c": 4}),  # never above a host's MAX
        (1, [("a", 4), ("b", 4), ("c", 4)], {"a": 1, "b": 0, "c": 0}),  # MIN across the fleet, not per host
        (0, [("a", 4), ("b", 4)], {"a": 0, "b": 0}),
        (-3, [("a", 4)], {"a": 0}),
    ],
)
def test_split_is_even_within_each_max_and_deterministic(total: int, limits: list, expected: dict) -> None:
    assert split(total, limits) == expected


def test_split_sums_to_the_total_within_the_hosts_max_for_every_total() -> None:
    limits = [("a", 2), ("b", 5), ("c", 1), ("d", 3)]
    for total in range(0, 15):
        shares = split(total, limits)
        assert sum(shares.values()) == min(total, 11)
        assert all(shares[n] <= m for n, m in limits)
        # Water-filling: no host has more than one above a host that still has room.
        assert all(max(shares.values()) <= shares[n] + 1 for n, m in limits if shares[n] < m), shares


def test_fleet_cap_is_the_hosts_max_within_fleet_max_processes() -> None:
    hosts = [host("a", 2), host("b", 3), host("c", 4)]
    assert fleet_cap(parse(SETTINGS), hosts) == 9
    assert fleet_cap(parse({**SETTINGS, "FLEET_MAX_PROCESSES": "6"}), hosts) == 6
    # A paused host counts with the instances it holds, not its MAX.
    assert fleet_cap(parse(SETTINGS), [host("a", 2), host("b", 3, up=1, paused=True)]) == 3


def test_room_lets_a_host_grow_only_where_the_others_claims_leave_room() -> None:
    hosts = [host("a", up=0), host("b", up=3, claim=3), host("c", up=3, claim=3)]
    # Target 6, shares 2/2/2: b and c still run 3 each, so a may not start any yet.
    assert room_for("a", 2, 0, 0, hosts, 6) == 0
    # Once b has shrunk to its share, a grows into the room it left.
    hosts[1] = host("b", up=2, claim=2)
    assert room_for("a", 2, 0, 0, hosts, 6) == 1
    # Shrinking is never held.
    assert room_for("b", 1, 3, 3, hosts, 6) == 1


def test_fleet_max_processes_below_min_is_refused_in_one_line() -> None:
    with pytest.raises(SettingsError, match="FLEET_MAX_PROCESSES"):
        parse({**SETTINGS, "MIN_PROCESSES": "3", "FLEET_MAX_PROCESSES": "2"})
    with pytest.raises(SettingsError, match="FLEET_HOST_TTL"):
        parse({**SETTINGS, "FLEET_HOST_TTL": "10"})
    with pytest.raises(SettingsError, match="FLEET_NAME"):
        parse({**SETTINGS, "FLEET_NAME": "no spaces"})
    assert parse(SETTINGS).host_ttl == 60


def test_every_host_computes_the_same_target_and_shares_from_the_same_view() -> None:
    settings = parse({**SETTINGS, "FLEET_MAX_PROCESSES": "10"})
    backlog = FleetBacklog(ready=100, in_flight=2)
    entries = [host("a", 2, up=1), host("b", 3), host("c", 4)]
    views = []
    for me in entries:
        others = [h for h in entries if h is not me]
        view, record = plan_share(settings, me, others, backlog, [], None, 10.0, me.up)
        views.append(view)
        assert record is not None and record.target == view.fleet.target
    assert len({(v.fleet.target, tuple(sorted(v.fleet.shares.items()))) for v in views}) == 1
    assert sum(views[0].fleet.shares.values()) == views[0].fleet.target <= 9


def test_a_fresh_decision_is_reused_for_the_same_hosts_and_remade_when_one_expires() -> None:
    settings = parse(SETTINGS)
    backlog = FleetBacklog(ready=40, in_flight=0)
    a, b, c = host("a", up=2), host("b", up=2), host("c", up=2)
    last = FleetDecision(100.0, "b", 6, 12, "step", ("a", "b", "c"), {"a": 2, "b": 2, "c": 2})
    view, record = plan_share(settings, a, [b, c], backlog, [], last, 103.0, 2)
    assert not view.fresh and record is None and view.fleet is last
    # c expired: the next tick decides again, among a and b, at once (not half an interval later).
    view, record = plan_share(settings, a, [b], backlog, [], last, 103.0, 2)
    assert view.fresh and record is not None and view.fleet.hosts == ("a", "b")
    assert view.share == view.fleet.shares["a"] >= 3


def test_shares_never_overshoot_the_target_whatever_order_hosts_tick_in() -> None:
    """Simulated ticks in every order: each host applies what plan_share allows it, and the
    instances running never add up to more than the fleet's current target."""
    settings = parse(SETTINGS)
    for order in itertools.permutations("abc"):
        running = {"a": 4, "b": 0, "c": 0}  # a ran alone; b and c join
        decision = None
        for tick in range(6):
            for name in order:
                entries = [host(n, up=running[n]) for n in "abc"]
                me = next(h for h in entries if h.name == name)
                others = [h for h in entries if h is not me]
                view, _ = plan_share(settings, me, others, FleetBacklog(ready=0, in_flight=8), [], decision, tick * 10.0 + order.index(name), running[name])
                decision = view.fleet
                running[name] = view.decision.target
                assert sum(running.values()) <= max(decision.target, 4), (order, tick, running)
        assert sorted(running.values()) == sorted(decision.shares.values())


def test_a_paused_host_is_counted_with_its_instances_and_given_no_share() -> None:
    settings = parse({**SETTINGS, "FLEET_MAX_PROCESSES": "6"})
    paused = host("b", up=3, claim=3, paused=True)
    view, _ = plan_share(settings, host("a", up=1), [paused, host("c", up=1)], FleetBacklog(ready=200), [], None, 10.0, 1)
    assert "b" not in view.fleet.shares and view.fleet.pinned == 3
    assert sum(view.fleet.shares.values()) + 3 == view.fleet.target <= 6


FLEET_STATUS = {
    "time": 1000.0,
    "fleet": {"name": "t", "target": 5, "cap": 9, "min": 1, "decided_at": 998.0, "decided_by": "b", "this_host": "a"},
    "hosts": [
        {"name": "a", "up": 2, "share": 2, "max": 2, "last_tick": 997.0, "live": True, "paused": False},
        {"name": "b", "up": 3, "share": 3, "max": 3, "last_tick": 998.0, "live": True, "paused": False},
        {"name": "<c>", "up": 4, "share": 0, "max": 4, "last_tick": 900.0, "live": False, "paused": False},
    ],
}


def test_status_text_lists_every_host_with_its_share_and_the_dead_one_as_down() -> None:
    from dramactl.render import render_status

    text = render_status(FLEET_STATUS)
    assert "fleet t: target 5 of cap 9, MIN 1 for the whole fleet, decided by b" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in ("a", "b", "<c>")}
    assert lines["a"].split()[1:4] == ["2", "2", "2"] and lines["a"].endswith("live (this host)")
    assert "down: heartbeat expired" in lines["<c>"]


def test_dashboard_shows_the_hosts_escaped_and_nothing_on_one_host() -> None:
    from dramactl.dashboard import render_hosts

    html = render_hosts(FLEET_STATUS)
    assert '<table id="hosts">' in html and "&lt;c&gt;" in html and "<c>" not in html
    assert html.count('class="state ok">live') == 2 and 'class="state bad">down' in html
    assert render_hosts({"fleet": None, "hosts": []}) == ""


def test_a_fleet_wide_silence_does_not_count_against_the_heartbeats_written_before_it() -> None:
    """Redis was down for everyone from t=100 to t=160 (TTL 10): the first host back records the
    silence; a host that ticks a little after it is still live for the hosts that came back first."""
    from dramactl.share import Silence, silence_before

    a, c = HostEntry("a", 4, at=100.0, expires=110.0), HostEntry("c", 4, at=98.0, expires=108.0)
    assert silence_before([a, c], 105.0, 10.0) is None  # normal: nobody silent for longer than the TTL
    silence = silence_before([a, c], 160.0, 10.0)
    assert silence == Silence(100.0, 160.0)
    # a came back at 160 and wrote a fresh heartbeat; at 163, c (not back yet) is still live ...
    a = HostEntry("a", 4, at=160.0, expires=170.0)
    assert a.live(163.0, silence) and c.live(163.0, silence) and not c.live(163.0)
    # ... and expires a TTL after the silence if it never comes back, like a host that died.
    assert not c.live(168.5, silence)


# --- issue 18: values read from Redis, identity, failing hosts, forgetting, settings ------------

import json  # noqa: E402
import logging  # noqa: E402

from dramactl import share  # noqa: E402
from dramactl.queue import parse_probe  # noqa: E402

KEY = "dramatiq:__dramactl__.fleet.t"
GOOD = {"max": 4, "up": 1, "starting": 0, "claim": 1, "share": 1, "at": 100.0, "expires": 160.0, "paused": False}


def beat(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).replace('"__inf__"', "Infinity").encode()


@pytest.mark.parametrize(
    "raw, named",
    [
        (b'{"max": Infinity, "expires": 160.0}', "max"),
        (b'{"max": 4, "expires": Infinity}', "expires"),
        (b'{"max": 4, "expires": NaN}', "expires"),
        (b'{"max": 4, "up": 1e400, "expires": 160.0}', "up"),
        (beat(max=-1000), "max"),
        (beat(claim=-1), "claim"),
        (beat(up=10**9), "up"),
        (beat(share=2.5), "share"),
        (beat(expires=10**12), "expires"),  # a heartbeat that would never expire
        (beat(at=10**9, expires=10**9 + 60), "at"),  # ahead of Redis' clock
        (beat(paused="yes"), "paused"),
        (beat(failing=1), "failing"),
        (beat(startup=-3), "startup"),
        (b"not json", "not JSON"),
        (b"[" * 100_000, "not JSON"),  # nested past the parser's depth: RecursionError, not ValueError
        (b"[1, 2]", "heartbeat"),
    ],
)
def test_a_damaged_heartbeat_is_left_out_and_named_once(raw: bytes, named: str, caplog: pytest.LogCaptureFixture) -> None:
    share._named.clear()
    hash_ = {b"host:a": beat(), b"host:bad": raw}
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        for _ in range(3):  # a retried transaction reads it again: still one line
            hosts = share._hosts(hash_, KEY, 200.0)
    assert [h.name for h in hosts] == ["a"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and KEY in lines[0] and "host:bad" in lines[0] and named in lines[0], lines


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"target": -5}, "target"),
        ({"target": "__inf__"}, "target"),
        ({"cap": 1e400}, "cap"),
        ({"target": 7, "cap": 6}, "above cap"),
        ({"shares": {"a": -1}}, "shares.a"),
        ({"shares": {"a": 4, "b": 4}}, "add up"),
        ({"hosts": "a"}, "hosts"),
        ({"at": "__inf__"}, "at"),
        ({"pinned": -2}, "pinned"),
    ],
)
def test_a_damaged_decision_is_ignored_named_and_decided_anew(changes: dict, named: str, caplog: pytest.LogCaptureFixture) -> None:
    share._named.clear()
    good = {"at": 150.0, "by": "a", "target": 2, "cap": 8, "reason": "step", "hosts": ["a", "b"], "shares": {"a": 1, "b": 1}}
    raw = json.dumps({**good, **changes}).replace('"__inf__"', "Infinity").encode()
    settings = parse({**SETTINGS, "FLEET_MAX_PROCESSES": "6"})
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        snap = share._snapshot({b"host:a": beat(), b"host:b": beat(), b"decision": raw}, 155.0, settings)
    assert snap.decision is None
    assert any(KEY in r.getMessage() and "decision" in r.getMessage() and named in r.getMessage() for r in caplog.records), caplog.text
    # The tick decides anew: a target within 0..cap, never negative or infinite.
    view, record = plan_share(settings, snap.hosts[0], snap.hosts[1:], FleetBacklog(ready=3), [], snap.decision, 155.0, 1)
    assert view.fresh and 0 <= view.fleet.target <= view.fleet.cap <= 6 and record is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"start": NaN, "end": 5}', b'{"start": 50, "end": 10}', b'{"start": 10, "end": 1e400}', b'"x"',
        b'{"start": 50, "end": 60, "earlier": "x"}', b'{"start": 50, "end": 60, "earlier": [[1, 2, 3]]}',
        b'{"start": 50, "end": 60, "earlier": [[1, NaN]]}', b'{"start": 50, "end": 60, "earlier": [[1, true]]}',
        b'{"start": 50, "end": 60, "earlier": [[10, 55]]}',  # overlaps the last one
        b'{"start": 50, "end": 60, "earlier": [[20, 30], [10, 15]]}',  # out of order
        b'{"start": 50, "end": 60, "earlier": [[30, 20]]}',
        b'{"start": 50, "end": 60, "earlier": [[1, 1' + b"0" * 400 + b']]}',  # past a float's range
        b'{"start": 90, "end": 95, "earlier": [' + b", ".join(b"[%d, %d]" % (i * 10, i * 10 + 5) for i in range(8)) + b"]}",  # too many
    ],
)
def test_a_damaged_silence_is_ignored_and_named(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    share._named.clear()
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        snap = share._snapshot({b"host:a": beat(), b"silence": raw}, 120.0, parse(SETTINGS))
    assert snap.silence is None and snap.hosts[0].live(120.0, snap.silence)
    assert any("silence" in r.getMessage() and KEY in r.getMessage() for r in caplog.records)


def test_a_damaged_history_record_is_left_out_the_good_ones_kept(caplog: pytest.LogCaptureFixture) -> None:
    share._named.clear()
    good = {"at": 10.0, "backlog": 3, "workers": 1, "target": 1}
    raw = json.dumps([good, {**good, "backlog": -4}, {**good, "at": 20.0, "workers": 2}]).encode()
    raw = raw.replace(b'"backlog": -4', b'"backlog": Infinity')
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        records = share._history(raw, KEY)
    assert [r.at for r in records] == [10.0, 20.0]
    assert len(caplog.records) == 1 and "history[1].backlog" in caplog.text and KEY in caplog.text
    assert share._history(b"{", KEY) == [] and share._history(b'{"a": 1}', KEY) == []
    assert share._history(b"[" * 100_000, KEY) == []


@pytest.mark.parametrize("value", [b"1e400", b"inf", b"-inf", b"nan", b"-3"])
def test_a_damaged_work_counter_is_left_out_and_named(value: bytes, caplog: pytest.LogCaptureFixture) -> None:
    from dramactl.policy import decide

    raw = [1_000_000, 2, 2, 0, 0, 0, -1, -1, 0, value, b"7.5", b"", b""]
    with caplog.at_level(logging.WARNING, logger="dramactl.queue"):
        (q,) = parse_probe(["default"], raw)
    assert q.done_total is None and q.busy_seconds_total == 7.5
    assert "__dramactl__.work.default field done" in caplog.text
    decision = decide(FleetBacklog.of([q]), [], parse(SETTINGS), [], 1000.0)
    assert 0 <= decision.target <= 4


def test_the_identity_is_the_machine_id_and_the_hostname_only_a_label(tmp_path) -> None:
    import socket

    path = tmp_path / "machine-id"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    assert share.host_id(str(path)) == "0123456789abcdef0123456789abcdef"
    path.write_text("uninitialized\n")  # a golden image not yet booted: the hostname stands in
    assert share.host_id(str(path)) == socket.gethostname()
    assert share.host_id(str(tmp_path / "missing")) == socket.gethostname()


def test_two_hosts_with_one_hostname_are_two_entries_and_the_cap_holds() -> None:
    settings = parse({**SETTINGS, "FLEET_MAX_PROCESSES": "6"})
    a = HostEntry("1" * 32, 4, up=3, claim=3, label="web", at=0.0, expires=100.0)
    b = HostEntry("2" * 32, 4, up=0, claim=0, label="web", at=0.0, expires=100.0)
    c = HostEntry("3" * 32, 4, up=3, claim=3, label="other", at=0.0, expires=100.0)
    view, _ = plan_share(settings, b, [a, c], FleetBacklog(ready=500), [], None, 10.0, 0)
    assert view.fleet.cap == 6 and sum(view.fleet.shares.values()) <= 6
    assert view.decision.target == 0  # a and c claim the whole cap: b waits for them to shrink
    assert "web 2" in view.summary() or "web 0" in view.summary()


def failing_host(name: str, up: int = 0, working: int = 0, claim: int | None = None) -> HostEntry:
    return HostEntry(name, 4, up=up, claim=up if claim is None else claim, at=0.0, expires=100.0, failing=True, working=working)


def test_a_failing_host_loses_its_share_of_the_floor_and_target_to_the_hosts_that_serve() -> None:
    """Issue 18 §1: host a's units fail (start limit) while MIN=1: b and c take the floor."""
    settings = parse({**SETTINGS, "MIN_PROCESSES": "1"})
    a = failing_host("a", up=1, working=0, claim=1)  # a unit in systemd's restart loop
    b, c = host("b"), host("c")
    view, _ = plan_share(settings, b, [a, c], FleetBacklog(ready=0), [], None, 10.0, 0)
    assert view.fleet.failing == ("a",) and view.fleet.target == 1
    assert view.share == 1 and view.floor == 1 and view.decision.target == 1  # a's looping unit does not hold b back
    view_a, _ = plan_share(settings, a, [b, c], FleetBacklog(ready=0), [], view.fleet, 11.0, 1)
    # a stops nothing itself (its safeguard deals with the looping unit) but has no floor, and
    # the fleet counts none of its instances as serving.
    assert view_a.share == 1 and view_a.floor == 0 and view.fleet.pinned == 0
    # Every host failing: the split is the usual one (nobody else can serve).
    view, _ = plan_share(settings, a, [failing_host("b"), failing_host("c")], FleetBacklog(ready=0), [], None, 10.0, 1)
    assert view.fleet.failing == () and view.floor == 1


def test_a_failing_host_keeps_its_working_instances_and_the_cap_counts_every_claim() -> None:
    settings = parse({**SETTINGS, "FLEET_MAX_PROCESSES": "4"})
    a = failing_host("a", up=3, working=2, claim=3)
    b = host("b", up=0)
    view, _ = plan_share(settings, b, [a], FleetBacklog(ready=500), [], None, 10.0, 0)
    assert "a" not in view.fleet.shares and view.fleet.pinned == 2
    # a keeps what it has up (no stop that could hit a working instance) and grows no further.
    view_a, _ = plan_share(settings, a, [b], FleetBacklog(ready=0), [], view.fleet, 11.0, 3)
    assert view_a.share == 3 and view_a.decision.target == 3
    assert view.fleet.target == 4 and view.share == 2
    # Under the target a counts with its 2 working instances (room for b: 2), but against
    # the cap of 4 with all 3 of its units (one looping): b may start 1.
    assert view.decision.target == 1
    assert room_for("b", 2, 0, 0, [a], 4) == 2


def test_a_recovered_host_gets_its_share_back_without_passing_the_cap_or_moving_the_floor() -> None:
    settings = parse({**SETTINGS, "MIN_PROCESSES": "1", "FLEET_MAX_PROCESSES": "2"})
    b = host("b", up=1)
    a = host("a", up=0)  # recovered: no longer failing, nothing running
    while_failing = FleetDecision(0.0, "b", 1, 2, "min", ("b",), {"a": 0, "b": 1}, failing=("a",))
    view, _ = plan_share(settings, a, [b], FleetBacklog(ready=0), [], while_failing, 10.0, 0)
    # MIN stays with b, which had it and runs it; by name alone it would move to a.
    assert view.fresh and view.fleet.shares == {"a": 0, "b": 1} and view.floor == 0
    assert plan_share(settings, a, [b], FleetBacklog(ready=0), [], None, 10.0, 0)[0].fleet.shares == {"a": 1, "b": 0}
    # With more backlog a gets its share, and grows only into the room b's claim leaves.
    view, _ = plan_share(settings, a, [host("b", up=2)], FleetBacklog(ready=500), [], None, 20.0, 0)
    assert view.share == 1 and view.decision.target == 0


def test_a_failing_host_is_reported_until_its_streak_ends() -> None:
    from dramactl.state import Recovery

    assert share.is_failing([], Recovery(attempts=2, failing_at=100.0), 150.0)
    assert not share.is_failing([], Recovery(attempts=2, failing_at=100.0), 100.0 + 121)
    assert not share.is_failing([], Recovery(), 150.0)


def test_an_entry_old_only_because_of_a_fleet_wide_outage_is_not_forgotten() -> None:
    """Issue 18 §2b: Redis was down for 2 hours; the first host back must not delete c."""
    c = HostEntry("c", 4, up=3, claim=3, at=1000.0, expires=1060.0)
    outage = share.Silence(1000.0, 1000.0 + 7200)
    now = 1000.0 + 7200 + 5
    assert share.forgotten(c, now, None)  # what the old rule did
    assert not share.forgotten(c, now, outage) and c.live(now, outage)
    # A host that really died long ago is still forgotten.
    dead = HostEntry("d", 4, at=0.0, expires=60.0)
    assert share.forgotten(dead, 1000.0 + 60 + share.FORGET_AFTER, None)


def test_the_fleet_settings_record_is_followed_and_replaced_only_when_every_host_agrees() -> None:
    mine = parse({**SETTINGS, "MIN_PROCESSES": "2"})
    theirs = share.fleet_values(parse(SETTINGS))
    used, record, write = share.following(mine, None, agreed=False)
    assert used == mine and write and record["min_processes"] == 2  # first host: its own become the record
    used, record, write = share.following(mine, theirs, agreed=False)
    assert used.min_processes == 1 and not write and record == theirs
    assert share.differences(mine, record) == ["MIN_PROCESSES=2 here, 1 for the fleet"]
    used, record, write = share.following(mine, theirs, agreed=True)
    assert used.min_processes == 2 and write


@pytest.mark.parametrize(
    "changes",
    [{"min_processes": -1}, {"fleet_max_processes": 1e400}, {"policy": "yolo"}, {"max_queue_wait": float("nan")}, {"min_processes": 5, "fleet_max_processes": 2}],
)
def test_a_damaged_settings_record_is_named_and_rewritten(changes: dict, caplog: pytest.LogCaptureFixture) -> None:
    share._named.clear()
    raw = json.dumps({**share.fleet_values(parse(SETTINGS)), **changes}).encode()
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        snap = share._snapshot({b"settings": raw}, 10.0, parse(SETTINGS))
    assert snap.record is None and "settings" in caplog.text and KEY in caplog.text


def test_status_and_dashboard_show_a_failing_host_and_settings_that_differ() -> None:
    from dramactl.dashboard import render_hosts
    from dramactl.render import render_status

    data = {
        **FLEET_STATUS,
        "fleet": {**FLEET_STATUS["fleet"], "this_host": "id-a", "settings_differ": ["MIN_PROCESSES=2 here, 1 for the fleet"]},
        "hosts": [
            {**FLEET_STATUS["hosts"][0], "id": "id-a"},
            {**FLEET_STATUS["hosts"][1], "id": "id-b", "failing": True, "share": 0},
        ],
    }
    text = render_status(data)
    lines = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in ("a", "b")}
    assert lines["a"].endswith("live (this host)") and "failing: its instances fail" in lines["b"]
    assert "this host's settings differ from the fleet's record (MIN_PROCESSES=2 here, 1 for the fleet): it follows the fleet's" in text
    html = render_hosts(data)
    assert 'class="state bad">failing' in html and 'id="settings-differ"' in html and "(this host)" in html


# --- the module split: the single-host tick never loads the fleet's modules --------------------

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

FLEET_MODULES = {"share", "claims", "fleetplan", "fleetrecords"}
PACKAGE = Path(__file__).resolve().parents[2] / "dramactl"


def _module_level_imports(module: str) -> set[str]:
    """The dramactl modules ``module`` imports when it is loaded (not inside functions nor
    under TYPE_CHECKING), as bare names."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(sub, ast.ImportFrom) and sub.level == 1:
                if sub.module:
                    found.add(sub.module.split(".")[0])
                else:
                    found |= {a.name for a in sub.names}
    return found


def test_the_single_host_tick_never_loads_the_fleet_modules() -> None:
    seen, todo = set(), ["scaler"]
    while todo:
        module = todo.pop()
        if module in seen or not (PACKAGE / f"{module}.py").exists():
            continue
        seen.add(module)
        todo.extend(_module_level_imports(module))
    assert "scaler" in seen and "policy" in seen  # the walk follows the tick's own imports
    assert not seen & FLEET_MODULES, seen & FLEET_MODULES


def test_the_fleets_pure_part_does_no_io() -> None:
    tree = ast.parse((PACKAGE / "fleetplan.py").read_text())
    imported = {("." * n.level + (n.module or "")) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "dataclasses", "typing", ".fleetrecords", ".limits", ".policy", ".settings", ".state"}, imported


@pytest.mark.parametrize(
    "entry",
    [
        HostEntry("a" * 32, 8, up=2, starting=1, claim=3, share=2, at=1733392000.5, expires=1733392075.5, startup=2.5, label="web", working=2, settings="abc"),
        HostEntry("b", 0, at=0.0, expires=86_400.0),
        HostEntry("c", 100_000, up=100_000, claim=100_000, at=5.0, expires=5.0, paused=True, failing=True, working=0),
    ],
)
def test_a_plain_heartbeat_reads_back_as_written_through_the_one_pass_check(entry: HostEntry) -> None:
    """Every heartbeat dramactl writes takes the one-pass check (fleetrecords._plain) and reads back
    equal; anything else goes through the field-by-field checks that name it (tests above)."""
    from dramactl.fleetrecords import _plain

    raw = entry.to_json()
    assert _plain(HostEntry, entry.name, json.loads(raw), None) == entry
    assert HostEntry.parse(entry.name, raw) == entry


def test_the_fleet_settings_are_named_as_an_operator_sets_them() -> None:
    """A host whose fleet-wide settings differ from the fleet's record is told which, by the name it
    sets in dramactl.env: each name in the record's list is the one `settings.parse` reads for
    that value (the two threshold multipliers were named SCALE_UP_MULTIPLIER and
    SCALE_DOWN_MULTIPLIER, which no setting is)."""
    other = {"min_processes": "2", "fleet_max_processes": "9", "policy": "default", "scale_up_multiplier": "3.5",
             "scale_down_multiplier": "0.25", "target_backlog_per_worker": "7", "max_queue_wait": "45", "max_scale_up_step": "3",
             "scale_down_stabilization": "90", "max_scale_down_step": "2"}
    assert set(other) == set(FLEET_SETTINGS)
    here = parse(SETTINGS)
    for key, (name, _) in FLEET_SETTINGS.items():
        assert getattr(parse({**SETTINGS, name: other[key]}), key) != getattr(here, key), f"{name} does not set {key}"
    fleet = fleet_values(here)
    mine = parse({**SETTINGS, "SCALE_UP_THRESHOLD_MULTIPLIER": "3.5"})
    assert differences(mine, fleet) == [f"SCALE_UP_THRESHOLD_MULTIPLIER=3.5 here, {here.scale_up_multiplier} for the fleet"]


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"max_queue_wait": 0.0}, "max_queue_wait"),  # ZeroDivisionError in every tick of a host that followed it
        ({"max_queue_wait": 0}, "max_queue_wait"),
        ({"min_processes": 5000}, "min_processes"),
        ({"scale_down_stabilization": 1e300}, "scale_down_stabilization"),
        ({"scale_down_stabilization": 1801.0}, "scale_down_stabilization"),
        ({"max_scale_up_step": 1001}, "max_scale_up_step"),
        ({"max_scale_down_step": 100_000}, "max_scale_down_step"),
    ],
)
def test_a_settings_record_value_a_host_would_refuse_is_damaged_named_and_its_own_used(
    changes: dict, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The record is checked as the settings themselves (settings.parse's ranges), not more loosely:
    the host names it once and decides with its own settings; the record is rewritten."""
    share._named.clear()
    mine = parse(SETTINGS)
    raw = json.dumps({**share.fleet_values(mine), **changes}).encode()
    with caplog.at_level(logging.WARNING, logger="dramactl.share"):
        snap = share._snapshot({b"settings": raw}, 10.0, mine)
        share._snapshot({b"settings": raw}, 11.0, mine)
    assert snap.record is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and KEY in lines[0] and f"settings.{named}" in lines[0] and "\n" not in lines[0], lines
    used, record, write = share.following(mine, snap.record, agreed=False)
    assert used == mine and write and record == share.fleet_values(mine)


# Values around each bound settings.parse sets (and beyond any): the record must take exactly what a host's own
# setting takes, whatever settings.py's bounds become.
PROBES = {
    int: [0, 1, 2, 9, 10, 999, 1000, 1001, 3600, 65535, 99_999, 100_000],
    float: [0.0, 5e-324, 1e-300, 0.001, 0.5, 1.0, 2.5, 5.0, 60.0, 1799.0, 1800.0, 1800.5, 86_400.0, 1e9, 1e300],
    str: ["default", "step"],
}


def test_the_settings_record_takes_exactly_the_values_a_hosts_own_settings_take() -> None:
    from dramactl.fleetrecords import parse_values
    from dramactl.state import DamagedState

    base = share.fleet_values(parse(SETTINGS))
    assert parse_values(json.dumps(base)) == base
    for key, (name, kind) in FLEET_SETTINGS.items():
        for value in PROBES[kind]:
            record = {**base, key: value}
            try:
                parse({**SETTINGS, **{FLEET_SETTINGS[k][0]: str(v) for k, v in record.items()}, "MAX_PROCESSES": str(max(1, record["min_processes"]))})
                local = True
            except SettingsError:
                local = False
            try:
                fleet = parse_values(json.dumps(record)) == record
            except DamagedState:
                fleet = False
            assert fleet == local, f"{name}={value}: the record {'takes' if fleet else 'refuses'} what a host's own setting {'takes' if local else 'refuses'}"


def test_the_fleets_records_are_lost_when_this_hosts_heartbeat_is_gone_within_the_hour() -> None:
    from dramactl.fleetplan import FORGET_AFTER, records_lost

    entry = object()
    assert records_lost(None, 1000.0, None, 1010.0, 30.0) == 1010.0, "gone 10 s after it wrote it"
    assert records_lost(None, 1000.0, None, 1000.0 + FORGET_AFTER - 1, 30.0) is not None, "an expired heartbeat stays an hour"
    assert records_lost(None, 1000.0, None, 1000.0 + FORGET_AFTER + 1, 30.0) is None, "forgotten: not a loss"
    assert records_lost(entry, 1000.0, None, 1010.0, 30.0) is None, "its heartbeat is there"
    assert records_lost(None, None, None, 1010.0, 30.0) is None, "a host new to the fleet"
    assert records_lost(entry, 1010.0, 1010.0, 1030.0, 30.0) == 1010.0, "the hold lasts FLEET_HOST_TTL"
    assert records_lost(entry, 1040.0, 1010.0, 1041.0, 30.0) is None, "and ends"
    assert records_lost(None, 1000.0, None, 999.0, 30.0) is None, "Redis' clock went back: no loss inferred"


def test_silences_in_a_row_each_stretch_what_was_written_before_them_and_a_few_are_kept() -> None:
    """A heartbeat or claim gets, for each silence kept, the part of it after it was written; a new
    silence keeps the earlier ones behind it (a handful: SILENCES_KEPT), and its JSON reads back."""
    from dramactl.fleetrecords import SILENCES_KEPT
    from dramactl.share import Silence, silence_before

    one = Silence(100.0, 160.0)
    two = one.after(170.0, 200.0)
    assert two == Silence(170.0, 200.0, ((100.0, 160.0),)) and Silence.parse(two.to_json()) == two
    assert two.extra(90.0) == 60.0 + 30.0 and two.extra(130.0) == 30.0 + 30.0 and two.extra(165.0) == 30.0 and two.extra(200.0) == 0.0
    assert Silence.parse(one.to_json()) == one and "earlier" not in one.to_json()  # the form older hosts read
    many = one
    for i in range(1, 12):
        many = many.after(100.0 + 100 * i, 150.0 + 100 * i)
    assert len(many.spans()) == SILENCES_KEPT and many.spans()[-1] == (1200.0, 1250.0) and Silence.parse(many.to_json()) == many
    # The gap: halfway from CHECK_INTERVAL to FLEET_HOST_TTL; a new silence keeps the one recorded before.
    from dataclasses import replace

    a = replace(host("a", up=1), at=100.0, expires=110.0)
    assert silence_before([a], 104.0, 4.0) is None and silence_before([a], 104.5, 4.0, one) == Silence(100.0, 104.5)
    assert silence_before([a], 180.0, 4.0, Silence(50.0, 90.0)) == Silence(100.0, 180.0, ((50.0, 90.0),))


def test_the_silence_gap_lies_between_a_late_tick_and_an_expiring_heartbeat() -> None:
    """Halfway from CHECK_INTERVAL to FLEET_HOST_TTL, at most TTL - CHECK_INTERVAL (an outage that
    long can expire a live host's heartbeat), at least CHECK_INTERVAL + TICK_SLACK (a late tick is
    not a silence), at most the TTL."""
    from dramactl.fleetplan import silence_gap

    def gap(interval: int, ttl: int | None = None) -> float:
        return silence_gap(parse({**SETTINGS, "CHECK_INTERVAL": str(interval), **({"FLEET_HOST_TTL": str(ttl)} if ttl else {})}))

    assert gap(180) == 375.0  # the default TTL, 570: 2 x 180 + 15
    assert gap(60, 150) == 90.0  # TTL - CHECK_INTERVAL
    assert gap(3, 10) == 6.5
    assert gap(60, 100) == 62.0  # less margin than a late tick needs: CHECK_INTERVAL + TICK_SLACK
    assert gap(2, 3) == 3.0 and gap(1, 2) == 2.0  # less still: the TTL


def test_check_warns_of_a_ttl_that_leaves_outages_unseen() -> None:
    """Below 2 x CHECK_INTERVAL + TICK_SLACK, an outage can expire a live host's heartbeat and
    still be shorter than the silence gap (docs/fleet.md): `check` says so, naming the least TTL."""
    from dramactl.fleetplan import short_ttl

    def warning(interval: int, ttl: int | None = None) -> str | None:
        return short_ttl(parse({**SETTINGS, "CHECK_INTERVAL": str(interval), **({"FLEET_HOST_TTL": str(ttl)} if ttl else {})}))

    assert warning(15) is None and warning(180) is None  # the default TTL
    assert warning(60, 122) is None and warning(60, 150) is None  # room between a late tick and an expiring heartbeat
    assert warning(60, 100) == (
        "FLEET_HOST_TTL=100s is below 2 x CHECK_INTERVAL + 2s (122s): a Redis outage of 40s to 62s can expire the heartbeat"
        " of a host that still runs its instances without being recorded, and the host back first may then take its share"
        " past the fleet's cap; set FLEET_HOST_TTL to at least 122, or unset it"
    )
    assert warning(2, 3) is not None and warning(3, 10) is None
    assert warning(43199) is None  # the default TTL, capped at 86400 s, is still long enough
    assert warning(50000).endswith("no FLEET_HOST_TTL is that long (at most 86400s): set CHECK_INTERVAL to at most 43199")
