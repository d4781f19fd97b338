"""Replay and tune on synthetic histories whose answer is known; their bad input."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dramactl import history, replay as rp, tune as tn
from dramactl.cli import main
from dramactl.settings import SettingsError

T0 = 1_700_000_000.0
FLEET = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"}


def constant(rate: float, service: float, ticks: int, *, interval: float = 15.0, current: int = 2, backlog: int = 12) -> list[rp.Sample]:
    """A steady load as the journal records it: the hook's counters grow by rate x interval
    completions and rate x interval x service busy seconds per tick; the backlog holds."""
    out = []
    for i in range(ticks):
        done = rate * interval * i
        out.append(rp.Sample(T0 + interval * i, True, current, backlog, (("default", done, done * service),), False))
    return out


def entry(at: float, queues: list, current: int = 2, backlog: int = 0) -> history.Entry:
    return history.Entry(at=at, kind="tick", command="tick", current=current, target=current, reason="", reason_class="steady",
                         backlog=backlog, queues=queues)


def test_a_constant_load_rebuilds_its_arrivals_and_service_time() -> None:
    rebuilt = rp.rebuild(constant(3.0, 4.0, 241))
    # 240 intervals of 45 arrivals, plus the 12 waiting at the first entry
    assert len(rebuilt.arrivals) == 240 * 45 + 12
    assert rebuilt.mean_service == pytest.approx(4.0)
    assert rebuilt.duration == pytest.approx(3600.0)
    assert all(0.0 <= a <= 3600.0 for a in rebuilt.arrivals) and rebuilt.arrivals == sorted(rebuilt.arrivals)
    assert sum(rebuilt.services) / len(rebuilt.services) == pytest.approx(4.0, rel=0.05)


def test_a_constant_load_replayed_with_the_settings_in_force_keeps_the_steady_fleet_and_barely_waits() -> None:
    """3 msgs/s of 4 s on 8-thread workers is 12 busy threads: ceil(12 / 8) = 2 workers."""
    rebuilt = rp.rebuild(constant(3.0, 4.0, 241), cv=0.0)
    result = rp.run_policy(rebuilt, rp.variant(FLEET, {}), "in force")
    steady = [t.workers for t in result.ticks if 600 <= t.at <= 3600]
    assert set(steady) == {math.ceil(3.0 * 4.0 / 8)}
    assert result.p95 < 1.0
    fit = rp.fit(result, rebuilt.recorded)
    assert fit["ticks"] == 241 and fit["fleet_mae"] < 0.1


def test_the_report_has_every_run_side_by_side_and_the_lower_bound_under_them_all() -> None:
    report = rp.replay(rp.rebuild(constant(3.0, 4.0, 121)), FLEET, [{"MAX_QUEUE_WAIT": "10"}])
    rows = {r.name: r for r in report.rows}
    assert list(rows) == ["recorded", "settings in force", "MAX_QUEUE_WAIT=10", "static MAX (10)", "hpa/keda 15s", "lower bound"]
    assert rows["static MAX (10)"].peak_workers == 10
    assert rows["lower bound"].worker_hours <= min(r.worker_hours for n, r in rows.items() if n not in ("lower bound", "recorded"))
    # the fluid demand of 12 busy threads on 8-thread workers over 30 min: 0.75 worker-hours
    assert rows["lower bound"].worker_hours == pytest.approx(0.75, rel=0.05)
    assert rows["recorded"].worker_hours == pytest.approx(1.0)  # 2 instances for 30 min
    text = rp.render(report)
    assert "fit (settings in force vs recorded, 121 ticks)" in text and "MAX_QUEUE_WAIT=10" in text
    json.dumps(report.to_dict())


def test_counters_read_from_journal_entries_survive_a_reset_and_damaged_values() -> None:
    q = lambda done, busy: {"name": "default", "done_total": done, "busy_seconds_total": busy}  # noqa: E731
    entries = [
        entry(T0, [q(100.0, 200.0)]),
        entry(T0 + 15, [q(130.0, 260.0)]),
        entry(T0 + 30, [q(20.0, 40.0)]),  # Redis flushed: the counters start again
        entry(T0 + 45, [{"name": "default", "done_total": "x", "busy_seconds_total": None}]),  # damaged: left out
        entry(T0 + 60, [q(50.0, 100.0)]),
    ]
    rebuilt = rp.rebuild([rp.Sample.of(e) for e in entries])
    assert len(rebuilt.arrivals) == 30 + 20 + 30
    assert rebuilt.mean_service == pytest.approx(2.0)


def test_a_range_without_the_hooks_counters_is_one_line() -> None:
    with pytest.raises(rp.ReplayError, match="fewer than two entries with the worker hook's counters"):
        rp.rebuild([rp.Sample.of(entry(T0, [{"name": "default"}]))])


def test_tune_finds_settings_that_meet_the_p95_and_cost_no_more_than_those_that_also_do() -> None:
    rebuilt = rp.rebuild(constant(3.0, 4.0, 121))
    result = tn.tune(rebuilt, FLEET, 10.0)
    assert result.met and result.after.p95_wait <= 10.0
    assert result.tried == len(tn.candidates(FLEET))
    text = tn.render(result, rebuilt)
    assert "Nothing was changed" in text
    for line in tn.env_lines(result.after.changes):
        assert line in text.splitlines()


def test_a_week_of_15_s_ticks_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 320 entries read one at a time from the journal reader, kept as samples, replayed (completes)."""
    q = lambda i: [{"name": "default", "done_total": 0.75 * i, "busy_seconds_total": 3.0 * i}]  # noqa: E731
    made = []

    def entries(since, until):
        for i in range(40_320):
            made.append(i)
            yield entry(T0 + 15 * i, q(i), current=1)

    monkeypatch.setattr(history, "entries", entries)
    samples = rp.read_samples(None, None)
    assert len(samples) == len(made) == 40_320
    rebuilt = rp.rebuild(samples)
    assert len(rebuilt.arrivals) == pytest.approx(0.75 * 40_319, abs=2)
    report = rp.replay(rebuilt, {**FLEET, "CHECK_INTERVAL": "180"}, [])
    assert report.ticks == 40_320 and {r.name for r in report.rows} >= {"settings in force", "lower bound"}


