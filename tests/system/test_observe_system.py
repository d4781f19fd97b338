"""Observability in the booted systemd: the tick's journal fields and `dramactl history`, the metrics textfile
read by Debian's node_exporter and scraped by a real Prometheus, and Dramatiq's own Prometheus middleware on
two instances at once."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import need
from tests.system.conftest import APP_DIR, DRAMACTL, PYTHON, REPO, System, wait_until
from tests.system.test_dashboard_system import CHROMIUM

pytestmark = pytest.mark.system

METRICS_DIR = "/var/lib/dramactl-metrics"
PROM_CONFIG = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['127.0.0.1:9100']
"""


def query(system: System, promql: str) -> dict[str, float]:
    """Prometheus' instant query API: {labels of interest as text: value}."""
    out = system.sh(f"curl -sf http://127.0.0.1:9090/api/v1/query --data-urlencode {shlex.quote('query=' + promql)}", check=False).stdout
    if not out:
        return {}
    body = json.loads(out)
    assert body["status"] == "success", body
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in ("__name__", "instance", "job")): float(r["value"][1])
        for r in body["data"]["result"]
    }


def test_prometheus_scrapes_the_ticks_textfile_through_node_exporter(system: System) -> None:
    for tool in ("prometheus", "prometheus-node-exporter"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (apt-get install prometheus prometheus-node-exporter)")
    began = time.time()
    system.configure(METRICS_TEXTFILE_DIR=METRICS_DIR)
    drop_in = system.sh("cat /etc/systemd/system/dramactl.service.d/50-metrics.conf").stdout
    assert f"ReadWritePaths=-{METRICS_DIR}" in drop_in
    system.sh(f"install -d -o dramactl -g dramactl -m 0755 {METRICS_DIR}")
    system.dramactl("scale-to", "2")  # paused at 2: the figures below hold while Prometheus scrapes
    system.send(30, 30.0)
    # 30 s tasks: each worker fetches only for its 2 threads (the hook's gate), the rest waits in Redis.
    wait_until(lambda: system.status()["queues"][0]["in_flight"] == 4, 30, "2 workers x 2 threads in flight")
    system.sh("systemctl start dramactl.timer")
    system.sh(
        "systemd-run --unit=obs-node-exporter -p User=prometheus /usr/bin/prometheus-node-exporter --web.listen-address=127.0.0.1:9100"
        f" --collector.disable-defaults --collector.textfile --collector.textfile.directory={METRICS_DIR}"
    )
    system.sh(f"mkdir -p /etc/obs-prometheus && cat > /etc/obs-prometheus/prometheus.yml <<'EOF'\n{PROM_CONFIG}EOF")
    system.sh(
        "systemd-run --unit=obs-prometheus -p User=prometheus -p StateDirectory=obs-prometheus /usr/bin/prometheus"
        " --config.file=/etc/obs-prometheus/prometheus.yml --storage.tsdb.path=/var/lib/obs-prometheus --web.listen-address=127.0.0.1:9090"
    )
    try:
        ready = wait_until(lambda: query(system, "dramactl_queue_ready_messages").get("queue_name=sys") == 26, 45, "Prometheus to see 26 ready")
        assert ready
        textfile = system.sh(f"stat -c '%U %a' {METRICS_DIR}/dramactl.prom").stdout.split()
        assert textfile == ["dramactl", "644"]  # written by the tick itself, as its unprivileged user
        assert query(system, "dramactl_queue_in_flight_messages") == {"queue_name=sys": 4}
        assert query(system, "dramactl_queue_dead_messages") == {"queue_name=sys": 0}
        assert query(system, 'dramactl_instances{state="active"}') == {"state=active": 2}
        assert query(system, "dramactl_target_instances") == {"": 2}
        assert query(system, "dramactl_paused") == {"": 1}
        assert query(system, "dramactl_scaling_actions_total") == {"direction=down": 0, "direction=up": 2}
        assert query(system, "dramactl_scale_down_stops_total") == {"chosen=idle": 0, "chosen=busy": 0, "chosen=unreported": 0}
        assert query(system, "dramactl_queue_oldest_message_age_seconds")["queue_name=sys"] > 0
        assert query(system, "dramactl_tick_duration_seconds")[""] > 0
        assert query(system, "dramactl_last_tick_timestamp_seconds")[""] > began
        assert query(system, "up") == {"": 1}
    finally:
        system.sh("systemctl stop obs-prometheus obs-node-exporter", check=False)

    # The same ticks, in the journal: fields on every tick line, never a second copy of the line.
    entries = [json.loads(line) for line in system.sh("journalctl -u dramactl.service -o json --no-pager").stdout.splitlines()]
    lines = [e for e in entries if str(e.get("MESSAGE", "")).startswith("queues ")]
    assert lines and all(e.get("DRAMACTL_KIND") == "tick" for e in lines)
    last = lines[-1]
    assert (last["DRAMACTL_BACKLOG"], last["DRAMACTL_READY"], last["DRAMACTL_IN_FLIGHT"], last["DRAMACTL_REASON_CLASS"]) == ("30", "26", "4", "paused")
    assert json.loads(last["DRAMACTL_INSTANCES"]) == {"active": 2}

    # dramactl history: the manual scale-to and the ticks, as root, as a systemd-journal member, not as anyone else.
    hist = json.loads(system.dramactl("history", "--json").stdout)
    manual = [e for e in hist if e["kind"] == "manual"]
    assert manual[-1]["command"] == "scale-to" and (manual[-1]["current"], manual[-1]["target"], manual[-1]["started"]) == (0, 2, 2)
    assert [a["result"] for a in manual[-1]["actions"]] == ["done", "done"]
    ticks = [e for e in hist if e["kind"] == "tick" and e["at"] > manual[-1]["at"]]
    assert ticks and (ticks[-1]["backlog"], ticks[-1]["target"], ticks[-1]["reason_class"]) == (30, 2, "paused")
    assert ticks[-1]["queues"][0]["name"] == "sys" and ticks[-1]["duration"] > 0
    system.sh("id obsreader >/dev/null 2>&1 || useradd --system -G systemd-journal obsreader")
    text = system.dramactl("history", "--since", "-10min", user="obsreader").stdout
    assert "scale-to" in text and "paused" in text
    refused = system.dramactl("history", user="dramatiq", check=False)
    assert refused.returncode == 3 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "dramactl: user dramatiq cannot read the system journal, where the tick history is; "
        "add it to the systemd-journal or adm group (then log in again), or use sudo"
    ]


