"""The dashboard chart (pure SVG): lines for backlog, fleet size and target; a mark for every scaling action."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dramactl import chart
from dramactl.history import Entry

NS = "{http://www.w3.org/2000/svg}"
NOW = 1_700_010_000.0


def entry(ago: float, backlog: int, current: int, target: int, started: int = 0, stopped: int = 0) -> Entry:
    return Entry(at=NOW - ago, kind="tick", command="tick", current=current, target=target, reason="", reason_class="", backlog=backlog, started=started, stopped=stopped)


def test_lines_and_marks() -> None:
    entries = [entry(7200, 0, 1, 1), entry(3600, 200, 1, 4, started=3), entry(1800, 80, 4, 4), entry(600, 0, 4, 1, stopped=3), entry(4 * 3600, 999, 9, 9)]
    svg = ET.fromstring(chart.render(entries, now=NOW))
    by_class = {el.get("class"): el for el in svg.iter() if el.get("class")}
    backlog = [tuple(map(float, p.split(","))) for p in by_class["backlog"].get("points").split()]
    assert len(backlog) == 4  # the entry older than the window is left out
    assert [y for _, y in backlog][1] < [y for _, y in backlog][2] < [y for _, y in backlog][0]  # 200 above 80 above 0
    assert [x for x, _ in backlog] == sorted(x for x, _ in backlog)
    fleet = [float(p.split(",")[1]) for p in by_class["fleet"].get("points").split()]
    assert fleet[0] > min(fleet)  # from 1 up to 4
    assert by_class["mark-up"].find(f"{NS}title").tail == "▲3" and by_class["mark-down"].find(f"{NS}title").tail == "▼3"
    assert [el.get("class") for el in svg.iter() if (el.get("class") or "").startswith("mark")] == ["mark-up", "mark-down"]


def test_no_ticks_says_so() -> None:
    assert "no ticks in the last 3 h" in chart.render([], now=NOW)


def test_a_young_history_fills_the_width() -> None:
    svg = ET.fromstring(chart.render([entry(120, 5, 1, 2, started=1), entry(60, 9, 2, 2), entry(3, 0, 2, 1, stopped=1)], now=NOW))
    xs = [float(p.split(",")[0]) for p in next(el for el in svg.iter() if el.get("class") == "backlog").get("points").split()]
    assert xs[0] < chart.LEFT + 0.05 * (chart.WIDTH - chart.LEFT - chart.RIGHT) and xs[-1] > chart.WIDTH - chart.RIGHT - 0.05 * (chart.WIDTH - chart.LEFT - chart.RIGHT)
