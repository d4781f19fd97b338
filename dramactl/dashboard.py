"""A small read-only web view of the queues and the systemd fleet.

Served by the standard library (``http.server``), so it adds no dependency:

- ``/``            an HTML page, refreshing itself every few seconds, with each queue's
                   ready/delayed/due/in-flight/orphaned/dead counts and oldest age, the worker
                   instances (state, PID, uptime, restarts), the limits and the timer, and a
                   chart of the last hours from the tick history (``dramactl.chart``);
- ``/status.json`` the same object ``dramactl status --json`` prints;
- ``/metrics``     the Prometheus metrics, as ``dramactl metrics`` prints them.

Both come from :func:`dramactl.status.collect` on every request. When it cannot reach
Redis or systemd, or raises, the page still renders and shows why. It binds to
127.0.0.1 by default: it changes nothing, but it shows queue names and unit states.

It answers only requests whose ``Host`` header names this dashboard (:func:`host_allowed`),
so a page of another site that rebinds its own name to 127.0.0.1 (DNS rebinding) gets a
403, never the status. Allowed, with any port or none (an ssh tunnel's local port differs):

- ``localhost``, and any IP address (``127.0.0.1``, ``[::1]``, the bound address, the
  address a browser was given): a browser sends an address only when it was asked for
  that address, and rebinding needs a name it resolves;
- the ``--host``/``DASHBOARD_HOST`` value it was started with, when that is a name;
- bound to every interface (``0.0.0.0``, ``::``) or to another address than loopback, the
  machine's host name and fully qualified name too (``socket.gethostname``, ``getfqdn``).

Any other name (a DNS alias, a reverse proxy passing its public name) is refused; open the
dashboard by one of those, or have the proxy send ``Host: 127.0.0.1``. Names compare case-
insensitively, a trailing dot ignored. A request with no Host header (HTTP/1.0: not a
browser's) is answered; one with two is refused.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import time
import traceback
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from dramactl.settings import Settings, redact

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_REFRESH = 5

logger = logging.getLogger("dramactl.dashboard")

Collect = Callable[[Settings], dict]
History = Callable[[], list]  # history entries for the chart, oldest first; raises to show why there are none
CHART_WINDOW = 3 * 3600

QUEUE_COLUMNS = (
    ("ready", "Ready"),
    ("delayed", "Delayed"),
    ("due", "Due"),
    ("in_flight", "In flight"),
    ("orphaned", "Orphaned"),
    ("dead", "Dead"),
    ("oldest_age", "Oldest age"),
    ("backlog", "Backlog"),
)


def default_collect(settings: Settings) -> dict:
    """:func:`dramactl.status.collect` with systemd."""
    from dramactl.status import collect

    return collect(settings)


def default_history() -> list:
    """The last CHART_WINDOW seconds of ticks from the journal (:func:`dramactl.history.read`)."""
    from dramactl import history

    return history.read(since=time.time() - CHART_WINDOW)


def render_chart(history: History) -> str:
    """The chart of the history, or one line saying why there is none; never raises."""
    from dramactl import chart

    try:
        entries = history()
    except Exception as exc:  # the page must render whatever went wrong
        return f'<p class="empty" id="chart-error">No chart: {escape(str(exc))}</p>'
    return chart.render(entries, window=CHART_WINDOW)


def safe_collect(settings: Settings, collect: Collect) -> dict:
    """collect()'s dict, or one whose ``errors`` says why it raised; never raises. No error shows a password."""
    try:
        status = collect(settings)
        if not isinstance(status, dict):
            raise TypeError(f"status is a {type(status).__name__}, not a dict")
    except Exception as exc:  # the page must render whatever went wrong
        logger.error("collecting status failed: %s", redact("".join(traceback.format_exception(exc)), settings))
        return {"time": time.time(), "queues": [], "instances": [], "errors": [redact(f"status: {type(exc).__name__}: {exc}", settings)]}
    if isinstance(status.get("errors"), list):
        status = {**status, "errors": [redact(str(e), settings) for e in status["errors"]]}
    return status


