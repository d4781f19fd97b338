"""The state file: every field validated on load; a damaged file is set aside, not fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dramactl.state import DamagedState, Recovery, ScalerState, StateStore, TickRecord

GOOD_TICK = {"at": 100.0, "backlog": 3, "workers": 1, "target": 2, "oldest_age": 1.5, "wanted": 2}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "the file: [] is not an object"),
        ("null", "the file: null is not an object"),
        ('"state"', 'the file: "state" is not an object'),
        ('{"history": 5}', "history: 5 is not a list"),
        ('{"history": [5]}', "history[0]: 5 is not an object"),
        ('{"history": [{"at": "x", "backlog": 1, "workers": 1, "target": 1}]}', 'history[0].at: "x" is not a number'),
        ('{"history": [{"backlog": 1, "workers": 1, "target": 1}]}', "history[0].at: missing"),
        ('{"history": [{"at": 1, "backlog": -1, "workers": 1, "target": 1}]}', "history[0].backlog: -1 is out of range"),
        ('{"history": [{"at": 1, "backlog": 1, "workers": 1.5, "target": 1}]}', "history[0].workers: 1.5 is not a whole number"),
        ('{"history": [{"at": 1, "backlog": 1, "workers": 1, "target": 1, "oldest_age": "old"}]}', 'history[0].oldest_age: "old" is not a number'),
        ('{"history": [{"at": NaN, "backlog": 1, "workers": 1, "target": 1}]}', "history[0].at: nan is not a number"),
        ('{"recovery": "x"}', 'recovery: "x" is not an object'),
        ('{"recovery": {"attempts": -1}}', "recovery.attempts: -1 is out of range"),
        ('{"recovery": {"next_at": "soon"}}', 'recovery.next_at: "soon" is not a number'),
        ('{"size": -3}', "size: -3 is out of range"),
        ('{"size": "2"}', 'size: "2" is not a whole number'),
        ('{"threads": "abc"}', 'threads: "abc" is not a whole number'),
        ('{"threads": 0}', "threads: 0 is out of range 1..1024"),
        ('{"threads": 4096}', "threads: 4096 is out of range 1..1024"),
        ('{"threads": true}', "threads: true is not a whole number"),
        ('{"paused": "no"}', 'paused: "no" is not true or false'),
        ('{"stopped_by": [1, 2]}', "stopped_by: [1, 2] is not an object"),
        ('{"stopped_by": {"idle": -1}}', "stopped_by.idle: -1 is out of range"),
        ('{"stopped_by": {"busy": "3"}}', 'stopped_by.busy: "3" is not a whole number'),
        ('{"history": [{"at": 1, "backlog": 1, "workers": 1, "target": 1, "starting": [0]}]}', "history[0].starting: [0] is not a list of instance numbers"),
        ('{"history": [{"at": 1, "backlog": 1, "workers": 1, "target": 1, "starting": "2"}]}', 'history[0].starting: "2" is not a list of instance numbers'),
    ],
)
def test_wrong_shapes_are_named(text: str, problem: str) -> None:
    with pytest.raises(DamagedState) as err:
        ScalerState.from_dict(json.loads(text))
    assert str(err.value).startswith(problem), str(err.value)


def test_valid_fields_load_and_unknown_names_are_ignored() -> None:
    data = {"paused": True, "threads": 4, "size": 0, "recovery": {"attempts": 2, "next_at": 5, "failing_at": None}, "history": [GOOD_TICK], "future": 1}
    state = ScalerState.from_dict(data)
    assert state == ScalerState(
        paused=True, threads=4, size=0, recovery=Recovery(2, 5.0, None), history=(TickRecord(100.0, 3, 1, 2, 1.5, 2),)
    )
    assert ScalerState.from_dict({}) == ScalerState()
    assert ScalerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    pending = ScalerState(history=(TickRecord(100.0, 3, 1, 3, starting=(2, 3)),))
    assert ScalerState.from_dict(json.loads(json.dumps(pending.to_dict()))) == pending


@pytest.mark.parametrize(
    "text",
    ["[]", "null", '{"history": 5}', '{"history": [{"at": "x", "backlog": 1, "workers": 1, "target": 1}]}', '{"recovery": "x"}', '{"size": -3}', '{"threads": "abc"}', "{not json", "\xff\xfe", "[" * 100_000, '{"fleet_in": 5}', '{"fleet_claimed": -1}'],
)
def test_a_damaged_file_is_set_aside_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    store = StateStore(tmp_path)
    store.path.write_bytes(text.encode("latin-1"))
    assert store.load() == ScalerState()
    assert not store.path.exists()
    (aside,) = tmp_path.glob("state.json.damaged-*")
    assert aside.read_bytes() == text.encode("latin-1")
    assert aside.name.split("-")[-1].isdigit()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dramactl: warning: {store.path} is damaged ("), err
    assert f"set aside as {aside}; carrying on with a fresh state" in err
    # The next command finds no file and no warning; saving starts a good one.
    assert store.load() == ScalerState()
    assert capsys.readouterr().err == ""
    store.save(ScalerState(threads=2))
    assert store.load().threads == 2


def test_a_damaged_file_that_cannot_be_moved_still_yields_a_fresh_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rename fails (here: a directory is in the way), warn, carry on, leave the file."""
    monkeypatch.setattr("dramactl.state.time.time", lambda: 1700000000.0)
    store = StateStore(tmp_path)
    store.path.write_text('{"threads": "abc"}')
    (tmp_path / "state.json.damaged-1700000000" / "x").mkdir(parents=True)
    assert store.load() == ScalerState()
    assert store.path.read_text() == '{"threads": "abc"}'
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "; could not set it aside (" in err, err


