"""Input a command cannot use is one line before anything happens: times, --rate, the dashboard's host, and
metrics that leave out what could not be read (found by a fuzzing review of the CLI's inputs)."""

from __future__ import annotations

from datetime import datetime

import pytest

from dramactl import history, metrics
from dramactl.settings import parse

NOW = datetime(2026, 11, 24, 12, 30).timestamp()


@pytest.mark.parametrize(
    "text",
    ["-9999999999h", "-99999999999999999h", "+99999999999999h", "9" * 400 + "h", "@1e400", "@nan", "@-5", "3000w ago"],
)
def test_a_time_outside_what_the_journal_can_seek_to_is_one_line_naming_the_option(text: str) -> None:
    """datetime.fromtimestamp and the journal's seek_realtime raised ValueError, OverflowError or OSError
    (tracebacks in history, replay and tune); before 1970 the journal has nothing either."""
    with pytest.raises(ValueError) as err:
        history.parse_time(text, NOW, option="--since")
    assert str(err.value) == (
        f"cannot read time {text if len(text) <= 40 else text[:37] + '...'!r} (--since): "
        "it is out of range; use a time from 1970 to 9999, e.g. -2h or '2026-11-24 12:00'"
    )


def test_times_in_range_still_parse_and_bad_ones_name_the_option() -> None:
    assert history.parse_time("@0", NOW) == 0
    assert history.parse_time("+2h", NOW) == NOW + 7200
    assert history.parse_time("9999-12-30", NOW) == datetime(9999, 12, 30).timestamp()
    with pytest.raises(ValueError, match=r"^cannot read time '@abc' \(--until\): use e\.g\. -2h"):
        history.parse_time("@abc", NOW, option="--until")  # float's own message before
    with pytest.raises(ValueError, match=r"^cannot read time 'soon': use e\.g\. -2h"):
        history.parse_time("soon", NOW)


def test_a_rate_too_low_to_sleep_on_is_refused_before_sending() -> None:
    """--rate 1e-300 sent one message, then time.sleep(1e300) raised OverflowError: half done."""
    from dramactl.load import MIN_RATE, check

    settings = parse({})
    for rate in (1e-300, 0.0009, 0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^rate \(--rate\) must be at least 0\.001 messages per second, not "):
            check(settings, 3, rate=rate)
    assert check(settings, 3, rate=MIN_RATE) == ["email"]


def _status(unread: list[str]) -> dict:
    return {
        "queues": [{"name": "q", "ready": 2}] if "redis" not in unread else [],
        "instances": [],
        "last_tick": None,
        "paused": False,
        "unread": unread,
    }


def test_metrics_leave_out_the_instance_counts_when_systemd_was_not_read() -> None:
    """dramactl_instances{state="active"} 0 said no instance runs, though systemd was never asked."""
    text = metrics.render(metrics.from_status(_status(["systemd"])))
    assert "dramactl_instances" not in text and 'dramactl_queue_ready_messages{queue_name="q"} 2' in text
    assert "dramactl_paused 0" in text  # the state file was read
    text = metrics.render(metrics.from_status(_status([])))
    assert 'dramactl_instances{state="active"} 0' in text  # read, and none is up


def test_the_dashboard_names_a_host_a_socket_cannot_take() -> None:
    """socket.bind raised TypeError ('encoding of hostname failed') for 'ünï..': a traceback."""
    from dramactl.dashboard import BadHost, make_server

    with pytest.raises(BadHost, match=r"^'ünï\.\.' is not a host name or address \("):
        make_server(parse({}), "ünï..", 0)