# ---- formatting ---------------------------------------------------------------------


def fmt_age(seconds: Any) -> str:
    """Seconds as 4.2 s / 3 m 05 s / 2 h 03 m; a dash for none."""
    if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "—"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} m {int(s % 60):02d} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} m"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600):02d} h"


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ago(epoch: Any, now: float) -> str:
    return f"{fmt_age(now - epoch)} ago" if _is_num(epoch) and epoch else "—"


def fmt_time(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool) or not epoch:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _cell(value: Any) -> str:
    return "—" if value is None or value == "" else escape(str(value))


def _num(value: Any) -> str:
    """A number without a useless '.0'; escaped text otherwise."""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:g}"
    return _cell(value)


def _queue_cells(row: dict) -> str:
    cells = []
    for key, _ in QUEUE_COLUMNS:
        value = row.get(key)
        text = fmt_age(value) if key == "oldest_age" else _cell(value)
        warn = key == "dead" and isinstance(value, int) and value > 0
        cls = f"num {key}" + (" warn" if warn else "")
        cells.append(f'<td class="{cls}">{text}</td>')
    return "".join(cells)


def _state_class(active_state: str) -> str:
    return {"active": "ok", "activating": "busy", "deactivating": "busy", "reloading": "busy", "failed": "bad"}.get(active_state, "idle")


def render_queues(status: dict) -> str:
    queues = [q for q in status.get("queues") or [] if isinstance(q, dict)]
    head = "".join(f'<th class="num">{escape(label)}</th>' for _, label in QUEUE_COLUMNS)
    rows = [
        f'<tr data-queue="{escape(str(q.get("name", "")))}"><th class="name">{_cell(q.get("name"))}</th>{_queue_cells(q)}</tr>'
        for q in queues
    ]
    if not rows:
        rows.append(f'<tr><td class="empty" colspan="{len(QUEUE_COLUMNS) + 1}">No queue figures (see the errors above).</td></tr>')
    totals = status.get("totals")
    foot = f'<tfoot><tr data-queue="*total*"><th class="name">Total</th>{_queue_cells(totals)}</tr></tfoot>' if isinstance(totals, dict) else ""
    return f'<table id="queues"><thead><tr><th>Queue</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody>{foot}</table>'


def _memory(value: object) -> str:
    """An instance's MemoryCurrent as the status text shows it, or "—" when not known."""
    from .settings import size_text

    return escape(size_text(value)) if isinstance(value, int) and not isinstance(value, bool) else "—"


def render_instances(status: dict) -> str:
    instances = [i for i in status.get("instances") or [] if isinstance(i, dict)]
    rows = []
    for i in instances:
        active = str(i.get("active_state", ""))
        state = escape(active) + (f" ({escape(str(i['sub_state']))})" if i.get("sub_state") else "")
        pid = i.get("pid") or None
        restarts = i.get("restarts")
        rows.append(
            f'<tr data-unit="{escape(str(i.get("name", "")))}"><th class="name">{_cell(i.get("name") or i.get("number"))}</th>'
            f'<td class="state {_state_class(active)}">{state}</td><td class="num pid">{_cell(pid)}</td>'
            f'<td class="num uptime">{fmt_age(i.get("uptime"))}</td>'
            f'<td class="num restarts{" warn" if isinstance(restarts, int) and restarts > 0 else ""}">{_cell(restarts)}</td>'
            f"{_work_cells(i.get('work'), bool(i.get('is_up')))}"
            f'<td class="num memory">{_memory(i.get("memory"))}</td></tr>'
        )
    if not rows:
        errors = [str(e) for e in status.get("errors") or []]
        if any(e.startswith("systemd:") for e in errors):
            text = "systemd cannot be reached: no instance states (see the error above)."
        elif errors:
            text = "No instance states (see the errors above)."
        else:
            text = "No worker instances are loaded."
        rows.append(f'<tr><td class="empty" colspan="8">{text}</td></tr>')
    head = (
        '<tr><th>Unit</th><th>State</th><th class="num">PID</th><th class="num">Uptime</th><th class="num">Restarts</th>'
        '<th class="num">Busy threads</th><th class="num">Oldest task</th><th class="num">Memory</th></tr>'
    )
    return f'<table id="instances"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _work_cells(work: object, up: bool) -> str:
    """Busy threads of total and the oldest running task's age, from the worker hook's report
    ("?" when an up instance has none: dramactl cannot see inside it)."""
    if not isinstance(work, dict) and not up:
        return '<td class="num busy">—</td><td class="num oldest-task">—</td>'
    if not isinstance(work, dict):
        title = ' title="no report from the dramactl hook: dramactl cannot see inside this instance"'
        return f'<td class="num busy"{title}>?</td><td class="num oldest-task"{title}>?</td>'
    busy = f"{_cell(work.get('busy'))}/{_cell(work.get('threads'))}"
    held = f" +{_cell(work.get('held'))} held" if work.get("held") else ""
    held += ' <span title="intake paused: a scale-down waits for its running tasks; it takes no new messages">paused</span>' if work.get("paused") is True else ""
    return f'<td class="num busy">{busy}</td><td class="num oldest-task">{fmt_age(work.get("oldest_age"))}{held}</td>'


