"""Which instances a scale-down stops (issue 19), and the hook's reports parsed: pure, no Redis."""

from __future__ import annotations

import json
import os

import pytest

from dramactl import reports, victims
from dramactl.instance import WorkerUnit
from dramactl.queue import parse_reports
from dramactl.scaler import Plan, plan
from dramactl.stats import InstanceReport

NOW = 1_700_000_000.0


def idle(n: int) -> InstanceReport:
    return InstanceReport(n, threads=4, busy=0, at=NOW)


def busy(n: int, age: float, count: int = 1, held: int = 0) -> InstanceReport:
    return InstanceReport(n, threads=4, busy=count, oldest=NOW - age, held=held, at=NOW)


def numbers(choice: victims.Choice) -> list[int]:
    return [p.number for p in choice.stop]


def test_idle_goes_before_busy_whatever_the_numbers() -> None:
    r = {1: idle(1), 2: busy(2, 30), 3: busy(3, 2)}
    choice = victims.choose([1, 2, 3], 1, r, NOW)
    assert [str(p) for p in choice.stop] == ["@1 (idle)"]


def test_among_busy_the_most_recent_start_goes_first() -> None:
    r = {1: busy(1, 5), 2: busy(2, 300), 3: busy(3, 40)}
    assert numbers(victims.choose([1, 2, 3], 2, r, NOW)) == [1, 3]


def test_ties_go_to_the_highest_number() -> None:
    r = {n: idle(n) for n in (1, 2, 3)}
    assert numbers(victims.choose([1, 2, 3], 2, r, NOW)) == [3, 2]
    r = {n: busy(n, 10) for n in (1, 2, 3)}
    assert numbers(victims.choose([1, 2, 3], 1, r, NOW)) == [3]


def test_no_reports_at_all_is_todays_rule_and_says_so() -> None:
    choice = victims.choose([1, 2, 5, 7], 2, {}, NOW)
    assert numbers(choice) == [7, 5] and all("no instance reports" in p.why for p in choice.stop)
    assert numbers(victims.choose([1, 2, 5, 7], 2, None, NOW)) == [7, 5]


def test_an_instance_without_a_report_goes_after_idle_before_busy() -> None:
    r = {1: busy(1, 3), 3: idle(3)}
    choice = victims.choose([1, 2, 3], 3, r, NOW)
    assert numbers(choice) == [3, 2, 1]
    assert "cannot see inside" in choice.stop[1].why and choice.stop[2].why.startswith("busy 1/4, oldest 3s")


def test_a_hold_without_a_running_task_is_busy_not_idle() -> None:
    r = {1: idle(1), 2: InstanceReport(2, threads=4, held=1, at=NOW)}
    assert numbers(victims.choose([1, 2], 1, r, NOW)) == [1]


def test_a_long_task_makes_the_scale_down_wait_but_idle_ones_still_stop() -> None:
    long_after = victims.long_after(30, mean_service=4.0)
    assert long_after == 15 == victims.long_after(30)
    r = {1: idle(1), 2: busy(2, 100), 3: busy(3, 60)}
    choice = victims.choose([1, 2, 3], 2, r, NOW, long_after=long_after)
    assert numbers(choice) == [1], "idle capacity is never kept alive by the wait"
    assert [p.number for p in choice.waiting] == [3]


def test_a_young_task_does_not_wait() -> None:
    r = {1: busy(1, 10), 2: busy(2, 100)}
    choice = victims.choose([1, 2], 1, r, NOW, long_after=15)
    assert numbers(choice) == [1] and choice.waiting == ()


def test_the_wait_ends_at_the_limit_and_then_stops_the_least_busy() -> None:
    r = {1: busy(1, 900), 2: busy(2, 100)}
    waiting = victims.choose([1, 2], 1, r, NOW, long_after=15, waiting_since=NOW - victims.WAIT_LIMIT + 1)
    assert numbers(waiting) == [] and [p.number for p in waiting.waiting] == [2]
    done = victims.choose([1, 2], 1, r, NOW, long_after=15, waiting_since=NOW - victims.WAIT_LIMIT)
    assert numbers(done) == [2] and "the limit" in done.stop[0].why and done.waiting == ()


