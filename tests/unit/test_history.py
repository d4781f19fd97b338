"""The tick's journal entry (pure): fields from an Outcome, read back, rendered; times; where the line goes."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

import pytest

from dramactl import history
from dramactl.fleet import JobResult
from dramactl.instance import WorkerUnit
from dramactl.policy import ScalingDecision
from dramactl.scaler import Outcome
from dramactl.stats import QueueStats


def grown() -> Outcome:
    return Outcome(
        ScalingDecision(1, 3, "backlog 46 (40 waiting, 6 in flight) > 8 held by 1: up 1 -> 3", wanted=3),
        [QueueStats("a", ready=30, in_flight=6, oldest_age=12.5), QueueStats("b", ready=10, delayed=4, due=1, dead=2)],
        started=[JobResult("dramatiq-worker@2.service", "start", "done"), JobResult("dramatiq-worker@3.service", "start", "failed")],
        instances=[WorkerUnit(1, "active", "running"), WorkerUnit(4, "failed", "failed")],
        at=1_700_000_000.0,
        duration=0.123,
    )


def test_fields_carry_inputs_decision_reason_and_jobs() -> None:
    f = history.fields(grown(), "tick", 0.123)
    assert f["MESSAGE"] == grown().summary()
    assert all(k.isupper() and all(c.isalnum() or c == "_" for c in k) for k in f)
    assert set(f) - {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"} == set(history.FIELDS) - {"DRAMACTL_RECYCLE"}
    assert (f["DRAMACTL_KIND"], f["DRAMACTL_COMMAND"], f["DRAMACTL_REASON_CLASS"]) == ("tick", "tick", "up")
    assert (f["DRAMACTL_CURRENT"], f["DRAMACTL_TARGET"], f["DRAMACTL_BACKLOG"], f["DRAMACTL_DUE"]) == ("1", "3", "47", "1")
    assert (f["DRAMACTL_OLDEST_AGE"], f["DRAMACTL_DURATION"], f["DRAMACTL_OK"], f["PRIORITY"]) == ("12.500", "0.123", "0", "4")
    assert json.loads(f["DRAMACTL_INSTANCES"]) == {"active": 1, "failed": 1}
    assert [q["name"] for q in json.loads(f["DRAMACTL_QUEUES"])] == ["a", "b"]
    assert json.loads(f["DRAMACTL_ACTIONS"])[1] == {"verb": "start", "unit": "dramatiq-worker@3.service", "result": "failed"}


def test_each_queues_counters_are_in_the_entry_and_replay_reads_them_back() -> None:
    """What dramactl replay rebuilds arrivals and service times from: the hook's cumulative counters per queue."""
    from dramactl import replay

    o = grown()
    o.queues = [QueueStats("a", ready=3, done_total=120.0, busy_seconds_total=480.5), QueueStats("b", ready=1)]
    f = history.fields(o, "tick", 0.1)
    queues = json.loads(f["DRAMACTL_QUEUES"])
    assert (queues[0]["done_total"], queues[0]["busy_seconds_total"]) == (120.0, 480.5)
    entry = history.Entry.from_journal({**f, "__REALTIME_TIMESTAMP": "1700000000000000"})
    sample = replay.Sample.of(entry)
    assert sample.counters == (("a", 120.0, 480.5),) and (sample.current, sample.backlog, sample.tick) == (1, 4, True)


def ticks_of_a_burst(*, newest: bool) -> list[dict]:
    """Four ticks' journal records, 3 s apart: the third reads a burst of 100 sent 2.5 s before it
    (``newest``: as written now, with the newest ready message's age; else as an older dramactl wrote them)."""
    records = []
    for i, (ready, age) in enumerate([(0, None), (0, None), (100, 2.5), (0, None)]):
        done = [0.0, 3.0, 6.0, 106.0][i]
        q = QueueStats("a", ready=ready, oldest_age=age, newest_age=age, done_total=done, busy_seconds_total=done)
        o = Outcome(ScalingDecision(2, 2, "steady"), [q], at=1_700_000_000.0 + 3 * i)
        f = history.fields(o, "tick", 0.0)
        if not newest:
            del f["DRAMACTL_NEWEST_AGE"]
            f["DRAMACTL_QUEUES"] = json.dumps([{k: v for k, v in d.items() if k != "newest_age"} for d in json.loads(f["DRAMACTL_QUEUES"])])
        records.append({**f, "__REALTIME_TIMESTAMP": str(int((1_700_000_000.0 + 3 * i) * 1e6))})
    return records