def render_hosts(status: dict) -> str:
    """The fleet's hosts (FLEET_NAME set): a section of their own; '' on one host."""
    fleet = status.get("fleet")
    if not isinstance(fleet, dict):
        return ""
    now = status.get("time") if _is_num(status.get("time")) else time.time()
    hosts = [h for h in status.get("hosts") or [] if isinstance(h, dict)]
    rows = []
    for h in hosts:
        here = " (this host)" if h.get("id", h.get("name")) == fleet.get("this_host") else ""
        if not h.get("live"):
            state = '<td class="state bad">down</td>'
        elif h.get("paused"):
            state = '<td class="state busy">paused</td>'
        else:
            state = '<td class="state bad">failing</td>' if h.get("failing") else '<td class="state ok">live</td>'
        rows.append(
            f'<tr><th class="name">{escape(str(h.get("name")))}{here}</th>{state}<td class="num">{_num(h.get("up"))}</td>'
            f'<td class="num">{_num(h.get("share"))}</td><td class="num">{_num(h.get("max"))}</td><td>{_ago(h.get("last_tick"), now)}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td class="empty" colspan="6">no host has ticked in this fleet yet</td></tr>')
    total = sum(h.get("up", 0) for h in hosts if h.get("live") and isinstance(h.get("up"), int))
    foot = (f'<tfoot><tr><th class="name">fleet {escape(str(fleet.get("name")))}</th><td>target {_cell(fleet.get("target"))} of cap {_cell(fleet.get("cap"))}'
            f' · MIN {_cell(fleet.get("min"))}</td><td class="num">{total}</td><td class="num">{_cell(fleet.get("target"))}</td><td></td><td></td></tr></tfoot>')
    head = '<tr><th>Host</th><th>State</th><th class="num">Up</th><th class="num">Share</th><th class="num">Max</th><th>Last tick</th></tr>'
    differ = fleet.get("settings_differ")
    note = ""
    if isinstance(differ, list) and differ:
        note = '<p class="warn" id="settings-differ">this host\'s settings differ from the fleet\'s record: ' + escape("; ".join(map(str, differ))) + "; it follows the fleet's</p>"
    return f'<h2>Hosts</h2>{note}<table id="hosts"><thead>{head}</thead><tbody>{"".join(rows)}</tbody>{foot}</table>'


