"""Replay and tune on damaged, hostile or edge-case histories (the review of dramactl replay/tune):
every bad input is one line naming what to change, exit 2, never a traceback, never a run for ever;
the figures mean what docs/replay.md says."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
from click.testing import CliRunner

from dramactl import history, replay as rp, tune as tn
from dramactl.cli import main
from dramactl.settings import SettingsError
from tests.unit.test_replay import FLEET, T0, _FakeReader, constant, entry


def q(done, busy, name: str = "default", **more) -> dict:
    return {"name": name, "done_total": done, "busy_seconds_total": busy, **more}


def record(at: float, queues, *, current: str = "2", backlog: str = "0", **fields: str) -> dict:
    """A journal record as ``journalctl -o json`` gives it (all strings), from dramactl's unit."""
    text = queues if isinstance(queues, str) else json.dumps(queues)
    return {"__REALTIME_TIMESTAMP": str(int(at * 1e6)), "_SYSTEMD_UNIT": "dramactl.service", "DRAMACTL_KIND": "tick",
            "DRAMACTL_CURRENT": current, "DRAMACTL_TARGET": "2", "DRAMACTL_BACKLOG": backlog, "DRAMACTL_QUEUES": text,
            **{f"DRAMACTL_{k.upper()}": v for k, v in fields.items()}}


def steady(n: int = 41, interval: float = 15.0) -> list[dict]:
    """1 message a second of 2 s each, read every ``interval`` seconds."""
    return [record(T0 + interval * i, [q(interval * i, 2 * interval * i)]) for i in range(n)]


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The CLI over records given to the stand-in reader; returns run(records, *args) -> click Result."""
    env = tmp_path / "dramactl.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in FLEET.items()))
    monkeypatch.setenv("DRAMACTL_ENV_FILE", str(env))
    monkeypatch.setenv("DRAMACTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "systemd", types.SimpleNamespace(journal=types.SimpleNamespace(Reader=_FakeReader)))
    monkeypatch.setattr(history, "can_read_system_journal", lambda: True)

    def run(records: list[dict], *args: str):
        monkeypatch.setattr(_FakeReader, "records", records)
        return CliRunner().invoke(main, list(args))

    return run


def one_line(result, exit_code: int = 2) -> str:
    """The command's only output line (click's runner mixes stderr in), with the exit code asserted."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from dramactl.sim import simulator

    def refuse(*a, **k):
        raise AssertionError("a run was simulated")

    monkeypatch.setattr(simulator, "simulate", refuse)


# ---- 1: a huge service time; a run that would not end ----------------------------------------------------


