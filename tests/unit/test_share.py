"""The pure part of several hosts, one fleet: shares, room, the fleet decision (dramactl.share)."""

from __future__ import annotations

import itertools

import pytest

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