def policy_cards(view: dict) -> list[tuple[str, str, str]]:
    """The active policy's own view as cards (see :mod:`dramactl.policyview`): the step rule's thresholds under
    POLICY=step; under the default policy what it decides from and the fleet each rule asks for."""
    if view.get("name") == "step":
        return [("thresholds", "Scale at backlog", f"up &gt; {_num(view.get('scale_up_above'))} · down &lt; {_num(view.get('scale_down_below'))}")]
    if view.get("by") is None:
        return [("policy", "Policy", f"{_cell(view.get('name'))}: {_cell(view.get('unavailable'))}")]
    needs = view.get("needs") if isinstance(view.get("needs"), dict) else {}
    startup = f"{fmt_age(view.get('startup'))} " + ("learned" if view.get("startup_learned") else "assumed")
    target = ("target", "Policy wants", f"{_num(view.get('wanted'))} · target {_num(view.get('target'))}")
    if view.get("by") == "count":
        return [
            ("policy", "Policy", "default, by count (no work reported yet)"),
            ("per-worker", "Backlog per worker", _num(view.get("backlog_per_worker"))),
            ("startup", "Start-up", startup),
            ("needs", "Fleet asked for", f"backlog {_num(needs.get('backlog'))} · guard {_num(needs.get('latency_guard'))}"),
            target,
        ]
    rate = view.get("arrival_rate")
    return [
        ("policy", "Policy", "default, by work"),
        ("arrivals", "Arrivals", "—" if not _is_num(rate) else f"{rate:.2f}/s"),
        ("service", "Service time", "—" if not _is_num(view.get("service_time")) else f"{view['service_time']:.2f} s"),
        ("busy", "Busy threads", "—" if not _is_num(view.get("busy_threads")) else f"{view['busy_threads']:.1f}"),
        ("startup", "Start-up", startup),
        ("needs", "Fleet asked for", f"arrivals {_num(needs.get('arrivals'))} · drain {_num(needs.get('drain'))} · "
                                     f"guard {_num(needs.get('latency_guard'))} · block {_num(needs.get('recurring'))} · "
                                     f"rising {_num(needs.get('rising'))}"),
        target,
    ]


def render_summary(status: dict) -> str:
    """The facts line: instances up, limits, thresholds, timer, paused, last tick."""
    items: list[tuple[str, str, str]] = []  # (id, label, html value)
    now = status.get("time") if _is_num(status.get("time")) else time.time()
    instances = [i for i in status.get("instances") or [] if isinstance(i, dict)]
    up = sum(1 for i in instances if i.get("active_state") in ("active", "activating"))
    items.append(("workers", "Workers up", f"{up} of {len(instances)}"))
    lim = status.get("limits")
    if isinstance(lim, dict):
        items.append(("limits", "Limits", f"min {_cell(lim.get('min'))} · max {_cell(lim.get('max'))}" + (f" · policy {_cell(lim.get('policy'))}" if lim.get("policy") else "")))
    if isinstance(status.get("policy"), dict):
        items += policy_cards(status["policy"])
    timer = status.get("timer")
    if isinstance(timer, dict):
        every = f" · every {fmt_age(timer.get('interval'))}" if timer.get("interval") else ""
        nxt = timer.get("next")
        nxt_text = f" · next in {fmt_age(nxt - now)}" if _is_num(nxt) and nxt else ""
        items.append(("timer", "Scaler timer", f"{_cell(timer.get('active_state'))}{every}{nxt_text}"))
    elif "timer" in status:
        items.append(("timer", "Scaler timer", "unknown"))
    if "paused" in status:
        paused = bool(status.get("paused"))
        items.append(("paused", "Autoscaling", '<span class="bad">paused</span>' if paused else '<span class="ok">on</span>'))
    tick = status.get("last_tick")
    if isinstance(tick, dict):
        items.append(
            ("last-tick", "Last tick", f"{_ago(tick.get('at'), now)}: backlog {_cell(tick.get('backlog'))}, "
             f"{_cell(tick.get('workers'))} → {_cell(tick.get('target'))} workers")
        )
    return '<dl class="summary">' + "".join(f'<div id="{i}"><dt>{escape(label)}</dt><dd>{value}</dd></div>' for i, label, value in items) + "</dl>"