@pytest.mark.parametrize("busy", [1e12, 86_400.0 * 11])
def test_a_mean_service_above_a_day_is_one_line_naming_the_field_and_the_entry(busy: float, journal, monkeypatch) -> None:
    """busy_seconds_total 1e12 over one completion was one service of 30 000 years: the simulator ticked until it ended."""
    no_run(monkeypatch)
    records = steady(11)
    records[5]["DRAMACTL_QUEUES"] = json.dumps([q(61.0, 120.0 + busy)])  # one more completion than the entry before
    for r in records[6:]:
        r["DRAMACTL_QUEUES"] = json.dumps([q(61.0 + 15 * (int(r["__REALTIME_TIMESTAMP"]) // 15_000_000 - int(T0) // 15), 120.0 + busy)])
    line = one_line(journal(records, "replay"))
    assert "busy_seconds_total" in line and rp._when(T0 + 75) in line and "--since/--until" in line, line
    assert one_line(journal(records, "tune", "--p95", "10")) == line


def test_busy_seconds_adding_up_to_more_than_a_float_holds_is_one_line(journal, monkeypatch) -> None:
    no_run(monkeypatch)
    records = [record(T0 + 15 * i, [q(1.0 * i, 1.7e308 * (i > 0)), q(1.0 * i, 1.7e308 * (i > 0), name="b")]) for i in range(5)]
    line = one_line(journal(records, "replay"))
    assert "busy_seconds_total" in line and rp._when(T0 + 15) in line, line


def test_a_run_that_does_not_end_within_its_bound_is_a_replay_error_not_a_run_for_ever(monkeypatch) -> None:
    """The last backstop: the simulator is bounded to RUN_TICKS ticks; here 20 while the run needs hundreds."""
    monkeypatch.setattr(rp, "RUN_TICKS", 20)
    rebuilt = rp.rebuild(constant(3.0, 4.0, 41), cv=0.0)
    with pytest.raises(rp.ReplayError, match=r"had not served every rebuilt message after 20 ticks.*--since/--until"):
        rp.run_policy(rebuilt, rp.variant(FLEET, {}), "settings in force")
    with pytest.raises(rp.ReplayError, match="after 20 ticks"):
        rp.replay(rebuilt, FLEET, [])


def test_the_simulators_bound_is_off_unless_asked_and_changes_nothing_below_it() -> None:
    from dramactl.sim import simulator
    from dramactl.sim.controllers import DramactlController

    rebuilt = rp.rebuild(constant(3.0, 4.0, 41), cv=0.0)
    settings = rp.variant(FLEET, {})

    def run(**bound):
        return simulator.simulate(rp.workload(rebuilt, 8), DramactlController(settings, roundtrip=False), policy="x", interval=15.0,
                                  initial_workers=2, min_workers=1, keep_ticks=True, **bound)

    free = run()
    assert (free.worker_seconds, free.waits) == (run(max_ticks=len(free.ticks)).worker_seconds, run(max_ticks=len(free.ticks)).waits)
    with pytest.raises(simulator.TooLong):
        run(max_ticks=len(free.ticks) - 1)


# ---- 2: the message cap before the first allocation ------------------------------------------------------


def test_a_first_backlog_above_the_cap_is_refused_before_it_is_allocated(journal, monkeypatch) -> None:
    """[0.0] * 10**13 is 80 TB: a MemoryError (or the machine's memory) before the cap was checked."""
    no_run(monkeypatch)
    records = steady(11)
    records[0]["DRAMACTL_BACKLOG"] = str(10**13)
    line = one_line(journal(records, "replay"))
    assert line.startswith(f"dramactl: the range holds more than {rp.MAX_MESSAGES:,} messages") and "--since/--until" in line


# ---- 3: damaged numbers: skipped or left out, never an OverflowError -------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("CURRENT", "1" + "0" * 400), ("CURRENT", "-5"), ("CURRENT", "1000001"),
    ("BACKLOG", "-1" + "0" * 150), ("BACKLOG", str(2**53 + 1)), ("READY", "-1"), ("WANTED", "1" + "0" * 30),
])
def test_an_integer_field_out_of_range_skips_its_entry_with_the_one_line_warning(name: str, value: str, caplog) -> None:
    import logging

    records = steady(6)
    records[2][f"DRAMACTL_{name}"] = value
    with pytest.raises(history.DamagedEntry) as caught:
        history.Entry.from_journal(records[2])
    assert caught.value.field == f"DRAMACTL_{name}" and "is not a count from 0 to" in str(caught.value)
    with caplog.at_level(logging.WARNING, logger="dramactl.history"):
        entries = list(history.readable(records))
    assert [e.at for e in entries] == [T0 + 15 * i for i in (0, 1, 3, 4, 5)]
    assert len(caplog.records) == 1 and f"DRAMACTL_{name}" in caplog.records[0].getMessage()


def test_the_largest_counts_an_entry_may_hold_are_read() -> None:
    r = steady(1)[0]
    e = history.Entry.from_journal({**r, "DRAMACTL_CURRENT": str(history.MAX_INSTANCES), "DRAMACTL_BACKLOG": str(2**53)})
    assert (e.current, e.backlog) == (history.MAX_INSTANCES, 2**53)


@pytest.mark.parametrize("field", ["done_total", "busy_seconds_total", "busy_sq_total"])
def test_a_counter_no_float_holds_is_left_out_not_an_overflow(field: str) -> None:
    """A 401-digit integer in DRAMACTL_QUEUES (json reads it as an int): float() of it raised OverflowError."""
    entries = [entry(T0 + 15 * i, [{**q(10.0 * i, 20.0 * i), "busy_sq_total": 40.0 * i}]) for i in range(5)]
    entries[2].queues[0][field] = 10**400
    sample = rp.Sample.of(entries[2])
    if field == "busy_sq_total":
        assert sample.counters == (("default", 20.0, 40.0),) and sample.squares == ()
    else:
        assert sample.counters == ()
    rebuilt = rp.rebuild([rp.Sample.of(e) for e in entries])
    assert rebuilt.mean_service == pytest.approx(2.0) and len(rebuilt.arrivals) == 40


@pytest.mark.parametrize("value", [True, "3", None, -1.0, math.nan])
def test_a_counter_that_is_not_a_count_is_left_out(value) -> None:
    assert rp.counter(value) is None
    assert rp.counter(3) == 3.0 and rp.counter(0.5) == 0.5


def test_done_totals_adding_up_to_more_than_a_float_holds_are_one_line_not_an_overflow() -> None:
    samples = [rp.Sample.of(entry(T0 + 15 * i, [q(1.7e308 * (i > 0), 1.0 * i), q(1.7e308 * (i > 0), 1.0 * i, name="b")])) for i in range(3)]
    with pytest.raises(rp.ReplayError, match=r"the queues' done_total \(DRAMACTL_QUEUES\) add up to more than a float holds"):
        rp.rebuild(samples)


@pytest.mark.parametrize(("name", "value"), [("CURRENT", "1" + "0" * 400), ("CURRENT", "1e400"), ("CURRENT", "-5"),
                                             ("BACKLOG", "-1" + "0" * 400), ("BACKLOG", "-1e400")])
def test_damaged_fields_through_the_cli_are_a_warning_and_a_replay_not_a_traceback(name: str, value: str, journal) -> None:
    records = steady(41)
    records[20][f"DRAMACTL_{name}"] = value
    result = journal(records, "replay", "--json")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "Traceback" not in result.output


def test_a_401_digit_counter_through_the_cli_is_left_out(journal) -> None:
    records = steady(41)
    records[20]["DRAMACTL_QUEUES"] = '[{"name": "default", "done_total": 1' + "0" * 400 + ', "busy_seconds_total": 600}]'
    result = journal(records, "replay", "--json")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert json.loads(result.output)["messages"] == 600


# ---- 4: a queue first seen after the first entry -------------------------------------------------------------


def test_a_queue_first_seen_after_the_first_entry_starts_from_its_counters_not_from_zero() -> None:
    """Its probe failed at the first entry: its counters, cumulative since its hook first ran (500 000 messages
    long before the range), were all replayed as arrivals in the first interval."""
    def at(i: int, *, reports: bool) -> history.Entry:
        queues = [{**q(15.0 * i, 30.0 * i), "backlog": 0}]
        queues.append({**q(500_000 + 7.5 * i, 500_000 + 7.5 * i, name="reports"), "backlog": 0} if reports
                      else {"name": "reports", "error": "probe failed", "backlog": 0})
        return entry(T0 + 15 * i, queues)

    failed_first = rp.rebuild([rp.Sample.of(at(i, reports=i > 0)) for i in range(41)])
    read_from_the_second = rp.rebuild([rp.Sample.of(at(i, reports=True)) for i in range(1, 41)])
    assert len(failed_first.arrivals) == pytest.approx(15 * 40 + 7.5 * 39, abs=1)  # the first interval: the default queue's alone
    assert len(failed_first.arrivals) - len(read_from_the_second.arrivals) == 15
    assert failed_first.mean_service == pytest.approx(read_from_the_second.mean_service, rel=0.01)


def test_a_counter_that_went_down_still_counts_from_zero() -> None:
    samples = [rp.Sample(T0 + 15 * i, True, 2, 0, (("default", d, 2 * d),), False) for i, d in enumerate([100.0, 130.0, 20.0, 50.0])]
    assert len(rp.rebuild(samples).arrivals) == 30 + 20 + 30


# ---- 5: worker-hours over one common period ----------------------------------------------------------------


def test_every_row_is_charged_over_the_same_period_so_a_smaller_minimum_never_costs_more() -> None:
    """3 msgs/s of 4 s on 8-thread workers: 2 instances, whatever MIN. MIN=1 scales down to 1 after the range
    (SCALE_DOWN_STABILIZATION later): charged to that scale-down, it cost more than MIN=2, charged only to its last
    completion, and tune recommended MIN_PROCESSES=2 as the cheaper."""
    rebuilt = rp.rebuild(constant(3.0, 4.0, 121), cv=0.0)
    result = tn.tune(rebuilt, FLEET, 60.0, tried=[{}, {"MIN_PROCESSES": "2"}])
    assert result.after.changes == {}  # a tie at worst, the settings in force first: nothing to change
    report = rp.replay(rebuilt, {**FLEET, "MAX_PROCESSES": "2"}, [{"MIN_PROCESSES": "2"}])
    rows = {r.name: r for r in report.rows}
    assert rows["settings in force"].worker_hours <= rows["MIN_PROCESSES=2"].worker_hours == pytest.approx(rows["static MAX (2)"].worker_hours)
    assert rows["lower bound"].worker_hours <= min(r.worker_hours for n, r in rows.items() if n not in ("lower bound", "recorded"))
    in_force = rp.variant(FLEET, {})
    one, two = (rp.Ran.of(rp.run_policy(rebuilt, rp.variant(FLEET, c), "x", recorded=in_force), "x", c) for c in ({}, {"MIN_PROCESSES": "2"}))
    assert one.horizon > two.horizon  # MIN=1's scale-down after the range
    assert rp.charge([one, two])[0].worker_hours <= two.row.worker_hours  # the same fleets until MIN=1 scales down: no dearer


def test_charge_counts_each_fleet_at_rest_until_the_latest_end() -> None:
    a, b = rp.Row("a", 1.0, 1.0, 0.0, 2), rp.Row("b", 1.0, 2.0, 0.0, 2)
    rows = rp.charge([rp.Ran(a, horizon=3600.0, resting=1), rp.Ran(b, horizon=7200.0, resting=3)])
    assert [r.worker_hours for r in rows] == [2.0, 2.0]


# ---- 6: a purge ------------------------------------------------------------------------------------------------


def purged(ticks: int = 121) -> list[rp.Sample]:
    """1 msg/s of 2 s served throughout; 1000 stale messages waiting until the 5th read, then purged."""
    return [rp.Sample(T0 + 15 * i, True, 2, 1000 if i < 5 else 0, (("default", 15.0 * i, 30.0 * i),), False) for i in range(ticks)]


def test_a_purge_takes_its_messages_out_and_does_not_swallow_the_later_arrivals() -> None:
    """The drop of 985 without completions made a carry of -985 that swallowed every arrival for 16 minutes,
    and the 1000 purged messages were replayed as served."""
    rebuilt = rp.rebuild(purged())
    assert rebuilt.left == 1000 - 15 - 15  # the drop less the interval's 15 completions and the next interval's (the hook's late flush)
    assert len(rebuilt.arrivals) == 15 * 120  # every completion counted: nothing phantom, nothing swallowed
    after = [a for a in rebuilt.arrivals if a > 90.0]
    assert len(after) == 15 * 114 and after[0] < 106.0  # arrivals from the interval after the next one on
    report = rp.replay(rebuilt, FLEET, [])
    assert report.left == 970 and "970 more left the queues without completing" in rp.render(report)
    assert report.to_dict()["left"] == 970


def test_a_drop_the_next_reads_completions_explain_is_the_hooks_late_flush_not_a_purge() -> None:
    """The hook flushes once a second: a read can see the backlog fall before the completions are counted."""
    samples = [rp.Sample(T0 + 15 * i, True, 2, b, (("default", d, 2 * d),), False)
               for i, (b, d) in enumerate([(20, 0.0), (20, 15.0), (0, 20.0), (0, 50.0), (0, 65.0)])]
    rebuilt = rp.rebuild(samples)
    assert rebuilt.left == 0 and len(rebuilt.arrivals) == 20 + 15 + 0 + 15 + 15


def test_a_queue_whose_read_failed_is_not_a_purge() -> None:
    """Its figures are zeros in that entry: it stands at its last backlog read, and its messages did not leave."""
    def at(i: int, failed: bool) -> history.Entry:
        other = {"name": "b", "error": "timeout", "backlog": 0} if failed else {**q(0.0, 0.0, name="b"), "backlog": 400}
        e = entry(T0 + 15 * i, [{**q(15.0 * i, 30.0 * i), "backlog": 10}, other], backlog=10 + (0 if failed else 400))
        return e

    read = rp.rebuild([rp.Sample.of(at(i, False)) for i in range(9)])
    failing = rp.rebuild([rp.Sample.of(at(i, i == 4)) for i in range(9)])
    assert failing.left == 0 and failing.arrivals == read.arrivals


# ---- 7, 8: the range's span ------------------------------------------------------------------------------------


def test_entries_a_year_apart_are_refused_before_any_run(journal, monkeypatch) -> None:
    no_run(monkeypatch)
    records = [record(T0, [q(0.0, 0.0)]), record(T0 + 365 * 86400, [q(100.0, 200.0)])]
    line = one_line(journal(records, "replay"))
    assert "more than a replay simulates (250,000)" in line and "narrow the range with --since/--until" in line, line
    line = one_line(journal(records, "tune", "--p95", "10"))
    assert "ticks at CHECK_INTERVAL=15" in line and "narrow the range with --since/--until or raise CHECK_INTERVAL" in line, line


def test_the_span_is_counted_at_the_smallest_check_interval_of_the_runs(monkeypatch) -> None:
    no_run(monkeypatch)
    rebuilt = rp.rebuild(constant(1e-5, 1.0, 2, interval=40 * 86400.0))  # 40 days: 230 400 ticks at 15 s, 3 456 000 at 1 s
    in_force = rp.variant({**FLEET, "CHECK_INTERVAL": "60"}, {})
    rp.check_span(rebuilt, in_force, [rp.variant(FLEET, {})])
    with pytest.raises(rp.ReplayError, match=r"ticks at CHECK_INTERVAL=1, more than a replay simulates.*raise CHECK_INTERVAL"):
        rp.replay(rebuilt, {**FLEET, "CHECK_INTERVAL": "60"}, [{"CHECK_INTERVAL": "1"}])


@pytest.mark.parametrize("gap", [0.0, 0.5, 29.0])
def test_a_range_shorter_than_two_ticks_asks_to_widen_it(gap: float, journal, monkeypatch) -> None:
    """Half a second between two entries gave 7 200 actions/hour."""
    no_run(monkeypatch)
    records = [record(T0, [q(0.0, 0.0)]), record(T0 + gap, [q(1.0, 2.0)], current="3")]
    for args in (["replay"], ["tune", "--p95", "10"]):
        line = one_line(journal(records, *args))
        assert "less than two ticks at CHECK_INTERVAL=15" in line and "widen it with --since/--until" in line, line


def test_a_range_of_two_ticks_replays() -> None:
    rp.check_span(rp.rebuild(constant(1.0, 1.0, 3)), rp.variant(FLEET, {}), hpa=True)


# ---- 9, 10, 15: options ----------------------------------------------------------------------------------------


def unread(monkeypatch) -> None:
    def entries(*a):
        raise AssertionError("the journal was read")

    monkeypatch.setattr(history, "entries", entries)


@pytest.mark.parametrize("option", ["MAX_QUEUE_WAIT=", "MAX_QUEUE_WAIT= ", "MAX_QUEUE_WAIT=30,MIN_PROCESSES="])
def test_a_set_without_a_value_is_one_line_naming_it(option: str, journal, monkeypatch) -> None:
    """NAME= replayed the default as if it were a variant."""
    unread(monkeypatch)
    line = one_line(journal([], "replay", "--set", option))
    name = option.rstrip(" ").rstrip("=").split(",")[-1]
    assert line.startswith(f"dramactl: --set {name}=: has no value") and f"--set {name}=VALUE" in line, line
    with pytest.raises(SettingsError):
        rp.parse_sets([option])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "x", "1e999"])
