"""The dashboard's chart: backlog, fleet size and target over the last hours, scaling actions marked (pure SVG).

Drawn server-side from ``dramactl.history`` entries: no JavaScript, no library. The
backlog (left axis) is a filled line (the time axis spans the window, or the history
when it is younger); the fleet size the ticks saw and the target
they decided (right axis) are step lines; every tick or manual command that started
instances gets a green ▲, one that stopped some a red ▼, with the count.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any, Sequence

WIDTH, HEIGHT = 1100, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 18, 40
BACKLOG, FLEET, TARGET, UP, DOWN = "#2e6fd8", "#067647", "#b54708", "#067647", "#b42318"


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 4:
        return 4
    step = 10 ** (len(str(int(top))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= top:
            return m * step
    return 10 * step


def render(entries: Sequence[Any], now: float | None = None, window: float = 3 * 3600) -> str:
    """An <svg> for the entries (oldest first; anything with at/backlog/current/target/started/stopped)."""
    now = time.time() if now is None else now
    pts = [e for e in entries if now - window <= e.at <= now]
    # A young history fills the width: the axis starts at the first tick shown, never less than a minute back.
    start = min(now - 60, pts[0].at - 5) if pts and pts[0].at - 5 > now - window else now - window
    span = now - start
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    ymax_b = _nice(max([e.backlog for e in pts] + [1]))
    ymax_f = _nice(max([max(e.current, e.target) for e in pts] + [1]))

    def x(t: float) -> float:
        return LEFT + (t - start) / span * pw

    def yb(v: float) -> float:
        return TOP + ph - v / ymax_b * ph

    def yf(v: float) -> float:
        return TOP + ph - v / ymax_f * ph

    out = [
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="backlog, fleet size and target over the last {window / 3600:g} hours">',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#e4e7ec"/>',
    ]
    for i in range(5):  # grid and both axes' labels
        frac = i / 4
        y = TOP + ph - frac * ph
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{BACKLOG}">{ymax_b * frac:g}</text>')
        out.append(f'<text x="{LEFT + pw + 6}" y="{y + 4:.1f}" font-size="11" fill="{FLEET}">{ymax_f * frac:g}</text>')
    step = next((s for s in (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600) if span / s <= 8), 86400)
    fmt = "%H:%M:%S" if step < 60 else "%H:%M"
    t = (start // step + 1) * step
    while t <= now:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#eef0f3"/>')
        out.append(f'<text x="{x(t):.1f}" y="{TOP + ph + 16}" text-anchor="middle" font-size="11" fill="#667085">{time.strftime(fmt, time.localtime(t))}</text>')
        t += step
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="11" fill="{BACKLOG}">backlog (messages)</text>')
    out.append(f'<text x="{LEFT + pw}" y="{HEIGHT - 6}" text-anchor="end" font-size="11" fill="{FLEET}">instances</text>')
    legend = ((BACKLOG, "backlog", ""), (FLEET, "fleet size", ""), (TARGET, "target", ' stroke-dasharray="5 3"'))
    for i, (color, label, dash) in enumerate(legend):
        lx = LEFT + 160 + i * 110
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{HEIGHT - 10}" y2="{HEIGHT - 10}" stroke="{color}" stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{lx + 27}" y="{HEIGHT - 6}" font-size="11" fill="#1d2330">{label}</text>')
    out.append(f'<text x="{LEFT + 500}" y="{HEIGHT - 6}" font-size="11" fill="#1d2330"><tspan fill="{UP}">▲</tspan> started  <tspan fill="{DOWN}">▼</tspan> stopped</text>')
    if not pts:
        out.append(f'<text x="{LEFT + pw / 2}" y="{TOP + ph / 2}" text-anchor="middle" font-size="14" fill="#667085">no ticks in the last {window / 3600:g} h</text>')
        return "".join(out) + "</svg>"
    line = " ".join(f"{x(e.at):.1f},{yb(e.backlog):.1f}" for e in pts)
    area = f"{x(pts[0].at):.1f},{yb(0):.1f} {line} {x(pts[-1].at):.1f},{yb(0):.1f}"
    out.append(f'<polygon class="backlog-area" points="{area}" fill="{BACKLOG}" fill-opacity="0.12"/>')
    out.append(f'<polyline class="backlog" points="{line}" fill="none" stroke="{BACKLOG}" stroke-width="2"/>')
    for cls, color, value, dash in (("fleet", FLEET, "current", ""), ("target", TARGET, "target", ' stroke-dasharray="5 3"')):
        steps: list[str] = []
        for i, e in enumerate(pts):
            v = yf(getattr(e, value))
            if i:
                steps.append(f"{x(e.at):.1f},{float(steps[-1].split(',')[1]):.1f}")
            steps.append(f"{x(e.at):.1f},{v:.1f}")
        steps.append(f"{x(now):.1f},{float(steps[-1].split(',')[1]):.1f}")
        out.append(f'<polyline class="{cls}" points="{" ".join(steps)}" fill="none" stroke="{color}" stroke-width="2.5"{dash}/>')
    for e in pts:
        for count, color, shape, dy, cls in ((e.started, UP, "▲", -8, "mark-up"), (e.stopped, DOWN, "▼", 16, "mark-down")):
            if count:
                y = yf(e.target) + dy
                title = escape(f"{time.strftime('%H:%M:%S', time.localtime(e.at))}: {e.current} -> {e.target} ({getattr(e, 'command', '')})")
                out.append(f'<text class="{cls}" x="{x(e.at):.1f}" y="{y:.1f}" text-anchor="middle" font-size="12" fill="{color}"><title>{title}</title>{shape}{count}</text>')
    return "".join(out) + "</svg>"