STYLE = """
:root { color-scheme: light; --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --ok:#067647; --busy:#b54708; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
header { background: #1d2330; color: #fff; padding: 14px 28px; display: flex; align-items: baseline; gap: 18px; flex-wrap: wrap; }
header h1 { margin: 0; font-size: 18px; font-weight: 600; }
header .meta { color: #c6cbd5; font-size: 13px; }
main { padding: 18px 28px 28px; max-width: 1200px; }
h2 { font-size: 15px; margin: 22px 0 8px; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
th, td { padding: 7px 12px; text-align: left; border-bottom: 1px solid var(--line); white-space: nowrap; }
thead th { background: #f0f2f5; font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); }
tbody th.name, tfoot th.name { font-weight: 600; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
tfoot td, tfoot th { background: #f8f9fb; font-weight: 600; border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { color: var(--muted); text-align: center; padding: 14px; }
.warn { color: var(--bad); font-weight: 600; }
.ok { color: var(--ok); } .busy { color: var(--busy); } .bad { color: var(--bad); } .idle { color: var(--muted); }
td.state { font-weight: 600; }
.errors { background: #fef3f2; border: 1px solid #fecdca; color: var(--bad); border-radius: 6px; padding: 10px 14px; margin: 0 0 14px; }
.errors ul { margin: 0; padding-left: 18px; } .errors li { margin: 2px 0; }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin: 0; }
.summary div { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.summary dt { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.summary dd { margin: 2px 0 0; font-weight: 600; }
.chart { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; }
"""