def test_a_p95_that_is_not_a_finite_number_of_seconds_is_one_line(value: str, journal, monkeypatch) -> None:
    unread(monkeypatch)
    line = one_line(journal([], "tune", "--p95", value))
    assert line.startswith(f"dramactl: --p95 {value!r}: not a finite number of seconds above 0") and "--p95 10" in line, line


def test_a_reversed_range_says_so(journal, monkeypatch) -> None:
    unread(monkeypatch)
    for args in (["replay"], ["tune", "--p95", "10"]):
        line = one_line(journal([], *args, "--since", "-1h", "--until", "-2h"))
        assert line == "dramactl: --since '-1h' is after --until '-2h': the range is reversed; swap them", line


# ---- 11: tune under POLICY=step ------------------------------------------------------------------------------


def test_tune_under_the_step_policy_varies_only_the_minimum() -> None:
    """The step policy reads neither MAX_QUEUE_WAIT nor SCALE_DOWN_STABILIZATION: 74 runs of 4 different ones."""
    step = {**FLEET, "MAX_PROCESSES": "4", "POLICY": "step"}
    assert tn.candidates(step) == [{}, {"MIN_PROCESSES": "1"}, {"MIN_PROCESSES": "2"}, {"MIN_PROCESSES": "3"}, {"MIN_PROCESSES": "4"}]
    assert len(tn.candidates({**FLEET, "MAX_PROCESSES": "4"})) == 1 + 3 * 6 * 4 + 1
