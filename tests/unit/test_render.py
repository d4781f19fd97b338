"""The status text never hands the terminal a control character from Redis, the journal or an error (pure)."""

from __future__ import annotations

import json

import pytest

from dramactl.render import render_status

TITLE = "\x1b]0;pwned\x07"  # ESC ] 0 ; title BEL: sets the terminal's title
HOSTILE = f"web{TITLE}1\r\x1b[2K\x9b31m\u202eevil\u200b\nnext\tcol\x7f"


def controls(text: str) -> list[str]:
    """Every character a terminal would not just print, but the layout's newlines."""
    return [c for line in text.split("\n") for c in line if not c.isprintable()]


def hostile_status() -> dict:
    up = {"active_state": "active", "sub_state": "running", "pid": 10, "uptime": 5, "restarts": 0, "is_up": True, "number": 1}
    row = {"ready": 1, "delayed": 0, "due": 0, "in_flight": 0, "orphaned": 0, "dead": 0, "oldest_age": 3.0}
    return {
        "time": 1000.0,
        "queues": [{"name": f"q{HOSTILE}", **row}, {"name": "plain", **row}],
        "totals": {**row, "ready": 2},
        "instances": [{**up, "name": f"dramatiq-worker@1.service{TITLE}", "sub_state": f"running{TITLE}", "work": None}],
        "fleet": {"name": f"f{TITLE}", "target": 2, "cap": 4, "min": 1, "decided_at": 998.0, "decided_by": HOSTILE,
                  "this_host": "id-a", "settings_differ": [f"MIN_PROCESSES{TITLE}"]},
        "hosts": [
            {"id": "id-a", "name": HOSTILE, "up": 1, "share": 1, "max": 2, "last_tick": 997.0, "live": True, "paused": False},
            {"id": "id-b", "name": "plain-host", "up": 1, "share": 1, "max": 2, "last_tick": 997.0, "live": True, "paused": False},
        ],
        "limits": {"min": 1, "max": 4, "policy": "default"},
        "rollout": f"restart{TITLE}",
        "errors": [f"redis: key {HOSTILE} damaged"],
    }


@pytest.mark.parametrize("text, shown", [
    ("web-1.example", "web-1.example"),
    ("ünï 日本 <b>", "ünï 日本 <b>"),
    (TITLE, "\\x1b]0;pwned\\x07"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x7f\x9b\u202e\u200b\u2028\udc80", "\\x7f\\x9b\\u202e\\u200b\\u2028\\udc80"),
])
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    from dramactl.render import printable

    assert printable(text) == shown and printable(shown) == shown


def test_status_text_shows_hostile_strings_from_redis_escaped_never_raw() -> None:
    text = render_status(hostile_status())
    assert controls(text) == []
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    escaped = HOSTILE.encode("unicode_escape").decode()  # HOSTILE's printable characters are all ASCII, none a backslash
    host_row = next(line for line in text.splitlines() if line.startswith("web\\x1b"))
    assert host_row.startswith(escaped) and host_row.endswith("live (this host)")  # one row, not split by the newline
    assert f"fleet f\\x1b]0;pwned\\x07: target 2 of cap 4, MIN 1 for the whole fleet, decided by {escaped} " in text
    assert "(MIN_PROCESSES\\x1b]0;pwned\\x07)" in text
    assert f"qweb\\x1b]0;pwned\\x071\\r\\x1b[2K\\x9b31m\\u202eevil\\u200b\\nnext\\tcol\\x7f" in text
    assert "dramatiq-worker@1.service\\x1b]0;pwned\\x07" in text and "running\\x1b]0;pwned\\x07" in text
    assert "held: restart\\x1b]0;pwned\\x07" in text and f"error: redis: key {escaped} damaged" in text
    # The layout's own lines are as they were: a clean row keeps its columns.
    assert next(line for line in text.splitlines() if line.startswith("plain-host")).split()[:4] == ["plain-host", "1", "1", "2"]


def test_the_json_status_stays_raw() -> None:
    """status --json prints json.dumps: its escapes are JSON's, and the strings read back as they were."""
    data = hostile_status()
    dumped = json.dumps(data)
    assert controls(dumped) == [] and json.loads(dumped)["hosts"][0]["name"] == HOSTILE