def test_check_writable_names_the_directory_and_the_fix(tmp_path: Path) -> None:
    import os

    from dramactl.state import StateDirError

    StateStore(tmp_path / "new").check_writable()  # created when missing, nothing left behind
    assert list((tmp_path / "new").iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateDirError) as err:
        StateStore(blocker).check_writable()
    message = str(err.value)
    assert message.startswith(f"state directory {blocker} is not writable by uid {os.geteuid()} (")
    assert message.endswith("); fix its owner/mode (StateDirectory= in dramactl.service)") and "\n" not in message


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_a_number_too_large_for_a_float_is_damaged_not_an_overflow(value: int) -> None:
    """JSON integers have no bound: ``math.isfinite(10**400)`` raises OverflowError; _number names it instead."""
    from dramactl.state import _number

    with pytest.raises(DamagedState, match=r"^at: -?1000000000.* is too large to be a number$"):
        _number({"at": value}, "at", "at")
    assert _number({"at": 10**300}, "at", "at") == 1e300


def test_a_tick_record_with_a_huge_integer_is_damaged() -> None:
    from dramactl.state import _tick

    with pytest.raises(DamagedState, match="history\\[0\\].busy: .* too large"):
        _tick({**GOOD_TICK, "busy": 10**400}, "history[0]")


def test_a_state_file_that_cannot_be_read_is_one_line_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load() caught only FileNotFoundError: a state directory that is a file, a state.json that is a directory or
    one this user cannot read were tracebacks (status, metrics, every command). Now StateDirError, one line with the fix."""
    import os

    from dramactl.state import StateDirError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateDirError) as err:
        StateStore(blocker).load()
    assert str(err.value) == f"state directory {blocker} is not a directory (a file is in its path); set DRAMACTL_STATE_DIR to a directory"

    (tmp_path / "d" / "state.json").mkdir(parents=True)
    with pytest.raises(StateDirError) as err:
        StateStore(tmp_path / "d").load()
    assert str(err.value) == f"state file {tmp_path / 'd' / 'state.json'} is a directory; remove it (the next change writes a fresh state file)"

    store = StateStore(tmp_path / "e")
    store.save(ScalerState(paused=True))
    import dramactl.state

    real = dramactl.state.read_regular

    def denied(path: Path) -> bytes:
        if path == store.path:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(dramactl.state, "read_regular", denied)  # root reads any file: a chmod would not stop this test's user
    with pytest.raises(StateDirError) as err:
        store.load()
    message = str(err.value)
    assert message == f"state file {store.path} cannot be read by uid {os.geteuid()} (Permission denied); fix its owner/mode (StateDirectory= in dramactl.service)"
    assert store.path.exists(), "a file that cannot be read is not set aside as damaged"


def test_scale_down_stops_are_counted_by_what_they_ran_when_chosen() -> None:
    """dramactl_scale_down_stops_total{chosen=...}: each stop of a scale-down counted as idle, busy or
    unreported, kept across ticks in the state file (older files start at 0)."""
    from dramactl.victims import Pick

    state = ScalerState().counted(1, 3, [Pick(2, "idle", "idle"), Pick(4, "busy 1/4, oldest 3s", "busy"), Pick(3, "idle", "idle")])
    state = state.counted(0, 1, [Pick(5, "no report: cannot see inside", "unreported")]).counted(0, 1)  # a stop of no scale-down: actions only
    assert state.actions == (1, 5) and state.stops_by_kind() == {"idle": 2, "busy": 1, "unreported": 1}
    assert ScalerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert ScalerState.from_dict({"actions": {"up": 1, "down": 2}}).stops_by_kind() == {"idle": 0, "busy": 0, "unreported": 0}


def test_a_manual_command_ends_the_last_ticks_wait() -> None:
    waiting = ScalerState(history=(TickRecord(90.0, 0, 2, 2), TickRecord(100.0, 0, 2, 1, waiting_since=95.0)))
    assert waiting.wait_ended().history == (TickRecord(90.0, 0, 2, 2), TickRecord(100.0, 0, 2, 1))
    assert ScalerState().wait_ended() == ScalerState() and waiting.wait_ended().wait_ended() == waiting.wait_ended()


@pytest.mark.parametrize(("clock", "every"), [(0.0, 15.0), (1.7e9, 15.0), (1.7e9, 15.02)])
def test_a_stabilization_window_holds_its_ticks_and_is_unknown_after_a_gap(clock: float, every: float) -> None:
    """The one window both scale-down rules read (by work and by count): the ticks of the
    last 120 s, the one a window back included on a host's clock as on the simulator's,
    and None when the history does not reach back over the window."""
    from dramactl.state import stabilization_window

    now = clock + 20 * every
    ticks = [TickRecord(at=clock + k * every, backlog=k, workers=1, target=1) for k in range(20)]
    seen = stabilization_window(ticks, now, 120.0, 15.0)
    assert seen is not None
    assert [r.backlog for r in seen] == list(range(12, 20))  # 8 ticks: 120 s back, reached past its edge
    assert stabilization_window(ticks[-7:], now, 120.0, 15.0) is None  # 105 s of history: the window is not known
    assert stabilization_window(ticks[:10], now, 120.0, 15.0) is None  # a gap: nothing in the last 150 s
    assert stabilization_window(ticks, now, 120.0, 15.0) == stabilization_window([*ticks, TickRecord(at=now, backlog=99, workers=1, target=1)], now, 120.0, 15.0)