def test_a_manual_choice_never_waits() -> None:
    r = {1: busy(1, 900), 2: busy(2, 100)}
    assert numbers(victims.choose([1, 2], 1, r, NOW)) == [2]


def test_plan_stops_the_chosen_ones_and_keeps_growing_by_the_lowest_free_number() -> None:
    units = [WorkerUnit(n, "active", "running") for n in (1, 2, 3)]
    r = {1: idle(1), 2: busy(2, 5), 3: busy(3, 50)}
    p = plan(units, 2, reports=r, now=NOW)
    assert p == Plan(stop=(1,)) and [str(x) for x in p.picks] == ["@1 (idle)"]
    assert plan(units, 1, reports=r, now=NOW).stop == (1, 2)
    assert plan(units, 2).stop == (3,), "no reports: the highest number"
    assert plan(units, 5, reports=r, now=NOW) == Plan(start=(4, 5))


def test_processes_of_one_instance_add_up() -> None:
    a = InstanceReport(3, threads=4, busy=1, oldest=NOW - 10, at=NOW - 1)
    b = InstanceReport(3, threads=4, busy=2, oldest=NOW - 30, held=1, at=NOW)
    m = a.merged(b)
    assert (m.threads, m.busy, m.oldest, m.held, m.at, m.processes) == (8, 3, NOW - 30, 1, NOW, 2)


def field(**over) -> str:
    base = {"threads": 4, "busy": 1, "oldest": int((NOW - 12) * 1000), "held": 0, "at": int(NOW * 1000)}
    return json.dumps({**base, **over})


def test_parse_reads_good_fields_and_ignores_stale_and_gone() -> None:
    pairs = ["1.100", field(), "1.101", field(busy=0, oldest=None), "2.200", field(at=int((NOW - 60) * 1000)), "3.300", field()]
    found, damaged = reports.parse(pairs, NOW, alive=lambda pid: pid != 300)
    assert damaged == [] and sorted(found) == [1]
    assert (found[1].busy, found[1].threads, found[1].processes, found[1].age(NOW)) == (1, 8, 2, 12.0)


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("1.100", "{", "not JSON"),
        ("1.100", "[1, 2]", "not a JSON object"),
        ("1.100", field(busy=-1), "must be counts"),
        ("1.100", field(threads="4"), "must be counts"),
        ("1.100", field(at=None), "must be counts"),
        ("1.100", field(oldest="yesterday"), "oldest must be"),
        ("1.100", field(busy=5), "busy 5 > threads 4"),
        ("1.100", field(paused="yes"), "paused must be true or false"),
        ("1.100", field(paused=1), "paused must be true or false"),
        ("1.100", field(queued=-1), "queued must be a count"),
        ("1.100", field(queued="2"), "queued must be a count"),
        ("one.100", field(), "not <instance>.<pid>"),
        ("1", field(), "not <instance>.<pid>"),
        (b"1.100", b"\xff\xfe", "not JSON"),
        ("1.100", "[" * 100_000, "not JSON"),  # nested past the parser's depth
        # Beyond what a float or os.kill takes (OverflowError in status, metrics, check and every tick before).
        ("1.100", field(at=10**400), "must be counts"),
        ("1.100", field(at=2**53 + 1), "must be counts"),
        ("1.100", field(oldest=10**400), "oldest must be"),
        ("1.100", field(oldest=int((NOW + 2 * 86_400) * 1000)), "oldest must be"),
        ("1.100", field(threads=10**400, busy=10**399), "must be counts"),
        ("1.100", field(held=10**30), "must be counts"),
        ("1.100", field(queued=10**30), "queued must be a count"),
        ("2.99999999999999999999999", field(), "is not a process id"),
        ("1.4194304", field(), "is not a process id"),
        ("1.0", field(), "is not a process id"),  # os.kill(0, 0) signals the group: always "alive"
        ("9" * 5000 + ".100", field(), "is not an instance number"),
        ("\u0661.100", field(), "not <instance>.<pid>"),  # a digit to str.isdigit, not to the hook
        ("1.100", field(at=int((NOW + 3600) * 1000)), "ahead of this host's clock"),  # else fresh for ever
    ],
)
def test_a_damaged_field_is_ignored_and_named(name, value, says) -> None:
    found, damaged = reports.parse([name, value, "2.100", field()], NOW, key="ns:__dramactl__.instances.h", alive=lambda pid: True)
    assert sorted(found) == [2], "the good field beside it is still read"
    assert len(damaged) == 1 and says in damaged[0] and "ns:__dramactl__.instances.h" in damaged[0] and "\n" not in damaged[0]