FORGE = """
import json, sys
from systemd import journal
reason = sys.argv[1]
fields = {"DRAMACTL_KIND": "tick", "DRAMACTL_COMMAND": "tick", "DRAMACTL_CURRENT": "1", "DRAMACTL_TARGET": "9", "DRAMACTL_WANTED": "9",
          "DRAMACTL_REASON": reason, "DRAMACTL_REASON_CLASS": "up", "DRAMACTL_BACKLOG": "999", "DRAMACTL_READY": "999",
          "DRAMACTL_QUEUES": "[]", "DRAMACTL_INSTANCES": "{}", "DRAMACTL_ACTIONS": "[]", "DRAMACTL_STARTED": "8", "DRAMACTL_STOPPED": "0",
          "DRAMACTL_OK": "1", "DRAMACTL_PAUSED": "0", "SYSLOG_IDENTIFIER": "dramactl",
          # journald's trusted fields, as a forger would try them: it drops what a sender passes under their names
          "_UID": "0", "_SYSTEMD_UNIT": "dramactl.service"}
journal.send("queues forged | workers 1 -> 9 | " + reason, **fields)
print(json.dumps(True))
"""


def test_history_reads_only_the_entries_dramactl_wrote_not_a_local_users_forged_tick(system: System) -> None:
    """Any local user (a worker's app) can send a journal entry with DRAMACTL_KIND=tick; the history, replay, tune and
    the dashboard's chart take only those journald's trusted fields show dramactl wrote: root's commands, the timer's ticks."""
    system.dramactl("scale-to", "1")  # root's manual command
    system.sh("systemctl start dramactl.service")  # one tick, as the timer runs it: user dramactl, in dramactl.service
    reason = "FORGED by the app \x1b]0;pwned\x07"
    system.c.run([PYTHON, "-c", FORGE, reason], user="dramatiq")  # the workers' user, as their app would

    # The forged entry is in the journal, with the fields a tick has, where root and the systemd-journal group read it.
    def text(value: object) -> str:  # journalctl -o json gives a value with control characters as a list of bytes
        return bytes(value).decode() if isinstance(value, list) else str(value)

    def forged() -> list[dict]:
        out = system.sh("journalctl --no-pager -o json DRAMACTL_KIND=tick", check=False).stdout
        return [e for e in map(json.loads, out.splitlines()) if "FORGED" in text(e.get("DRAMACTL_REASON"))]

    entry = wait_until(forged, 10, "the forged entry to reach the journal")[0]
    dramatiq_uid = system.sh("id -u dramatiq").stdout.strip()
    assert entry["_UID"] == dramatiq_uid and entry.get("_SYSTEMD_UNIT") != "dramactl.service"  # journald's own, not the sender's
    assert text(entry["DRAMACTL_REASON"]) == reason

    hist = json.loads(system.dramactl("history", "--json").stdout)
    assert [e for e in hist if "FORGED" in e["reason"]] == []
    assert [e["command"] for e in hist if e["kind"] == "manual"] == ["scale-to"]
    ticks = [e for e in hist if e["kind"] == "tick"]
    assert len(ticks) == 1 and (ticks[0]["current"], ticks[0]["reason_class"]) == (1, "paused")
    tick = [json.loads(line) for line in system.sh("journalctl --no-pager -o json -u dramactl.service DRAMACTL_KIND=tick").stdout.splitlines()]
    assert [e["_UID"] for e in tick] == [system.sh("id -u dramactl").stdout.strip()]  # the real tick: the dramactl user's
    system.sh("id obsreader >/dev/null 2>&1 || useradd --system -G systemd-journal obsreader")
    shown = system.dramactl("history", user="obsreader").stdout  # a systemd-journal member's text
    assert "FORGED" not in shown and "\x1b" not in shown and "scale-to" in shown and "paused" in shown


