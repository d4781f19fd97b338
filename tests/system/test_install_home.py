"""A venv and an app under /home, as many teams deploy (`/home/deploy/venv`), end to end in the booted systemd.

The case from the field: `dramactl install` and `check` said ok, then every tick failed 203/EXEC:
dramactl.service has ProtectHome=yes, which makes /home inaccessible, so the BindReadOnlyPaths= that install wrote
for the venv could not be reached. install now puts ProtectHome=tmpfs beside those binds (an empty read-only
/home holding only them). A home the service users cannot search (mode 0700) is refused in one line before
anything changes.
"""

from __future__ import annotations

import re
import sys
import sysconfig

import pytest

from tests.system.conftest import BASE_SETTINGS, REPO, System, wait_until
from tests.system.test_debian import exposure
from tests.system.test_install_reach import snapshot

pytestmark = pytest.mark.system

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
HOME = "/home/deploy"
VENV = f"{HOME}/venv"
APP = f"{HOME}/app"


def make_home_install(system: System) -> None:
    """A venv under /home made with /usr/bin/python3 that imports dramactl (this checkout) and Dramatiq, with its
    own `dramactl` entry point, and the system tests' app copied under /home."""
    system.sh(
        "set -e; "
        f"mkdir -p {HOME} {APP}; chmod 0755 /home {HOME}; "
        f"/usr/bin/python3 -m venv --without-pip {VENV}; "
        f"printf '%s\\n' 'import site; site.addsitedir(\"{sysconfig.get_path('purelib')}\")' '{REPO}' "
        f"> {VENV}/lib/python{VERSION}/site-packages/dramactl-test.pth; "
        f"printf '%s\\n' '#!{VENV}/bin/python' 'from dramactl.cli import main' 'main()' > {VENV}/bin/dramactl; "
        f"chmod 0755 {VENV}/bin/dramactl; cp {REPO}/tests/system/sysapp.py {APP}/; chmod -R a+rX {HOME}"
    )
    env = {**BASE_SETTINGS, "WORKER_DIRECTORY": APP, "MAX_PROCESSES": "2"}
    text = "".join(f"{k}={v}\n" for k, v in env.items())
    system.c.run(["sh", "-c", f"cat > /etc/dramactl/dramactl.env <<'EOF'\n{text}EOF"])


def test_a_venv_and_app_under_home_run_end_to_end(system: System) -> None:
    make_home_install(system)
    try:
        install = system.sh(f"{VENV}/bin/dramactl install")
        assert "50-code-paths.conf" in install.stdout, install.stdout
        assert system.sh("readlink -f /usr/local/bin/dramactl").stdout.strip() == f"{VENV}/bin/dramactl"
        check = system.sh(f"{VENV}/bin/dramactl check")
        assert "dramatiq" in check.stdout, check.stdout

        # The real timer runs the tick from /home: it succeeds and starts MIN_PROCESSES=1 worker from /home.
        system.sh("systemctl start dramactl.timer")
        wait_until(lambda: system.active() == ["dramatiq-worker@1.service"], 30, "the tick to start @1 from the venv under /home")
        wait_until(lambda: system.sh("systemctl show -P Result dramactl.service").stdout.strip() == "success"
                   and "queues " in system.c.journal("dramactl.service"), 20, "a tick that succeeded")
        assert "203/EXEC" not in system.sh("journalctl --no-pager -o cat -u dramactl.service -u 'dramatiq-worker@*'").stdout
        worker_cwd = system.sh("readlink /proc/$(systemctl show -P MainPID dramatiq-worker@1)/cwd").stdout.strip()
        assert worker_cwd == APP, worker_cwd
        # Work sent grows the fleet and is processed by workers run from /home.
        system.send(20, 1.0)
        wait_until(lambda: system.redis()["count"] >= 20, 60, "the 20 messages processed")
        r = system.redis()
        assert (r["processed"], r["duplicates"]) == (20, 0), r
        # What made it work: an empty read-only /home holding only the binds of the venv and the app.
        for unit in ("dramactl.service", "dramatiq-worker@.service"):
            drop_in = system.sh(f"cat /etc/systemd/system/{unit}.d/50-code-paths.conf").stdout
            assert "ProtectHome=tmpfs\n" in drop_in and re.search(rf"^BindReadOnlyPaths=.*{APP}.*$", drop_in, re.M), drop_in
            assert VENV in drop_in, drop_in
        # The hardening targets hold with the drop-ins loaded (tests/system/test_hardening.py's, for the shipped units).
        scores = {unit: exposure(system.c, unit) for unit in ("dramactl.service", "dramatiq-worker@1.service")}
        print(f"\n[home] systemd-analyze security with ProtectHome=tmpfs + BindReadOnlyPaths=: {scores}", file=sys.stderr)
        assert scores["dramactl.service"] <= 2.0 and scores["dramatiq-worker@1.service"] <= 5.0, scores
    finally:
        system.sh("systemctl stop dramactl.timer", check=False)
        system.reset()
        system.sh(f"rm -rf {HOME}", check=False)
        system.configure()  # back to the session's install; its install removes the stale code-paths drop-ins
    # The session's install leaves no trace of /home: no ProtectHome=tmpfs, no bind of it (a checkout under
    # /var/tmp, as CI's is, still gets its own code-paths drop-in: PrivateTmp= hides /var/tmp).
    for unit in ("dramactl.service", "dramatiq-worker@.service"):
        left = system.sh(f"cat /etc/systemd/system/{unit}.d/50-code-paths.conf", check=False).stdout
        assert "ProtectHome=tmpfs" not in left and HOME not in left, left


def test_a_home_the_service_users_cannot_search_is_refused_in_one_line_before_any_change(system: System) -> None:
    make_home_install(system)
    try:
        system.sh(f"chmod 0700 {HOME}")
        before = snapshot(system)
        for command in ("install", "check"):
            run = system.sh(f"{VENV}/bin/dramactl {command}", check=False)
            assert run.returncode == 2, run
            lines = run.stderr.splitlines()
            print(f"\n[home] {command} with {HOME} 0700: exit {run.returncode}: {run.stderr.strip()}", file=sys.stderr)
            assert len(lines) == 1 and lines[0].startswith("dramactl: "), run.stderr
            assert "is not reachable by user" in lines[0] and f"({HOME} is mode 0700)" in lines[0], lines
            assert "make the venv under /opt" in lines[0] or "put the app where" in lines[0], lines
        assert snapshot(system) == before
    finally:
        system.sh(f"rm -rf {HOME}", check=False)
        system.configure()