def test_a_pid_no_process_can_have_is_not_alive_and_never_raises() -> None:
    assert reports.process_alive(os.getpid())
    for pid in (0, -1, 2**22, 29999999999999999999999, 10**400):
        assert reports.process_alive(pid) is False, pid


def test_damaged_numbers_are_named_with_the_real_liveness_check_never_raised() -> None:
    """The review's fields, through the real os.kill check: each named, none raising."""
    now = NOW
    pairs = [
        "1.1", field(at=10**400), "2.99999999999999999999999", field(at=int((now + 10**6) * 1000)),
        "3.1", field(oldest=10**400), f"4.{os.getpid()}", field(),
    ]
    found, damaged = reports.parse(pairs, now, key="k")
    assert sorted(found) == [4] and len(damaged) == 3, damaged
    assert all(line.startswith("k field ") and len(line) < 300 for line in damaged)


def test_the_probe_reply_part_with_an_error_or_nothing() -> None:
    assert parse_reports([b""], NOW) == ({}, ())
    assert parse_reports(None, NOW) == ({}, ())
    found, damaged = parse_reports([b"k is a string, not a Dramatiq instance report hash"], NOW)
    assert found == {} and "not a Dramatiq instance report hash" in damaged[0]


def test_the_tick_line_names_why_each_stopped_instance_was_chosen_and_the_wait() -> None:
    from dramactl.fleet import JobResult
    from dramactl.policy import ScalingDecision
    from dramactl.scaler import Outcome

    r = {1: busy(1, 200), 2: idle(2), 3: busy(3, 90)}
    units = [WorkerUnit(n, "active", "running") for n in (1, 2, 3)]
    p = plan(units, 1, reports=r, now=NOW, long_after=15, waiting_since=NOW - 30)
    o = Outcome(ScalingDecision(3, 1, "drained"), [], stopped=[JobResult("dramatiq-worker@2.service", "stop", "done")], at=NOW, plan=p, waiting_since=NOW - 30)
    line = o.summary()
    assert "stop @2 (idle)" in line and "stopped @2:done" in line
    assert "scale-down waits for long tasks: @3 (busy 1/4, oldest 90s), waited 30s of 1800s" in line
    assert o.victims_text() == "@2 idle; waiting: @3 busy 1/4, oldest 90s"
    assert o.to_dict()["victims"] == [{"instance": 2, "why": "idle", "chosen": "idle"}]
    from dataclasses import replace

    paused = replace(o, intake_paused=(3,))
    assert "waited 30s of 1800s; intake paused: @3" in paused.summary() and paused.to_dict()["intake_paused"] == [3]


def test_the_history_keeps_the_choice_and_refuses_a_damaged_one(tmp_path) -> None:
    from dramactl.state import DamagedState, ScalerState, StateStore, TickRecord, _tick

    store = StateStore(tmp_path)
    rec = TickRecord(at=NOW, backlog=0, workers=3, target=2, victims="@2 idle", waiting_since=NOW - 5)
    store.save(ScalerState().with_tick(rec))
    assert store.load().history[-1] == rec
    with pytest.raises(DamagedState, match="victims"):
        _tick({"at": NOW, "backlog": 0, "workers": 1, "target": 1, "victims": 3}, "history[0]")