def test_the_newest_ready_messages_age_is_written_and_read_back_and_bounds_the_replays_burst() -> None:
    from dramactl import replay

    records = ticks_of_a_burst(newest=True)
    assert (records[2]["DRAMACTL_OLDEST_AGE"], records[2]["DRAMACTL_NEWEST_AGE"]) == ("2.500", "2.500")
    assert records[0]["DRAMACTL_NEWEST_AGE"] == "" and json.loads(records[2]["DRAMACTL_QUEUES"])[0]["newest_age"] == 2.5
    entries = list(history.readable(records))
    assert [e.newest_age for e in entries] == [None, None, 2.5, None]
    samples = [replay.Sample.of(e) for e in entries]
    assert samples[2].newest_age == 2.5
    rebuilt = replay.rebuild(samples)
    assert rebuilt.arrivals[-100:] == [3.5] * 100, "the burst at the moment its oldest and newest were sent"


def test_an_older_journal_without_the_newest_age_still_replays() -> None:
    from dramactl import replay

    entries = list(history.readable(ticks_of_a_burst(newest=False)))
    assert len(entries) == 4 and [e.newest_age for e in entries] == [None] * 4 and entries[2].oldest_age == 2.5
    rebuilt = replay.rebuild([replay.Sample.of(e) for e in entries])
    assert len(rebuilt.arrivals) == 106
    burst = rebuilt.arrivals[-100:]
    assert burst[0] == 3.5 and all(3.5 <= a <= 6.0 for a in burst), "bounded by the oldest only, as before"
    result = replay.run_policy(rebuilt, replay.variant({"MIN_PROCESSES": "1", "MAX_PROCESSES": "4"}, {}), "in force")
    assert result.p95 is not None


def test_a_recycle_is_in_the_line_and_its_own_field() -> None:
    o = Outcome(
        ScalingDecision(2, 2, "steady"),
        [],
        started=[JobResult("dramatiq-worker@3.service", "start", "done")],
        stopped=[JobResult("dramatiq-worker@1.service", "stop", "done")],
        recycled="recycle @1 (612 MiB > 512 MiB)",
    )
    f = history.fields(o, "tick")
    assert "| recycle @1 (612 MiB > 512 MiB) | started @3:done | stopped @1:done" in f["MESSAGE"]
    assert f["DRAMACTL_RECYCLE"] == "@1 612 MiB > 512 MiB" and f["DRAMACTL_OK"] == "1"


@pytest.mark.parametrize(
    ("decision", "paused", "command", "cls"),
    [
        (ScalingDecision(2, 2, "steady"), False, "tick", "steady"),
        (ScalingDecision(3, 2, "down"), False, "tick", "down"),
        (ScalingDecision(2, 2, "hold", held=True), False, "tick", "held"),
        (ScalingDecision(2, 2, "paused"), True, "tick", "paused"),
        (ScalingDecision(2, 5, "manual"), True, "scale-to", "manual"),
    ],
)
def test_reason_class(decision: ScalingDecision, paused: bool, command: str, cls: str) -> None:
    f = history.fields(Outcome(decision, paused=paused), command)
    assert f["DRAMACTL_REASON_CLASS"] == cls
    assert f["DRAMACTL_KIND"] == ("tick" if command == "tick" else "manual")
    assert "DRAMACTL_DURATION" not in f


