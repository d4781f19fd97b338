"""The dashboard inside the booted systemd: real instances and real queues, seen by headless Chromium."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.conftest import need
from tests.system.conftest import DRAMACTL, REPO, System, wait_until

pytestmark = pytest.mark.system

CHROMIUM = [
    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir=/root/chromium-profile",
]


def test_dashboard_shows_instances_and_queues(system: System) -> None:
    need(shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)")
    system.dramactl("scale-to", "2")
    # Work the hook reports (done, busy seconds) and two ticks that keep it in their history: the default
    # policy's view is then by work (paused by scale-to, the ticks change nothing).
    system.send(8, 1.2, prefix="w")  # a second or more: each worker then fetches only for its threads (the hook's gate)
    wait_until(lambda: system.redis()["count"] >= 8, 30, "8 short messages processed")
    system.dramactl("tick")
    time.sleep(3)
    system.send(30, 30.0)
    system.dramactl("tick")
    # A transient unit: systemd keeps the server running and stops it for us.
    system.sh(f"systemd-run --unit=dramactl-dashboard-test --property=Environment=DASHBOARD_PORT=8080 {DRAMACTL} dashboard")
    try:
        wait_until(lambda: system.sh("curl -sf http://127.0.0.1:8080/status.json", check=False).returncode == 0, 20, "the dashboard to serve")
        wait_until(lambda: system.status()["queues"][0]["in_flight"] == 4, 20, "2 workers x 2 threads in flight (the rest waits in Redis)")
        (q,) = system.status()["queues"]  # 30 s tasks: these figures hold while the page loads
        dom = system.sh(" ".join(CHROMIUM + ["--dump-dom", "http://127.0.0.1:8080/"]), timeout=60).stdout
        for n in (1, 2):
            assert f"dramatiq-worker@{n}.service" in dom
        assert ">sys<" in dom
        assert (q["ready"], q["backlog"]) == (26, 30)
        for figure in (q["ready"], q["in_flight"], q["backlog"]):
            assert f">{figure}<" in dom
        # The default policy's own view, measured from the workers' reports; not the step rule's thresholds.
        view = system.status()["policy"]
        assert (view["name"], view["by"]) == ("default", "work") and 1.2 <= view["service_time"] < 1.3, view
        assert '<div id="policy"><dt>Policy</dt><dd>default, by work</dd></div>' in dom
        assert f'<div id="service"><dt>Service time</dt><dd>{view["service_time"]:.2f} s</dd></div>' in dom
        assert "Scale at backlog" not in dom
        keep = os.environ.get("DRAMACTL_DASHBOARD_SCREENSHOT")
        if keep:
            shot = str((REPO / keep).resolve())
            system.sh(" ".join(CHROMIUM + [f"--screenshot={shot}", "--window-size=1200,800", "--hide-scrollbars", "http://127.0.0.1:8080/"]), timeout=60)
    finally:
        system.sh("systemctl stop dramactl-dashboard-test", check=False)