def test_status_shows_busy_threads_and_oldest_task_and_names_instances_it_cannot_see_inside() -> None:
    from dramactl.render import render_status

    up = {"active_state": "active", "sub_state": "running", "pid": 10, "uptime": 5, "restarts": 0, "is_up": True}
    data = {
        "time": NOW,
        "instances": [
            {**up, "name": "dramatiq-worker@1.service", "number": 1, "work": busy(1, 95, count=2).to_dict(NOW)},
            {**up, "name": "dramatiq-worker@2.service", "number": 2, "work": None},
        ],
    }
    lines = render_status(data).splitlines()
    row = next(line for line in lines if line.startswith("dramatiq-worker@1"))
    assert row.split()[-3:] == ["2/4", "95s", "-"]  # then MEMORY: not read here
    from dataclasses import replace

    data["instances"][0]["work"] = replace(busy(1, 95, count=2), paused=True).to_dict(NOW)
    row = next(line for line in render_status(data).splitlines() if line.startswith("dramatiq-worker@1"))
    assert row.split()[-4:] == ["2/4", "95s", "paused", "-"], "an instance whose intake is paused says so"
    assert next(line for line in lines if line.startswith("dramatiq-worker@2")).split()[-3:] == ["?", "?", "-"]
    assert any(line.startswith("cannot see inside @2: no report from the dramactl hook") for line in lines)


def test_when_the_app_s_mean_task_outlasts_the_drain_every_running_task_is_long() -> None:
    assert victims.mean_service(10, 900.0) == 90.0 and victims.mean_service(None, 5.0) is None and victims.mean_service(0, 0.0) is None
    after = victims.long_after(30, victims.mean_service(10, 900.0))
    assert after == 0.0
    r = {1: busy(1, 1), 2: busy(2, 2)}
    choice = victims.choose([1, 2], 1, r, NOW, long_after=after)
    assert numbers(choice) == [] and [p.number for p in choice.waiting] == [1], "a task begun a second ago is waited for too"
    r = {1: idle(1), 2: InstanceReport(2, threads=4, held=2, at=NOW)}
    assert numbers(victims.choose([1, 2], 2, r, NOW, long_after=after)) == [1, 2], "holds alone are no running task: no wait"


def test_the_intake_pause_is_read_and_a_report_without_it_is_not_paused() -> None:
    pairs = ["1.100", field(paused=True, queued=3), "2.200", field(), "3.300", field(paused=False)]
    found, damaged = reports.parse(pairs, NOW, alive=lambda pid: True)
    assert damaged == [] and [found[n].paused for n in (1, 2, 3)] == [True, False, False]
    assert [found[n].queued for n in (1, 2, 3)] == [3, 0, 0]
    assert InstanceReport(1, paused=True).merged(InstanceReport(1)).paused, "one paused process of an instance: the instance is paused"
    assert found[1].to_dict(NOW)["paused"] is True


def test_a_paused_busy_instance_goes_before_other_busy_ones_and_the_tick_line_says_so() -> None:
    """An earlier tick's wait paused it: choosing another busy one would pause a second instance."""
    from dataclasses import replace

    r = {1: busy(1, 5), 2: replace(busy(2, 200), paused=True), 3: busy(3, 20)}
    picks = victims.rank([1, 2, 3], r, NOW, prefer_paused=True)
    assert [p.number for p in picks] == [2, 1, 3]
    assert picks[0].why == "busy 1/4, oldest 200s, intake paused"
    waiting = victims.choose([1, 2, 3], 1, r, NOW, long_after=0.0).waiting
    assert [p.number for p in waiting] == [2], "the tick keeps waiting for the paused one"
    assert [p.number for p in victims.rank([1, 2, 3], r, NOW)] == [1, 3, 2], "a cut (manual stop) spares the paused one's older work"
    assert numbers(victims.choose([1, 2, 3], 1, r, NOW, long_after=0.0, waiting_since=NOW - 2000)) == [1], "so does the cut at the wait's limit"
    r[4] = idle(4)
    assert [p.number for p in victims.rank([1, 2, 3, 4], r, NOW, prefer_paused=True)][:2] == [4, 2], "idle still goes first"


