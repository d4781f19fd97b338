"""The dashboard inside the booted systemd: real instances and real queues, seen by headless Chromium."""

from __future__ import annotations

import os
import shutil

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
    system.send(30, 30.0)
    # A transient unit: systemd keeps the server running and stops it for us.
    system.sh(f"systemd-run --unit=dramactl-dashboard-test --property=Environment=DASHBOARD_PORT=8080 {DRAMACTL} dashboard")
    try:
        wait_until(lambda: system.sh("curl -sf http://127.0.0.1:8080/status.json", check=False).returncode == 0, 20, "the dashboard to serve")
        wait_until(lambda: system.status()["queues"][0]["in_flight"] == 8, 20, "2 workers x (2 threads + 2 prefetched) in flight")
        (q,) = system.status()["queues"]  # 30 s tasks: these figures hold while the page loads
        dom = system.sh(" ".join(CHROMIUM + ["--dump-dom", "http://127.0.0.1:8080/"]), timeout=60).stdout
        for n in (1, 2):
            assert f"dramatiq-worker@{n}.service" in dom
        assert ">sys<" in dom
        assert (q["ready"], q["backlog"]) == (22, 30)
        for figure in (q["ready"], q["in_flight"], q["backlog"]):
            assert f">{figure}<" in dom
        keep = os.environ.get("DRAMACTL_DASHBOARD_SCREENSHOT")
        if keep:
            shot = str((REPO / keep).resolve())
            system.sh(" ".join(CHROMIUM + [f"--screenshot={shot}", "--window-size=1200,800", "--hide-scrollbars", "http://127.0.0.1:8080/"]), timeout=60)
    finally:
        system.sh("systemctl stop dramactl-dashboard-test", check=False)
