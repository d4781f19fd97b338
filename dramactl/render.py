"""Text rendering of the status object, for people at a terminal.

Much of what it prints comes from Redis (queue names, the fleet's host labels and its
decision, errors quoting a key) or from the journal, where another user of the host may
have put anything: every such string goes through :func:`printable`, and every line once
more, so no control character (an ``ESC ] 0 ; title BEL`` that retitles the operator's
terminal, a carriage return that hides a line, a bidi override) reaches the terminal.
The JSON output is left raw: ``json.dumps`` escapes them already.
"""

from __future__ import annotations

import time

from .settings import size_text


def printable(value: object) -> str:
    """``value`` as text a terminal shows as it is (pure): each character that is not printable (str.isprintable:
    C0 and C1 controls such as ESC, CR, LF, TAB and DEL, format characters such as bidi overrides and zero-width
    ones, line and paragraph separators, unassigned code points, lone surrogates) as its Python escape, ``\\x1b``."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


def printable_lines(lines: list[str]) -> str:
    """The lines joined by newlines, each made :func:`printable` (pure): the layout's newlines are the only control
    characters left, whatever a line holds (one of them from Redis with a newline inside is escaped, not split)."""
    return "\n".join(printable(line) for line in lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _when(epoch: float | None, now: float) -> str:
    if not epoch:
        return "-"
    delta = epoch - now
    stamp = time.strftime("%H:%M:%S", time.localtime(epoch))
    return f"{stamp} (in {_age(delta)})" if delta >= 0 else f"{stamp} ({_age(-delta)} ago)"


def render_hosts(fleet: dict, hosts: list, now: float) -> list[str]:
    """The fleet's hosts (FLEET_NAME): who runs what of the fleet's target."""
    target = "-" if fleet.get("target") is None else fleet["target"]
    cap = "-" if fleet.get("cap") is None else fleet["cap"]
    decided = f", decided by {printable(fleet['decided_by'])} {_when(fleet.get('decided_at'), now)}" if fleet.get("decided_by") else ""
    lines = [f"fleet {printable(fleet['name'])}: target {target} of cap {cap}, MIN {fleet.get('min')} for the whole fleet{decided}"]
    if fleet.get("settings_differ"):
        lines.append(
            "this host's settings differ from the fleet's record (" + "; ".join(map(printable, fleet["settings_differ"])) + "): it follows the fleet's;"
            " the record changes once every live host runs the same new settings"
        )
    lines.append(f"{'HOST':<28} {'UP':>4} {'SHARE':>6} {'MAX':>4} {'LAST TICK':>22}  STATE")
    for h in hosts:
        here = " (this host)" if h.get("id", h["name"]) == fleet.get("this_host") else ""
        if not h.get("live"):
            state = "down: heartbeat expired, its share went to the others"
        elif h.get("paused"):
            state = "paused"
        else:
            state = "failing: its instances fail, the others serve its share" if h.get("failing") else "live"
        lines.append(f"{printable(h['name']):<28} {h['up']:>4} {h['share']:>6} {h['max']:>4} {_when(h.get('last_tick'), now):>22}  {state}{here}")
    if not hosts:
        lines.append("(no host has ticked in this fleet yet)")
    return lines


def render_status(data: dict) -> str:
    """The `dramactl status` text: queues, instances, limits, timer, errors."""
    now = data.get("time") or time.time()
    lines = [f"{'QUEUE':<24} {'READY':>7} {'DELAYED':>8} {'DUE':>5} {'IN-FLIGHT':>9} {'ORPHANED':>8} {'DEAD':>6} {'OLDEST':>8}"]
    rows = list(data.get("queues") or [])
    if data.get("totals") and len(rows) > 1:
        rows.append({"name": "(total)", **data["totals"]})
    for q in rows:
        lines.append(
            f"{printable(q['name']):<24} {q['ready']:>7} {q['delayed']:>8} {q['due']:>5} {q['in_flight']:>9} {q.get('orphaned', 0):>8} {q['dead']:>6} {_age(q['oldest_age']):>8}"
        )
    lines.append("")
    instances = data.get("instances") or []
    lines.append(f"{'INSTANCE':<28} {'STATE':<22} {'PID':>8} {'UPTIME':>8} {'RESTARTS':>8} {'BUSY':>7} {'OLDEST TASK':>11} {'MEMORY':>9}")
    blind = []
    for u in instances:
        state = printable(f"{u['active_state']} ({u['sub_state']})")
        work = u.get("work")
        if work:
            busy = f"{work['busy']}/{work['threads']}"
            oldest = _age(work.get("oldest_age")) + (f" +{work['held']} held" if work.get("held") else "") + (" paused" if work.get("paused") else "")
        else:
            busy, oldest = "?", "?"
            if u.get("is_up"):
                blind.append(f"@{u['number']}")
        memory = size_text(u["memory"]) if u.get("memory") is not None else "-"
        lines.append(f"{printable(u['name']):<28} {state:<22} {u['pid'] or '-':>8} {_age(u.get('uptime')):>8} {u['restarts']:>8} {busy:>7} {oldest:>11} {memory:>9}")
    if not instances:
        lines.append("(no worker instances)")
    if blind:
        lines.append(
            f"cannot see inside {' '.join(blind)}: no report from the dramactl hook (the app does not load dramactl_ready, or it is starting);"
            " a scale-down stops them after the idle instances and before the busy ones (by highest number when none reports)"
        )
    lines.append("")
    fleet = data.get("fleet")
    if fleet:
        lines += render_hosts(fleet, data.get("hosts") or [], now)
        lines.append("")
    lim = data.get("limits") or {}
    lines.append(f"limits: min {lim.get('min')} max {lim.get('max')}  policy {lim.get('policy')}  threads/worker {data.get('threads')}")
    if data.get("policy"):
        from .policyview import describe

        lines += describe(data["policy"])
    timer = data.get("timer")
    if timer:
        every = f"every {timer['interval']:g}s" if timer.get("interval") else "interval unknown"
        lines.append(f"timer: {timer['active_state']}, {every}, last {_when(timer.get('last'), now)}, next {_when(timer.get('next'), now)}")
    size = data.get("size")
    lines.append("autoscaling: " + (f"PAUSED at {size} (dramactl resume)" if data.get("paused") and size is not None else "PAUSED (dramactl resume)" if data.get("paused") else "on"))
    if data.get("rollout"):
        lines.append(f"held: {printable(data['rollout'])}")
    recovery = data.get("recovery") or {}
    if recovery.get("attempts"):
        lines.append(
            f"recovery: {recovery['attempts']} reset(s) of failed instances in a row; next no sooner than {_when(recovery.get('next_at'), now)}"
        )
    last = data.get("last_tick")
    if last:
        lines.append(f"last tick: {_when(last['at'], now)}: backlog {last['backlog']}, workers {last['workers']} -> {last['target']}")
    for err in data.get("errors") or []:
        lines.append(f"error: {printable(err)}")
    return printable_lines(lines)
