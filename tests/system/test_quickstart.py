"""README's first command, from a fresh clone, in its own booted systemd.

This container shares the host's network (pip fetches from the package registry),
so it is booted apart from the session container.
"""

from __future__ import annotations

import json
import subprocess
from typing import Iterator

import pytest

from tests.conftest import need
from tests.system.conftest import REPO, wait_until
from tests.system.harness import Container, machine_name, missing_requirements

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Container, str]]:
    why = missing_requirements()
    need(why is None, why or "")
    need(subprocess.run(["ss", "-ltn", "sport = :6379"], capture_output=True, text=True).stdout.count("LISTEN") == 0, "port 6379 is taken on the host")
    c = Container([str(REPO)], name=machine_name("dramactl-quickstart"), private_network=False)
    try:
        c.boot()
        clone = "/srv/dramactl"
        c.run(["git", "clone", "-q", str(REPO), clone])
        yield c, clone
    finally:
        c.shutdown()


def test_setup_from_a_fresh_clone_runs_the_autoscaled_example(fresh: tuple[Container, str]) -> None:
    c, clone = fresh
    out = c.run([f"{clone}/manage_dramatiq.sh", "setup"], timeout=900, cwd=clone)
    assert "The autoscaled fleet is running the example app" in out.stdout, out.stdout + out.stderr
    dramactl = "/opt/dramactl/venv/bin/dramactl"
    assert c.run("systemctl is-enabled dramactl.timer").stdout.strip() == "enabled"
    # The first tick (OnActiveSec=1s) brings the fleet to MIN_PROCESSES=1.
    wait_until(lambda: "active" == c.run("systemctl is-active dramatiq-worker@1", check=False).stdout.strip(), 30, "dramatiq-worker@1 running")
    user = c.run("ps -o user= -p $(systemctl show -P MainPID dramatiq-worker@1)").stdout.strip()
    assert user == "dramatiq"

    # A burst, with ticks every 5 s: the example fleet grows and drains it.
    c.run(["sh", "-c", "echo CHECK_INTERVAL=5 >> /etc/dramactl/dramactl.env"])
    c.run([dramactl, "configure"])
    # 2 s each: one 8-thread worker would take 30 s, several ticks to see the backlog even on a slow host.
    c.run([f"{clone}/manage_dramatiq.sh", "load", "120", "--seconds", "2"], cwd=clone)
    wait_until(
        lambda: len(json.loads(c.run([dramactl, "status", "--json"]).stdout)["instances"]) > 1, 60, "the fleet to grow"
    )
    wait_until(lambda: json.loads(c.run([dramactl, "status", "--json"]).stdout)["totals"]["backlog"] == 0, 120, "the burst drained")
    processed = c.run("redis-cli get dramactl:example:processed:process_email_task").stdout.strip()
    assert processed == "120"
    status = c.run([f"{clone}/manage_dramatiq.sh", "status"], cwd=clone).stdout
    assert "email_processing" in status and "dramatiq-worker@1.service" in status