def messages_total(body: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("dramatiq_messages_total{"))


def test_two_instances_serve_dramatiqs_prometheus_metrics_on_their_own_ports(system: System) -> None:
    system.configure(DRAMATIQ_COMMAND="dramatiq promapp", DRAMATIQ_QUEUE_NAME="prom", DRAMATIQ_PROM_PORT_BASE="9300")
    system.dramactl("scale-to", "2")
    assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"]
    system.c.python(PYTHON, "import promapp, json\nfor i in range(40): promapp.noop.send(i)\nprint(json.dumps(True))", cwd=APP_DIR)
    wait_until(lambda: system.redis_counter("prom:done") == 40, 30, "40 messages processed")

    def bodies() -> list[str] | None:
        runs = [system.sh(f"curl -sf http://127.0.0.1:{p}/", check=False) for p in (9300, 9301)]
        return [r.stdout for r in runs] if all(r.returncode == 0 for r in runs) else None

    served = wait_until(bodies, 30, "both instances to serve metrics")
    # Each instance counts only its own messages (its own multiprocess directory): together, every message once.
    assert messages_total(served[0]) + messages_total(served[1]) == 40
    for n, port in ((1, 9300), (2, 9301)):
        pid = system.sh(f"ss -Hltnp 'sport = :{port}' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2").stdout.strip()
        assert f"dramatiq-worker@{n}.service" in system.sh(f"cat /proc/{pid}/cgroup").stdout
    clashes = system.sh("journalctl -u 'dramatiq-worker@*' -o cat --no-pager | grep -c 'Address already in use' || true").stdout.strip()
    assert clashes == "0"


def test_dashboard_charts_the_history_of_an_autoscaled_burst(system: System) -> None:
    need(shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)")
    # MAX_QUEUE_WAIT=20: the burst (90 thread-seconds) must drain in ~10 s, which takes the whole MAX of 4;
    # with the default 60 s the work-based policy rightly drains it with fewer.
    system.configure(MAX_PROCESSES="4", MAX_QUEUE_WAIT="20")
    began = time.time()
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: system.active() == ["dramatiq-worker@1.service"], 30, "the timer to start one worker")
    system.send(60, 1.5)
    wait_until(lambda: len(system.active()) == 4, 30, "the fleet to grow to MAX_PROCESSES=4")
    wait_until(lambda: system.redis()["count"] == 60, 60, "the burst to be processed")

    def history(since: str = f"@{began}") -> list[dict]:
        return json.loads(system.dramactl("history", "--json", "--since", since).stdout)

    # The shrinking tick writes its entry once its stop jobs are done (the workers drained).
    wait_until(lambda: sum(e["stopped"] for e in history()) == 3, 90, "the fleet to shrink back to 1, in the history")
    # A oneshot tick is "activating" while it runs: wait for the last one to finish.
    system.sh("systemctl stop dramactl.timer && while [ \"$(systemctl is-active dramactl.service)\" = activating ]; do sleep 0.2; done")
    hist = history()
    ticks = [e for e in hist if e["kind"] == "tick"]
    assert sum(e["started"] for e in hist) == 4 and sum(e["stopped"] for e in hist) == 3
    system.sh(f"systemd-run --unit=dramactl-dashboard-chart --property=Environment=DASHBOARD_PORT=8081 {DRAMACTL} dashboard")
    try:
        wait_until(lambda: system.sh("curl -sf http://127.0.0.1:8081/status.json", check=False).returncode == 0, 20, "the dashboard to serve")
        dom = system.sh(" ".join(CHROMIUM + ["--dump-dom", "http://127.0.0.1:8081/"]), timeout=60).stdout
        svg = ET.fromstring(re.search(r"<svg id=\"chart\".*?</svg>", dom, re.S).group(0))
        by_class: dict[str, list] = {}
        for el in svg.iter():
            by_class.setdefault(el.get("class"), []).append(el)
        shown = history("-3h")  # the chart's window: earlier tests' ticks, too
        assert len(by_class["backlog"][0].get("points").split()) == len(shown)  # one point per tick or manual change
        assert len(by_class["mark-up"]) == sum(1 for e in shown if e["started"])
        assert len(by_class["mark-down"]) == sum(1 for e in shown if e["stopped"])
        assert max(e["backlog"] for e in ticks) > 0 and {"fleet", "target"} <= set(by_class)
        system.sh(" ".join(CHROMIUM + ["--screenshot=/root/dashboard-chart.png", "--window-size=1200,1000", "--hide-scrollbars", "http://127.0.0.1:8081/"]), timeout=60)
        shot = system.c.root / "root/dashboard-chart.png"  # the container's file, through the overlay
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        keep = os.environ.get("DRAMACTL_CHART_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, REPO / keep)
    finally:
        system.sh("systemctl stop dramactl-dashboard-chart", check=False)
