"""The dashboard served from a real status of a real Redis, read over HTTP and by headless Chromium.

Set DRAMACTL_DASHBOARD_SCREENSHOT=docs/dashboard.png to keep the screenshot for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import dramatiq
import pytest

from dramactl import dashboard, status
from dramactl import settings as settings_mod
from dramactl.example import tasks
from tests.conftest import need
from tests.integration.test_cli import NO_SYSTEM_BUS

COLUMNS = [key for key, _ in dashboard.QUEUE_COLUMNS]


class Tables(HTMLParser):
    """Rows of the page's tables: {table id: {row key (data-queue/data-unit): [cell texts]}}, plus the error items."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, list[str]]] = {}
        self.errors: list[str] = []
        self._table = self._row = None
        self._cell: list[str] | None = None
        self._in_errors = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = {}
        elif tag == "tr" and self._table and (a.get("data-queue") or a.get("data-unit")):
            self._row = a.get("data-queue") or a.get("data-unit")
            self.tables[self._table][self._row] = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "section" and a.get("id") == "errors":
            self._in_errors = True
        elif tag == "li" and self._in_errors:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self.tables[self._table][self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "li" and self._in_errors and self._cell is not None:
            self.errors.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "section":
            self._in_errors = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> Tables:
    t = Tables()
    t.feed(html)
    return t


def queue_row(tables: Tables, name: str) -> dict[str, str]:
    cells = tables.tables["queues"][name]
    return dict(zip(["name", *COLUMNS], cells))


@pytest.fixture
def app_settings(settings_env, redis):
    return settings_mod.parse(settings_env)


@pytest.fixture
def scene(app_settings, redis):
    """Real queue contents: one dead email, three ready emails, two ready OCR jobs, one delayed notification."""
    broker = tasks.setup(app_settings, task_seconds=0)
    bad = tasks.process_email_task.send({"to": "nobody@example.com"})  # no subject: dead-lettered at once
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join("email_processing", timeout=10_000)
    finally:
        worker.stop()
    assert redis.zcard("dramatiq:email_processing.XQ") == 1, bad
    d = tasks.TaskDispatcher()
    for i in range(3):
        d.send_email_task({"to": f"u{i}@example.com", "subject": "hello"})
    for _ in range(2):
        d.send_ocr_task({"text": "scan"})
    tasks.send_notification_task.send_with_options(args=({"user_id": 1, "message": "later"},), delay=600_000)
    return app_settings


EXPECTED = {  # queue -> (ready, delayed, due, in_flight, orphaned, dead)
    "email_processing": ("3", "0", "0", "0", "0", "1"),
    "ocr_processing": ("2", "0", "0", "0", "0", "0"),
    "high_priority": ("0", "1", "0", "0", "0", "0"),
    "low_priority": ("0", "0", "0", "0", "0", "0"),
}


@pytest.fixture
def served(scene):
    """The dashboard with the real collect (systemd included: on a host without it, that is an error)."""
    server = dashboard.make_server(scene, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def assert_shows_scene(tables: Tables, expected_errors: list[str]) -> None:
    assert list(tables.tables["queues"]) == [*EXPECTED, "*total*"]
    for name, counts in EXPECTED.items():
        row = queue_row(tables, name)
        assert row["name"] == name
        assert (row["ready"], row["delayed"], row["due"], row["in_flight"], row["orphaned"], row["dead"]) == counts, row
    total = queue_row(tables, "*total*")
    assert (total["ready"], total["delayed"], total["dead"], total["backlog"]) == ("5", "1", "1", "5")
    assert queue_row(tables, "email_processing")["oldest_age"].endswith(" s")
    assert queue_row(tables, "low_priority")["oldest_age"] == "—"
    assert tables.errors == expected_errors


def test_status_json_and_page_show_the_real_queues(served, scene, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", NO_SYSTEM_BUS["DBUS_SYSTEM_BUS_ADDRESS"])  # the same on every host
    expected = status.collect(scene)
    code, ctype, body = get(served.url + "status.json")
    assert code == 200 and ctype == "application/json"
    got = json.loads(body)
    assert [q["name"] for q in got["queues"]] == list(EXPECTED)
    assert {q["name"]: (q["ready"], q["delayed"], q["dead"]) for q in got["queues"]} == {
        n: (int(c[0]), int(c[1]), int(c[5])) for n, c in EXPECTED.items()
    }
    assert got["errors"] == expected["errors"] and got["limits"] == expected["limits"]

    code, ctype, html = get(served.url)
    assert code == 200 and ctype == "text/html; charset=utf-8"
    assert '<meta http-equiv="refresh" content="5">' in html
    tables = parse(html)
    assert_shows_scene(tables, expected["errors"])
    units = tables.tables["instances"]
    assert len(units) == len(expected["instances"])
    up = sum(1 for i in expected["instances"] if i["active_state"] in ("active", "activating"))
    assert f"<dt>Workers up</dt><dd>{up} of {len(units)}</dd>" in html
    assert f"min {expected['limits']['min']} · max {expected['limits']['max']}" in html
    assert [e for e in expected["errors"] if e.startswith("systemd:")]  # no systemd reachable: said plainly
    assert "cannot reach systemd" in html and "systemd cannot be reached: no instance states" in html
    assert get(served.url + "nope")[0] == 404


def test_errors_and_hostile_values_are_shown_escaped_never_a_traceback(scene, redis):
    def raising(settings):
        raise RuntimeError("redis exploded <b>now</b>")

    hostile = {
        "queues": [{"name": "<script>alert(1)</script>", "ready": 7, "delayed": 0, "due": 0, "in_flight": 2, "orphaned": 1, "dead": 0, "oldest_age": 75.5, "backlog": 10}],
        "instances": [{"number": 1, "name": "dramatiq-worker@1.service", "active_state": "failed", "sub_state": "failed", "pid": 0, "uptime": None, "restarts": 4}],
        "errors": ["systemd: <img src=x onerror=alert(1)>"],
    }
    cases = [
        (raising, ["status: RuntimeError: redis exploded <b>now</b>"]),
        (lambda s: "not a dict", ["status: TypeError: status is a str, not a dict"]),
        (lambda s: hostile, ["systemd: <img src=x onerror=alert(1)>"]),
    ]
    for collect, errors in cases:
        server = dashboard.make_server(scene, "127.0.0.1", 0, collect=collect, refresh=0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            code, _, html = get(server.url)
            jcode, _, body = get(server.url + "status.json")
        finally:
            server.shutdown()
            server.server_close()
        assert code == 200 and jcode == 200
        assert "<script>alert" not in html and "<img" not in html and "<b>now" not in html
        assert "Traceback" not in html and 'http-equiv="refresh"' not in html
        tables = parse(html)
        assert tables.errors == errors == json.loads(body)["errors"]
        if collect is not cases[2][0]:
            assert "No queue figures (see the errors above)." in html and "No instance states (see the errors above)." in html
    row = tables.tables["queues"]["<script>alert(1)</script>"]
    assert row[0] == "<script>alert(1)</script>" and row[1] == "7" and row[5] == "1" and row[7] == "1 m 15 s"
    assert tables.tables["instances"]["dramatiq-worker@1.service"] == ["dramatiq-worker@1.service", "failed (failed)", "—", "—", "4", "—", "—", "—"]


def test_the_instance_table_shows_each_instances_busy_threads_and_oldest_task() -> None:
    """Issue 19: per instance, busy threads of total and the age of its oldest running task, from the
    hook's report as `status --json` carries it; "?" for an up instance without a report."""
    def unit(number: int, work: dict | None) -> dict:
        return {"number": number, "name": f"dramatiq-worker@{number}.service", "active_state": "active", "sub_state": "running",
                "pid": 100 + number, "uptime": 600.0, "restarts": 0, "is_up": True, "work": work}

    instances = [
        unit(1, {"threads": 4, "busy": 2, "oldest": 1.0, "oldest_age": 90.0, "held": 1, "paused": True}),
        unit(2, None),
        unit(3, {"threads": 4, "busy": 0, "oldest": None, "oldest_age": None, "held": 0, "paused": False}),
    ]
    rows = parse(dashboard.render_page({"queues": [], "instances": instances, "errors": []}, refresh=0)).tables["instances"]
    assert rows["dramatiq-worker@1.service"][5:7] == ["2/4", "1 m 30 s +1 held paused"]
    assert rows["dramatiq-worker@2.service"][5:7] == ["?", "?"]
    assert rows["dramatiq-worker@3.service"][5:7] == ["0/4", "—"]


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    argv = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={user_dir}", *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_headless_chromium_renders_the_page(served, scene, tmp_path):
    need(shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)")
    expected_errors = status.collect(scene)["errors"]
    dom = chromium("--dump-dom", served.url, user_dir=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    tables = parse(dom.stdout)
    assert_shows_scene(tables, expected_errors)
    assert "dramactl · Dramatiq fleet" in dom.stdout

    shot = tmp_path / "dashboard.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1200,800", "--hide-scrollbars", served.url, user_dir=tmp_path / "profile")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 800)
    assert len(png) > 20_000, "the screenshot looks blank"
    keep = os.environ.get("DRAMACTL_DASHBOARD_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)


def test_cards_show_the_active_policys_own_view(scene, monkeypatch):
    """Under the default policy the cards are what it decides from (no step thresholds); under POLICY=step, only
    the step rule's thresholds. Real Redis; status.collect as the page uses it."""
    import dataclasses

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", NO_SYSTEM_BUS["DBUS_SYSTEM_BUS_ADDRESS"])
    default = dashboard.render_summary(status.collect(scene))
    assert "Scale at backlog" not in default and "threshold" not in default
    # The scene's workers ran without the hook: no work reported yet, so the default policy sizes by count.
    assert '<div id="policy"><dt>Policy</dt><dd>default, by count (no work reported yet)</dd></div>' in default, default
    assert '<div id="needs"><dt>Fleet asked for</dt>' in default and '<div id="target"><dt>Policy wants</dt>' in default

    step = dashboard.render_summary(status.collect(dataclasses.replace(scene, policy="step")))
    assert '<div id="thresholds"><dt>Scale at backlog</dt><dd>up &gt; 0 · down &lt; 0</dd></div>' in step, step
    assert 'id="policy"' not in step and 'id="needs"' not in step and "E[S]" not in step


def test_work_cards_show_the_measured_figures() -> None:
    view = {"name": "default", "by": "work", "arrival_rate": 0.52, "service_time": 2.0, "busy_threads": 1.04, "startup": 3.1,
            "startup_learned": True, "needs": {"arrivals": 2, "drain": 5, "latency_guard": None, "recurring": None, "rising": 6}, "wanted": 5, "target": 5}
    html = dashboard.render_summary({"policy": view})
    for card in ("<dt>Arrivals</dt><dd>0.52/s</dd>", "<dt>Service time</dt><dd>2.00 s</dd>", "<dt>Busy threads</dt><dd>1.0</dd>",
                 "<dt>Start-up</dt><dd>3.1 s learned</dd>", "<dt>Fleet asked for</dt><dd>arrivals 2 · drain 5 · guard — · block — · rising 6</dd>",
                 "<dt>Policy wants</dt><dd>5 · target 5</dd>"):
        assert card in html, html