def test_the_intake_is_paused_only_when_every_running_task_counts_as_long_and_no_message_waits() -> None:
    """Mean task over the drain: new intake would keep the wait going, so it is paused. Otherwise
    only an old task is waited for and new ones do not prolong the wait: no pause. Nor while a
    message waits for a thread (ready in Redis, or queued in an instance): the paused instance's
    free threads would be withheld from it."""
    from dataclasses import replace

    from dramactl import intake

    r = {1: busy(1, 40), 2: busy(2, 50)}
    long_choice = victims.choose([1, 2], 1, r, NOW, long_after=0.0)
    assert not victims.messages_wait(0, r)
    assert victims.to_pause(long_choice.waiting, 0.0, victims.messages_wait(0, r)) == [1]
    assert victims.to_pause(long_choice.waiting, 0.0, victims.messages_wait(3, r)) == [], "messages ready in Redis"
    queued = {**r, 2: replace(r[2], queued=2)}
    assert victims.messages_wait(0, queued, [1]) and victims.to_pause(long_choice.waiting, 0.0, True) == [], "messages queued behind busy threads"
    own = {**r, 1: replace(r[1], queued=2)}
    assert not victims.messages_wait(0, own, [1]), "what the waited-for instance holds it runs itself: no reason not to pause"
    short_choice = victims.choose([1, 2], 1, r, NOW, long_after=15.0)
    assert [p.number for p in short_choice.waiting] == [1] and victims.to_pause(short_choice.waiting, 15.0, False) == []
    assert victims.to_pause((), 0.0, False) == []
    assert victims.to_pause(long_choice.waiting, 0.0, False, others_stay=False) == [], "target 0: nothing else would take what arrives"
    assert not intake.needs_write([], {1: busy(1, 5)}, False), "nothing to set or remove: no round trip"
    assert intake.needs_write([1], {}, False) and intake.needs_write([], {}, True)
    from dataclasses import replace

    assert intake.needs_write([], {1: replace(busy(1, 5), paused=True)}, False), "a pause left to remove"


def test_the_hook_and_dramactl_name_this_host_alike(tmp_path, monkeypatch) -> None:
    """The probe reads the reports the hook files under its host identity: both must compute it
    the same way (the hook cannot import dramactl), for a machine-id, a damaged one and none."""
    import builtins
    import importlib.util
    from pathlib import Path

    from dramactl import reports

    spec = importlib.util.spec_from_file_location("hook_identity", Path(reports.__file__).with_name("hook") / "dramactl_ready.py")
    source = spec.loader.get_source("hook_identity")
    namespace: dict = {}
    exec(source[source.index("def host_identity") : source.index("def notify")], {"socket": __import__("socket")}, namespace)
    hook_identity = namespace["host_identity"]
    real_open = builtins.open
    for text in ("0123456789abcdef0123456789abcdef\n", "not-a-machine-id\n", None):
        path = tmp_path / "machine-id"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(path if f == "/etc/machine-id" else f, *a, **k))
        assert hook_identity() == reports.host_identity(str(path)), text
    monkeypatch.setattr(builtins, "open", real_open)
    from dramactl import intake

    line = next(x for x in source.splitlines() if x.startswith("PAUSE_KEY = "))
    hook_key = line.split('"')[1].format(namespace="ns", host="h")
    assert hook_key == intake.pause_key("ns", "h"), "the hook reads the marks the tick writes"
    line = next(x for x in source.splitlines() if x.startswith("INSTANCES_KEY = "))
    assert line.split('"')[1].format(namespace="ns", host="h") == reports.instances_key("ns", "h") == reports.instances_prefix("ns") + "h"
    line = next(x for x in source.splitlines() if x.startswith("REPORTS_TTL_MS = "))
    assert int(line.split("=")[1].split("#")[0].replace("_", "")) == reports.REPORTS_TTL * 1000, "the fleet counts by the hook's expiry"