def test_an_entry_read_back_equals_what_was_written() -> None:
    record = {**history.fields(grown(), "tick", 0.123), "__REALTIME_TIMESTAMP": datetime.fromtimestamp(1_700_000_000.5)}
    e = history.Entry.from_journal(record)
    assert (e.at, e.kind, e.current, e.target, e.wanted, e.backlog, e.ready, e.in_flight, e.dead) == (1_700_000_000.5, "tick", 1, 3, 3, 47, 40, 6, 2)
    assert (e.oldest_age, e.duration, e.ok, e.paused, e.started, e.stopped) == (12.5, 0.123, False, False, 2, 0)
    assert e.instances == {"active": 1, "failed": 1} and len(e.actions) == 2
    as_json = {**history.fields(grown(), "tick"), "__REALTIME_TIMESTAMP": "1700000000500000"}  # journalctl -o json
    assert history.Entry.from_journal(as_json).at == 1_700_000_000.5
    text = history.render([e])
    assert text.splitlines()[1].split()[2:9] == ["tick", "47", "40", "6", "12s", "1", "->"]
    assert "start @2:done start @3:failed" in text and "0.12" in text
    assert history.render([]) == "no ticks or manual changes in this range"


def test_times() -> None:
    now = datetime(2026, 11, 24, 15, 30, 0).timestamp()
    assert history.parse_time("now", now) == now
    assert history.parse_time("-2h", now) == now - 7200
    assert history.parse_time("30 min ago", now) == now - 1800
    assert history.parse_time("today", now) == datetime(2026, 11, 24).timestamp()
    assert history.parse_time("yesterday", now) == datetime(2026, 11, 23).timestamp()
    assert history.parse_time("2026-11-24 12:00", now) == datetime(2026, 11, 24, 12).timestamp()
    assert history.parse_time("12:05:30", now) == datetime(2026, 11, 24, 12, 5, 30).timestamp()
    assert history.parse_time("@1700000000", now) == 1_700_000_000
    with pytest.raises(ValueError, match="cannot read time 'soon'"):
        history.parse_time("soon", now)


def test_stdout_is_the_journal_only_when_journal_stream_names_it(tmp_path, monkeypatch) -> None:
    out = open(tmp_path / "out", "w")
    other = os.stat(tmp_path)
    monkeypatch.setattr(sys, "stdout", out)
    st = os.fstat(out.fileno())
    assert history.stdout_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not history.stdout_is_journal({"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"})  # a child of a unit, stdout redirected
    assert not history.stdout_is_journal({})
    assert not history.stdout_is_journal({"JOURNAL_STREAM": "garbage"})
    out.close()


def test_a_manual_command_that_could_not_read_redis_leaves_the_figures_out() -> None:
    o = Outcome(ScalingDecision(2, 1, "manual; autoscaling paused"), None, stopped=[JobResult("dramatiq-worker@2.service", "stop", "done")])
    f = history.fields(o, "scale-down")
    assert f["MESSAGE"] == "workers 2 -> 1 | manual; autoscaling paused | stopped @2:done"
    assert not any(k in f for k in ("DRAMACTL_BACKLOG", "DRAMACTL_READY", "DRAMACTL_QUEUES"))
    assert (f["DRAMACTL_KIND"], f["DRAMACTL_STOPPED"]) == ("manual", "1")


# ---- who wrote an entry: only dramactl's are history ----------------------------------------

SCALER_UID, WORKER_UID = 998, 997


def journal_record(at: float, reason: str, **trusted: str) -> dict:
    """A record as ``journalctl -o json`` gives it (all strings): a tick's fields and journald's trusted ones."""
    return {**history.fields(grown(), "tick", 0.1), "DRAMACTL_REASON": reason, "__REALTIME_TIMESTAMP": str(int(at * 1e6)), **trusted}


class FakeReader:
    """systemd.journal.Reader over every record, whatever was matched: the filter must not rely on the matches."""

    records: list[dict] = []

    def __init__(self, *args, **kwargs) -> None:
        self.matches: list[dict] = []

    def add_match(self, **kwargs: str) -> None:
        self.matches.append(kwargs)

    def seek_realtime(self, _) -> None:
        pass

    def __iter__(self):
        return iter(self.records)