@pytest.mark.parametrize(
    ("option", "line"),
    [
        ("FOO=1", "dramactl: --set FOO: not a setting a replay can change; use one of POLICY, MIN_PROCESSES"),
        ("MAX_QUEUE_WAIT=abc", "dramactl: --set MAX_QUEUE_WAIT: 'abc' is not a number"),
        ("MAX_QUEUE_WAIT", "dramactl: --set MAX_QUEUE_WAIT: not NAME=VALUE; write e.g. --set MAX_QUEUE_WAIT=30"),
        ("MIN_PROCESSES=20", "dramactl: --set MIN_PROCESSES"),
    ],
)
def test_a_bad_set_is_one_line_naming_it_with_exit_2_before_the_journal_is_read(option: str, line: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DRAMACTL_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.chdir(tmp_path)

    def unread(*a):
        raise AssertionError("the journal was read")

    monkeypatch.setattr(history, "entries", unread)
    result = CliRunner().invoke(main, ["replay", "--set", option])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith(line), result.output


def test_an_unreadable_journal_is_historys_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DRAMACTL_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(history, "can_read_system_journal", lambda: False)
    for args in (["replay"], ["tune", "--p95", "10"], ["history"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 3, result.output
        assert "cannot read the system journal" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_set_name_must_be_a_setting() -> None:
    with pytest.raises(SettingsError):
        rp.parse_sets(["NOPE=1"])
    assert rp.parse_sets(["max_queue_wait=30,SCALE_DOWN_STABILIZATION=60"]) == [{"MAX_QUEUE_WAIT": "30", "SCALE_DOWN_STABILIZATION": "60"}]


def test_the_tick_path_does_not_import_the_simulator_or_replay() -> None:
    code = "import sys, dramactl.scaler, dramactl.cli; print(sorted(m for m in sys.modules if m.startswith(('dramactl.sim', 'dramactl.replay', 'dramactl.tune'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_start_up_comes_from_the_scalers_state_file_read_only(tmp_path) -> None:
    import time as clock

    from dramactl.state import ScalerState, StateStore, TickRecord

    now = clock.time()
    state = ScalerState()
    for k, startup in enumerate((None, 2.5, 7.0, 4.0)):
        state = state.with_tick(TickRecord(at=now - 60 + k, backlog=0, workers=1, target=1, startup=startup))
    store = StateStore(tmp_path)
    store.path.write_text(json.dumps(state.to_dict()))
    values = {**FLEET, "DRAMACTL_STATE_DIR": str(tmp_path)}
    assert rp.recorded_startup(values) == (2.5, 7.0)
    store.path.write_text("{damaged")
    assert rp.recorded_startup(values) is None
    assert store.path.read_text() == "{damaged" and [p.name for p in tmp_path.iterdir()] == ["state.json"]  # not set aside
    rebuilt = rp.rebuild(constant(3.0, 4.0, 41))
    rebuilt.startup = (20.0, 20.0)
    assert rp.workload(rebuilt, 8).startups[:3] == [20.0, 20.0, 20.0]


def test_tune_says_when_no_combination_meets_the_p95() -> None:
    """A 600-message block on a fleet of at most 2 instances of 8 threads cannot start them all within a second."""
    samples = constant(0.1, 4.0, 21, backlog=0)
    samples[1] = rp.Sample(samples[1].at, True, 1, 600, samples[1].counters, False)  # 600 land at once
    # ... and are served by the next read: the hook counts them (a backlog that fell without them was a purge)
    samples[2:] = [rp.Sample(s.at, True, s.current, s.backlog, (("default", s.counters[0][1] + 600, s.counters[0][2] + 2400),), False)
                   for s in samples[2:]]
    fleet = {**FLEET, "MAX_PROCESSES": "2"}
    rebuilt = rp.rebuild(samples)
    result = tn.tune(rebuilt, fleet, 1.0)
    assert not result.met and result.closest.p95_wait > 1.0
    assert tn.render(result, rebuilt).startswith(f"no combination tried ({result.tried}) meets p95 wait <= 1s")


def test_progress_shows_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from dramactl import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with cli.progress(3, "replaying") as step:
            for _ in range(3):
                step()
        assert ("replaying" in stream.getvalue()) is shown


def test_a_burst_is_rebuilt_when_the_read_after_it_says_it_came_not_spread_over_the_interval() -> None:
    """100 messages sent at once 5 s before a read: the read sees 100 ready, the oldest 5 s old.
    FIFO: every ready message came after the oldest ready one, so they all arrived in those 5 s."""
    samples = constant(0.2, 1.0, 4, backlog=0)  # 3 messages an interval, served at once
    samples[3] = rp.Sample(samples[3].at, True, 2, 100, samples[3].counters, False, ready=100, oldest_age=5.0)
    rebuilt = rp.rebuild(samples)
    assert len(rebuilt.arrivals) == 3 + 3 + 103
    last = rebuilt.arrivals[-100:]
    assert last[0] == pytest.approx(40.0) and last[-1] <= 45.0
    assert all(30.0 <= a <= 40.0 for a in rebuilt.arrivals[-103:-100])  # the interval's 3 served before the burst


def test_a_ticks_figures_are_placed_when_it_read_them_not_when_its_entry_was_written() -> None:
    """A tick reads Redis, then waits for its jobs (here 4 s of a drain); the journal stamps the end."""
    samples = constant(1.0, 1.0, 4, backlog=0)
    samples[2] = rp.Sample(samples[2].at + 4.0, True, 2, 0, samples[2].counters, True, took=4.0)
    rebuilt = rp.rebuild(samples)
    assert [r[0] for r in rebuilt.recorded] == [0.0, 15.0, 30.0, 45.0]


def test_the_settings_in_forces_run_ticks_when_the_recorded_ticks_did_and_counts_actions_in_the_range_only() -> None:
    """The real timer's ticks come a little later than every CHECK_INTERVAL (the service's start,
    the process's): the run with that CHECK_INTERVAL ticks at the recorded reads, a run with
    another CHECK_INTERVAL every CHECK_INTERVAL. A burst read at the last tick: that tick starts
    instances (in the range); the replay's scale-down after the range is not counted, as the
    recorded history has no tick there."""
    at = [0.0, 16.0, 32.5, 48.0]
    samples = [rp.Sample(T0 + a, True, 1, 0, (("default", 0.0, 0.0),), False) for a in at]
    samples.append(rp.Sample(T0 + 64.0, True, 1, 1000, (("default", 1.0, 4.0),), False, ready=999, oldest_age=1.0))
    rebuilt = rp.rebuild(samples, cv=0.0)
    fleet = {**FLEET, "SCALE_DOWN_STABILIZATION": "15"}
    in_force = rp.variant(fleet, {})
    result = rp.run_policy(rebuilt, in_force, "in force", recorded=in_force)
    assert [t.at for t in result.ticks[:5]] == [*at, 64.0]
    assert result.ticks[4].acted and any(t.acted for t in result.ticks[5:])  # up at the burst, down after the range
    assert rp.actions_per_hour(result) == pytest.approx(3600.0 / 64.0)
    other = rp.run_policy(rebuilt, rp.variant(fleet, {"CHECK_INTERVAL": "10"}), "10s", recorded=in_force)
    assert [t.at for t in other.ticks[:4]] == [0.0, 10.0, 20.0, 30.0]
    changed = rp.variant(fleet, {"CHECK_INTERVAL": "60"})  # in force now, not when these ticks were recorded
    assert [t.at for t in rp.run_policy(rebuilt, changed, "60s", recorded=changed).ticks[:2]] == [0.0, 60.0]


def test_the_spread_of_service_times_comes_from_the_hooks_sum_of_squares_when_the_history_has_it() -> None:
    """3 msgs/s of mean 4 s with a CV of 0.5: each interval adds done x 16 x (1 + 0.25) squared seconds."""
    samples = [rp.Sample(s.at, s.tick, s.current, s.backlog, s.counters, s.acted, squares=(("default", s.counters[0][1] * 16.0 * 1.25),))
               for s in constant(3.0, 4.0, 41)]
    rebuilt = rp.rebuild(samples)
    assert rebuilt.service_cv == pytest.approx(0.5) and rebuilt.cv_source == "measured by the hook"
    mean = sum(rebuilt.services) / len(rebuilt.services)
    spread = math.sqrt(sum((s - mean) ** 2 for s in rebuilt.services) / len(rebuilt.services)) / mean
    assert mean == pytest.approx(4.0, rel=0.05) and spread == pytest.approx(0.5, rel=0.15)
    # one-second messages all alike (tests/system/test_replay.py): no spread at all
    alike = [rp.Sample(s.at, s.tick, s.current, s.backlog, s.counters, s.acted, squares=(("default", s.counters[0][1]),))
             for s in constant(3.0, 1.0, 41)]
    assert rp.rebuild(alike).service_cv == pytest.approx(0.0, abs=1e-6) and set(rp.rebuild(alike).services) == {1.0}


def test_a_history_without_the_sum_of_squares_assumes_the_stated_spread_and_says_so() -> None:
    rebuilt = rp.rebuild(constant(3.0, 4.0, 41))
    assert (rebuilt.service_cv, rebuilt.cv_source) == (rp.SERVICE_CV, "assumed")
    report = rp.replay(rebuilt, FLEET, [])
    assert f"(CV {rp.SERVICE_CV:.2f}, assumed)" in rp.render(report)


def test_the_sum_of_squares_is_read_from_journal_entries_and_a_damaged_one_is_left_out() -> None:
    q = lambda done, busy, sq: {"name": "default", "done_total": done, "busy_seconds_total": busy, "busy_sq_total": sq}  # noqa: E731
    entries = [entry(T0, [q(0.0, 0.0, 0.0)]), entry(T0 + 15, [q(10.0, 20.0, 50.0)]),  # mean 2 s, E[S²] 5: CV 0.5
               entry(T0 + 30, [q(20.0, 40.0, "x")]), entry(T0 + 45, [q(30.0, 60.0, 150.0)])]
    samples = [rp.Sample.of(e) for e in entries]
    assert samples[1].squares == (("default", 50.0),) and samples[2].squares == ()
    rebuilt = rp.rebuild(samples)
    assert rebuilt.service_cv == pytest.approx(0.5) and rebuilt.cv_source == "measured by the hook"


class _FakeReader:
    """systemd.journal.Reader over records as ``journalctl -o json`` gives them (all strings)."""

    records: list[dict] = []

    def add_match(self, **_: str) -> None:
        pass

    def seek_realtime(self, _) -> None:
        pass

    def __iter__(self):
        return iter(self.records)


def _record(at: float, done: float, busy: float, **fields: str) -> dict:
    queues = json.dumps([{"name": "default", "done_total": done, "busy_seconds_total": busy}])
    # _SYSTEMD_UNIT: journald's trusted field on a timer's tick (history.from_dramactl reads no other entry)
    return {"__REALTIME_TIMESTAMP": str(int(at * 1e6)), "_SYSTEMD_UNIT": "dramactl.service", "DRAMACTL_KIND": "tick", "DRAMACTL_CURRENT": "2", "DRAMACTL_TARGET": "2",
            "DRAMACTL_BACKLOG": "0", "DRAMACTL_QUEUES": queues, **{f"DRAMACTL_{k.upper()}": v for k, v in fields.items()}}


def test_a_damaged_journal_entry_is_skipped_and_named_once_by_time_and_field(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """int('x'), a queues field that is not JSON, a duration no float reads: each entry is left out, the first entry
    of each damaged field named in one line with its time; the replay goes on with the rest."""
    import logging
    import time
    import types

    records = [_record(T0 + 15 * i, 2.0 * i, 4.0 * i) for i in range(9)]
    records[2]["DRAMACTL_CURRENT"] = "x"
    records[3]["DRAMACTL_QUEUES"] = "[{"
    records[4]["DRAMACTL_QUEUES"] = "[{"  # the same field again: skipped without another line
    records[5]["DRAMACTL_DURATION"] = "1.5s"
    _FakeReader.records = records
    monkeypatch.setitem(sys.modules, "systemd", types.SimpleNamespace(journal=types.SimpleNamespace(Reader=_FakeReader)))
    monkeypatch.setattr(history, "can_read_system_journal", lambda: True)
    with caplog.at_level(logging.WARNING, logger="dramactl.history"):
        samples = rp.read_samples(None, None)
    assert [s.at for s in samples] == [T0 + 15 * i for i in (0, 1, 6, 7, 8)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    for i, name in ((2, "DRAMACTL_CURRENT"), (3, "DRAMACTL_QUEUES"), (5, "DRAMACTL_DURATION")):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 + 15 * i))
        assert sum(when in line and f"({name}: " in line for line in lines) == 1, (name, lines)
    assert rp.rebuild(samples).mean_service == pytest.approx(2.0)


@pytest.mark.parametrize("field", ["done_total", "busy_seconds_total"])
def test_an_infinite_counter_is_left_out_not_an_overflow_or_an_infinite_service(field: str) -> None:
    q = lambda done, busy: {"name": "default", "done_total": done, "busy_seconds_total": busy}  # noqa: E731
    entries = [entry(T0 + 15 * i, [q(10.0 * i, 20.0 * i)]) for i in range(5)]
    entries[2].queues = json.loads(json.dumps([{**q(20.0, 40.0), field: "Infinity"}]).replace('"Infinity"', "Infinity"))
    samples = [rp.Sample.of(e) for e in entries]
    assert samples[2].counters == ()
    rebuilt = rp.rebuild(samples)
    assert rebuilt.mean_service == pytest.approx(2.0) and len(rebuilt.arrivals) == 40
    assert all(math.isfinite(s) for s in rebuilt.services)


@pytest.mark.parametrize("huge", [1.7e308, 1e300])
def test_squares_no_service_times_could_give_leave_the_spread_unknown(huge: float) -> None:
    """An interval's sum of squares above the square of its busy time (or too large to add up) is impossible: that
    interval's spread is unknown, never an infinite CV or NaN service times."""
    q = lambda done, busy, sq: {"name": "default", "done_total": done, "busy_seconds_total": busy, "busy_sq_total": sq}  # noqa: E731
    entries = [entry(T0, [q(0.0, 0.0, 0.0)]), entry(T0 + 15, [q(10.0, 20.0, huge)])]  # ten 2 s messages: at most 400 s²
    rebuilt = rp.rebuild([rp.Sample.of(e) for e in entries])
    assert (rebuilt.service_cv, rebuilt.cv_source) == (rp.SERVICE_CV, "assumed")
    assert rebuilt.services and all(math.isfinite(s) and s > 0 for s in rebuilt.services)


def test_a_burst_read_with_its_oldest_and_newest_at_one_moment_is_rebuilt_at_that_moment() -> None:
    """160 messages sent at once 2.5 s before a read (ticks every 3 s): the head and the tail
    were both sent 2.5 s before it, so every ready one came then, not spread up to the read."""
    rng = random.Random(1)
    at = rp.spread(rng, 165, 27.0, 30.0, 160, 2.5, 2.5)
    assert len(at) == 165 and at == sorted(at)
    assert at[-160:] == [27.5] * 160
    assert all(27.0 <= a <= 27.5 for a in at[:5])  # the interval's others, before the oldest ready one


def test_the_ready_ones_are_spread_between_the_oldest_and_the_newest_the_newest_at_its_moment() -> None:
    at = rp.spread(random.Random(2), 50, 0.0, 15.0, 40, 10.0, 4.0)
    late = at[-40:]
    assert late[0] == 5.0 and late[-1] == 11.0
    assert all(5.0 <= a <= 11.0 for a in late) and all(0.0 <= a <= 5.0 for a in at[:10])


@pytest.mark.parametrize("newest", [None, 12.0, -1.0, math.nan, math.inf], ids=["absent", "older-than-the-oldest", "after-the-read", "nan", "inf"])
def test_a_newest_age_out_of_order_or_outside_the_interval_spreads_as_without_it(newest: float | None) -> None:
    without = rp.spread(random.Random(3), 30, 0.0, 15.0, 20, 10.0)
    assert rp.spread(random.Random(3), 30, 0.0, 15.0, 20, 10.0, newest) == without
    assert without[-20] == 5.0 and all(5.0 <= a <= 15.0 for a in without[-20:])
    # no oldest inside the interval: the newest alone bounds nothing either
    assert rp.spread(random.Random(4), 30, 0.0, 15.0, 20, 20.0, 2.0) == rp.spread(random.Random(4), 30, 0.0, 15.0, 20, 20.0)


def test_a_burst_rebuilt_from_entries_with_the_newest_age_comes_at_its_moment() -> None:
    samples = constant(0.2, 1.0, 4, backlog=0)  # 3 messages an interval, served at once
    samples[3] = rp.Sample(samples[3].at, True, 2, 100, samples[3].counters, False, ready=100, oldest_age=5.0, newest_age=5.0)
    rebuilt = rp.rebuild(samples)
    assert len(rebuilt.arrivals) == 3 + 3 + 103
    assert rebuilt.arrivals[-100:] == [40.0] * 100