def render_page(status: dict, *, refresh: int = DEFAULT_REFRESH, location: str = "", chart: str = "") -> str:
    """The whole HTML page for one status dict; every value from it is escaped."""
    errors = [str(e) for e in status.get("errors") or []]
    error_box = (
        '<section class="errors" id="errors"><ul>' + "".join(f"<li>{escape(e)}</li>" for e in errors) + "</ul></section>" if errors else ""
    )
    updated = fmt_time(status.get("time") or time.time())
    meta_refresh = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    where = f" · Redis {escape(location)}" if location else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{meta_refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dramactl · Dramatiq fleet</title><style>{STYLE}</style></head>
<body><header><h1>dramactl · Dramatiq fleet</h1><span class="meta" id="updated">updated {escape(updated)}{where}</span></header>
<main>{error_box}{render_summary(status)}
<h2>Queues</h2>{render_queues(status)}
<h2>Worker instances</h2>{render_instances(status)}{render_hosts(status)}
{f'<h2>Last {CHART_WINDOW // 3600} hours: backlog, fleet size and target</h2><div class="chart">{chart}</div>' if chart else ""}
<footer>{f"Refreshes every {int(refresh)} s" if refresh > 0 else "Reload to refresh"} · the same data as JSON: <a href="status.json">status.json</a></footer>
</main></body></html>
"""


# ---- the server ---------------------------------------------------------------------

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


_HOST_HEADER = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:\[\]/@]+))(?::[0-9]*)?$")
LOCAL_NAMES = frozenset({"localhost"})


def _name(text: str) -> str:
    return text.strip().lower().removesuffix(".")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def allowed_names(host: str, bound: str) -> frozenset[str]:
    """The names (besides any IP address) a Host header may give, for a server started with ``host`` and bound to
    the address ``bound``: localhost, ``host`` when it is a name and, bound to every interface or to an address
    that is not loopback, the machine's host name and fully qualified name (see the module's docstring)."""
    names = set(LOCAL_NAMES)
    if host and not _is_ip(host):
        names.add(_name(host))
    try:
        address = ipaddress.ip_address(bound.split("%", 1)[0])
        loopback = address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)
    except ValueError:
        loopback = False
    if not loopback:
        for lookup in (socket.gethostname, socket.getfqdn):
            try:
                names.add(_name(lookup()))
            except OSError:
                pass
    names.discard("")
    return frozenset(names)


def host_allowed(header: str | None, names: frozenset[str] | set[str]) -> bool:
    """Whether a request's Host header names this dashboard (pure): any IP address (IPv6 in brackets), or one of
    ``names`` (:func:`allowed_names`), with any port or none; no header at all is allowed (not a browser)."""
    if header is None:
        return True
    m = _HOST_HEADER.match(header.strip())
    if not m:
        return False
    if m.group("v6") is not None:
        return ":" in m.group("v6") and _is_ip(m.group("v6"))
    name = _name(m.group("name"))
    return name in names or (_is_ip(name) and ipaddress.ip_address(name).version == 4)


def make_handler(settings: Settings, collect: Collect, refresh: int, history: History = default_history) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dramactl-dashboard"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._respond(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            hosts = self.headers.get_all("Host") or []
            names = getattr(self.server, "allowed_hosts", LOCAL_NAMES)
            if len(hosts) > 1 or not host_allowed(hosts[0] if hosts else None, names):
                logger.warning("refused a request for Host %r: not a name of this dashboard (DNS rebinding guard)", ", ".join(hosts)[:200])
                msg = b"forbidden: the Host header names no address or name of this dashboard; open it by its address, localhost or DASHBOARD_HOST\n"
                self._send(HTTPStatus.FORBIDDEN, msg, "text/plain; charset=utf-8", send_body)
                return
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    status = safe_collect(settings, collect)
                    body = render_page(status, refresh=refresh, location=settings.redis_location, chart=render_chart(history)).encode()
                    ctype = "text/html; charset=utf-8"
                elif path == "/status.json":
                    body = json.dumps(safe_collect(settings, collect), default=str, indent=1).encode()
                    ctype = "application/json"
                elif path == "/metrics":
                    from dramactl import metrics

                    body = metrics.render(metrics.from_status(safe_collect(settings, collect))).encode()
                    ctype = metrics.CONTENT_TYPE
                else:
                    self._send(HTTPStatus.NOT_FOUND, b"not found: try /, /status.json or /metrics\n", "text/plain; charset=utf-8", send_body)
                    return
            except Exception as exc:  # a rendering bug: say so in one line, keep the traceback in the log
                logger.exception("rendering %s failed", path)
                msg = f"dramactl dashboard: cannot render {path}: {type(exc).__name__}\n".encode()
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, msg, "text/plain; charset=utf-8", send_body)
                return
            self._send(HTTPStatus.OK, body, ctype, send_body)

        def _send(self, code: int, body: bytes, ctype: str, send_body: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            logger.info("%s %s", self.address_string(), format % args)

    return Handler


class BadHost(ValueError):
    """A host the socket cannot take (its name cannot be encoded: 'ünï..', an empty label)."""


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    allowed_hosts: frozenset[str] = LOCAL_NAMES  # make_server sets them from the host it binds (allowed_names)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}/"


class DashboardServer6(DashboardServer):
    address_family = socket.AF_INET6


def make_server(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    collect: Collect | None = None,
    refresh: int = DEFAULT_REFRESH,
    history: History | None = None,
) -> DashboardServer:
    """A bound, not yet serving, server (port 0 picks a free one; see ``.url``).

    ``collect(settings) -> dict`` defaults to :func:`dramactl.status.collect`.
    Raises OSError when the address cannot be bound, BadHost when the host is no name a socket takes.
    """
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be from 0 to 65535, not {port}")
    if refresh < 0:
        raise ValueError(f"refresh must be >= 0 seconds, not {refresh}")
    handler = make_handler(settings, collect or default_collect, refresh, history or default_history)
    server_class = DashboardServer6 if ":" in host else DashboardServer
    try:
        server = server_class((host, int(port)), handler)
    except (TypeError, UnicodeError) as exc:  # socket.bind: "encoding of hostname failed"
        raise BadHost(f"{host!r} is not a host name or address ({exc})") from None
    server.allowed_hosts = allowed_names(host, str(server.server_address[0]))
    return server


def serve(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    refresh: int = DEFAULT_REFRESH,
    on_ready: Callable[[str], Any] | None = None,
) -> None:
    """Serve the dashboard until Ctrl-C; ``on_ready(url)`` is called once it listens.

    Raises OSError (e.g. address in use) before serving when the address cannot be bound.
    """
    server = make_server(settings, host, port, refresh=refresh)
    logger.info("dashboard on %s", server.url)
    if on_ready is not None:
        on_ready(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