def test_only_entries_journald_says_dramactl_wrote_are_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone can send DRAMACTL_KIND=tick; only journald's trusted fields (_UID from the socket's credentials,
    _SYSTEMD_UNIT from the sender's cgroup) say who did: root, the scaler user, or dramactl.service."""
    import types

    FakeReader.records = [
        journal_record(1000, "timer's tick", _UID=str(SCALER_UID), _SYSTEMD_UNIT="dramactl.service"),
        journal_record(1001, "root's scale-to", _UID="0", _SYSTEMD_UNIT="session-3.scope"),
        journal_record(1002, "forged by the app", _UID=str(WORKER_UID), _SYSTEMD_UNIT="dramatiq-worker@1.service"),
        journal_record(1003, "forged, no trusted fields"),
        journal_record(1004, "forged by a user unit named like ours", _UID="1000", _SYSTEMD_UNIT="user@1000.service",
                       _SYSTEMD_USER_UNIT="dramactl.service"),
        journal_record(1005, "the scaler user's manual command", _UID=str(SCALER_UID), _SYSTEMD_UNIT="session-4.scope"),
        journal_record(1006, "a drop-in's User= on the timer's unit", _UID="1234", _SYSTEMD_UNIT="dramactl.service"),
        journal_record(1007, "forged, untrusted look-alikes", UID="0", SYSTEMD_UNIT="dramactl.service", _UID=str(WORKER_UID)),
    ]
    monkeypatch.setitem(sys.modules, "systemd", types.SimpleNamespace(journal=types.SimpleNamespace(Reader=FakeReader)))
    monkeypatch.setattr(history, "can_read_system_journal", lambda: True)
    monkeypatch.setattr(history, "writer_uids", lambda: frozenset({0, SCALER_UID}), raising=False)
    read = history.read()
    assert [e.reason for e in read] == [
        "timer's tick", "root's scale-to", "the scaler user's manual command", "a drop-in's User= on the timer's unit"
    ]


def test_the_trusted_fields_are_read_as_the_reader_and_journalctl_give_them() -> None:
    uids = frozenset({0, SCALER_UID})
    assert history.from_dramactl({"_UID": 0}, uids) and history.from_dramactl({"_UID": SCALER_UID}, uids)  # Reader: int
    assert history.from_dramactl({"_UID": b"0"}, uids) and history.from_dramactl({"_SYSTEMD_UNIT": b"dramactl.service"}, uids)
    assert not history.from_dramactl({"_UID": WORKER_UID, "_SYSTEMD_UNIT": "dramatiq-worker@2.service"}, uids)
    assert not history.from_dramactl({"_UID": "x", "_SYSTEMD_UNIT": ["dramactl.service", "x"]}, uids)
    assert not history.from_dramactl({}, uids)
    assert 0 in history.writer_uids()


def test_history_text_shows_control_characters_from_the_journal_escaped() -> None:
    """A reason quotes Redis (a queue's name, a host's label): no ESC, BEL, CR or newline of it reaches the terminal."""
    title = "\x1b]0;pwned\x07"
    record = journal_record(1000, f"backlog 3 in q{title}\r\x1b[2Kfake line\nsecond\u202e", _UID="0")
    record["DRAMACTL_ACTIONS"] = json.dumps([{"verb": f"start{title}", "unit": "dramatiq-worker@2.service", "result": f"done{title}"}])
    record["DRAMACTL_REASON_CLASS"] = f"up{title}"
    manual = {**record, "DRAMACTL_KIND": "manual", "DRAMACTL_COMMAND": f"scale-to{title}"}
    text = history.render([history.Entry.from_journal(record), history.Entry.from_journal(manual)])
    assert [c for line in text.split("\n") for c in line if not c.isprintable()] == []
    lines = text.split("\n")
    assert len(lines) == 3  # the header and one line per entry: the reason's newline is shown, not obeyed
    assert "backlog 3 in q\\x1b]0;pwned\\x07\\r\\x1b[2Kfake line\\nsecond\\u202e" in lines[1]
    assert "start\\x1b]0;pwned\\x07 @2:done\\x1b]0;pwned\\x07" in lines[1] and "up\\x1b]0;pwned\\x07" in lines[1]
    assert lines[2].split()[2] == "scale-to\\x1b]0;pwned\\x07"
