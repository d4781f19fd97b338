"""The Debian package, end to end: build, lint, install in a booted Debian 12, run, remove, purge.

Builds ``dramactl_<version>_all.deb`` with ``packaging/build-deb.sh``, then installs
it with apt inside a systemd container of its own (not the session container of the
other system tests: this one installs system-wide and ends purged). The container
has no network, so the python3-* runtime dependencies must be installed on the host
(its root is the overlay's lower layer); the scaler then runs on Debian's
/usr/bin/python3 with Debian's modules. The workers run the test venv's Dramatiq as
the application's own (Debian has no python3-dramatiq), as an operator's app would.

The tests run in file order and share the container: installed -> running ->
polkit limits -> removed -> purged.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import need
from tests.system.conftest import wait_until
from tests.system.harness import Container, machine_name, missing_requirements

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
APP_PYTHON = str(VENV / "bin" / "python")
APP_DIR = str(REPO / "tests" / "system")
DEB_DIR = "/srv/dramactl-deb"  # inside the container, readable by apt's _apt user
SITE = "/usr/lib/python3/dist-packages/"
HIDDEN_PREFIXES = ("/tmp/", "/var/tmp/", "/home/", "/run/user/")

SETTINGS = {
    # The application's own Dramatiq, by full path: the package does not bring one.
    "DRAMATIQ_COMMAND": f"{VENV}/bin/dramatiq sysapp",
    "WORKER_DIRECTORY": APP_DIR,
    "DRAMATIQ_QUEUE_NAME": "sys",
    "MIN_PROCESSES": "1",
    "MAX_PROCESSES": "3",
    "CHECK_INTERVAL": "3",
    "WORKER_THREADS": "2",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "10",
    "SCALE_DOWN_STABILIZATION": "30",
}
UNITS = ("dramactl.service", "dramactl.timer", "dramatiq-worker@.service", "dramatiq-workers.target")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The .deb and the build script's output (lintian's included)."""
    for tool in ("dpkg-buildpackage", "dh", "lintian", "help2man"):
        need(shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is not None, f"{tool} is missing (see packaging/README-debian.md)")
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    proc = subprocess.run(["sh", str(REPO / "packaging" / "build-deb.sh"), str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    print(f"\n[deb] build + lintian in {time.monotonic() - started:.1f}s\n{proc.stdout}", file=sys.stderr)
    assert proc.returncode == 0, f"packaging/build-deb.sh failed:\n{output}"
    debs = sorted(out.glob("dramactl_*_all.deb"))
    assert len(debs) == 1, f"expected one dramactl_<version>_all.deb in {out}: {debs}\n{output}"
    assert not (REPO / "debian").exists(), "the build left debian/ in the checkout"
    return {"deb": debs[0], "output": proc.stdout}


@pytest.fixture(scope="module")
def box(built: dict) -> Iterator[Container]:
    """A booted Debian 12 of our own with the package installed by apt (output in .install_log)."""
    why = missing_requirements()
    need(why is None, why or "")
    missing = [p for p in ("python3-redis", "python3-pystemd", "python3-click", "python3-dotenv", "python3-systemd", "polkitd")
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout != "install ok installed"]
    need(not missing, f"install {' '.join(missing)} on the host: the offline container resolves the package's Depends from the host's installed set")
    binds = [str(REPO)] + ([str(VENV)] if not str(VENV).startswith(str(REPO)) else [])
    c = Container(binds, name=machine_name("dramactl") + "-deb")
    try:
        c.boot()
        # Nothing of a pip install may shadow the package (systemd's PATH has /usr/local first).
        c.run("rm -rf /usr/local/bin/dramactl /etc/systemd/system/dramactl.* /etc/systemd/system/dramatiq-worker*", check=False)
        c.run("rm -f /var/lib/man-db/auto-update")  # skip man-db's trigger: seconds we do not need
        # A container-image host has Docker's policy-rc.d ("exit 101": never start or
        # stop services from maintainer scripts); a stock Debian 12 has none, and the
        # package's start/stop handling is what this test is about.
        c.run("rm -f /usr/sbin/policy-rc.d")
        target = c.root / DEB_DIR.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        shutil.copy2(built["deb"], target / built["deb"].name)
        started = time.monotonic()
        proc = c.run(["apt-get", "install", "-y", "--no-install-recommends", f"./{built['deb'].name}"],
                     env={"DEBIAN_FRONTEND": "noninteractive"}, cwd=DEB_DIR, timeout=180)
        c.install_log = proc.stdout + proc.stderr  # type: ignore[attr-defined]
        c.deb = f"{DEB_DIR}/{built['deb'].name}"  # type: ignore[attr-defined]
        print(f"[deb] booted in {c.boot_seconds:.1f}s, apt install in {time.monotonic() - started:.1f}s", file=sys.stderr)
        yield c
    finally:
        c.shutdown()


# -- helpers ---------------------------------------------------------------------


def sh(c: Container, cmd: str, **kw) -> str:
    return c.run(cmd, **kw).stdout.strip()


def uid(c: Container, user: str) -> int:
    return int(sh(c, f"id -u {user}"))


def workers(c: Container, states: tuple[str, ...] = ("active",)) -> dict[str, int]:
    """Worker instances in one of ``states`` -> MainPID."""
    out = sh(c, "systemctl list-units --all --plain --no-legend 'dramatiq-worker@*.service'", check=False)
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in states:
            found[parts[0]] = int(sh(c, f"systemctl show -p MainPID --value {parts[0]}") or 0)
    return found


def running(c: Container) -> list[str]:
    """Worker instances that are active/running (UNIT LOAD ACTIVE SUB ...)."""
    rows = [l.split() for l in sh(c, "systemctl list-units --plain --no-legend 'dramatiq-worker@*.service'", check=False).splitlines()]
    return sorted(r[0] for r in rows if len(r) >= 4 and r[2:4] == ["active", "running"])


def send(c: Container, count: int, seconds: float, prefix: str) -> None:
    """Queue work the way the application would: its own Python, its own module."""
    code = f"import sysapp, json\nfor i in range({count}): sysapp.work.send('{prefix}%d' % i, {seconds})\nprint(json.dumps(True))"
    c.python(APP_PYTHON, code, cwd=APP_DIR)


def counter(c: Container, key: str) -> int:
    return int(sh(c, f"redis-cli get {key}") or 0)


def exposure(c: Container, unit: str, offline: bool = False) -> float:
    out = c.run(["systemd-analyze", "security", "--no-pager", *(["--offline=yes"] if offline else []), unit], check=False).stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m, f"no score for {unit}:\n{out[-2000:]}"
    return float(m.group(1))


# -- tests, in order --------------------------------------------------------------


def test_lintian_has_no_errors_and_no_unexplained_warnings(built: dict) -> None:
    out = built["output"]
    tags = [l.split(": ", 1)[1] for l in out.splitlines() if l.startswith("lintian: ") and re.match(r"lintian: [EWIO]: ", l)]
    assert not [t for t in tags if t.startswith(("E:", "W:"))], out
    assert re.search(r"lintian: 0 errors, 0 warnings", out), out
    # Every overridden tag has its reason above it in the override file.
    overrides = (REPO / "packaging/debian/dramactl.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line.strip() and not line.startswith("#"):
            assert i > 0 and overrides[i - 1].startswith("#"), f"override without a reason: {line}"


def test_install_creates_users_and_leaves_the_timer_off(box: Container) -> None:
    log = box.install_log  # type: ignore[attr-defined]
    assert "systemctl enable --now dramactl.timer" in log and "DRAMATIQ_COMMAND" in log, log
    for user in ("dramactl", "dramatiq"):
        name, _pw, u, _g, _gecos, _home, shell = sh(box, f"getent passwd {user}").split(":")
        assert 0 < int(u) < 1000 and shell == "/usr/sbin/nologin", (user, u, shell)
        assert sh(box, f"id -gn {user}") == user
    for unit in UNITS:
        loaded = unit.replace("@.", "@1.")
        assert sh(box, f"systemctl show -p FragmentPath --value {loaded}") == f"/lib/systemd/system/{unit}"
    assert sh(box, "systemctl is-enabled dramactl.timer", check=False) == "disabled"
    for unit in ("dramactl.timer", "dramactl.service", "dramatiq-workers.target"):
        assert sh(box, f"systemctl is-active {unit}", check=False) == "inactive", unit
    assert not workers(box, ("active", "activating", "deactivating"))
    assert sh(box, "stat -c '%a %U %G' /etc/dramactl/dramactl.env") == "640 root dramactl"
    assert "/etc/dramactl/dramactl.env" in sh(box, "dpkg-query --showformat='${Conffiles}' -W dramactl")
    assert sh(box, "test -f /usr/share/polkit-1/rules.d/50-dramactl.rules && echo yes") == "yes"


def test_cli_runs_on_debians_python_and_modules(box: Container) -> None:
    assert sh(box, "command -v dramactl") == "/usr/bin/dramactl"
    assert sh(box, "head -n 1 /usr/bin/dramactl") == "#!/usr/bin/python3"
    code = (
        "import json, importlib.metadata as md, dramactl.cli, dramactl.scaler, dramactl.fleet\n"
        "import redis, pystemd, click, dotenv, systemd.journal\n"
        "mods = {m.__name__: m.__file__ for m in (redis, pystemd, click, dotenv, systemd.journal, dramactl.cli)}\n"
        "vers = {d: md.version(d) for d in ('redis', 'pystemd', 'click', 'python-dotenv', 'systemd-python')}\n"
        "print(json.dumps({'mods': mods, 'vers': vers}))"
    )
    got = box.python("/usr/bin/python3", code, user="dramactl")
    assert all(path.startswith(SITE) for path in got["mods"].values()), got  # type: ignore[index]
    print(f"\n[deb] scaler modules: {got['vers']}", file=sys.stderr)  # type: ignore[index]
    assert box.run(["dramactl", "--version"]).stdout.strip().endswith(built_version(box))


def test_shell_completion_is_installed_and_completes(box: Container) -> None:
    """click's own completion scripts, in the packaged places; bash sourcing the packaged script completes
    commands and options from the installed dramactl (Debian's python3-click)."""
    listed = sh(box, "dpkg -L dramactl").splitlines()
    for path in ("/usr/share/bash-completion/completions/dramactl", "/usr/share/zsh/vendor-completions/_dramactl",
                 "/usr/share/fish/vendor_completions.d/dramactl.fish"):
        assert path in listed, path
    code = ('source /usr/share/bash-completion/completions/dramactl; COMP_WORDS=(dramactl scale-to --th); COMP_CWORD=2; '
            '_dramactl_completion dramactl; printf "%s\\n" "${COMPREPLY[@]}"')
    assert sh(box, f"bash --norc -c '{code}'") == "--threads"


def built_version(box: Container) -> str:
    return sh(box, "dpkg-query -W -f='${Version}' dramactl").split("-")[0]


def test_units_are_hardened(box: Container) -> None:
    # The shipped units as installed (no drop-ins yet): the loaded units, and the
    # unit files read offline (what the README quotes).
    for offline in (False, True):
        scores = {unit: exposure(box, unit, offline) for unit in ("dramactl.service", "dramatiq-worker@1.service")}
        print(f"\n[deb] systemd-analyze security{' --offline=yes' if offline else ''}: {scores}", file=sys.stderr)
        assert scores["dramactl.service"] <= 2.0 and scores["dramatiq-worker@1.service"] <= 5.0, scores


def test_fleet_scales_on_backlog_as_unprivileged_users(box: Container) -> None:
    text = "".join(f"{k}={v}\n" for k, v in SETTINGS.items())
    box.run(["sh", "-c", f"cat > /etc/dramactl/dramactl.env <<'EOF'\n{text}EOF"])  # keeps 0640 root:dramactl
    # The operator's part for an app living under /var/tmp (a CI checkout, the test
    # venv): PrivateTmp= hides it from both units, so show it again, read-only.
    # (`dramactl configure` does this for WORKER_DIRECTORY; the venv is the admin's.)
    hidden = sorted({p for p in (str(VENV), APP_DIR) if (p + "/").startswith(HIDDEN_PREFIXES)})
    if hidden:
        for unit in ("dramactl.service", "dramatiq-worker@.service"):
            box.run(["sh", "-c", f"mkdir -p /etc/systemd/system/{unit}.d && printf '[Service]\\nBindReadOnlyPaths=%s\\n' '{' '.join(hidden)}' > /etc/systemd/system/{unit}.d/60-app.conf"])
    configured = sh(box, "dramactl configure")
    assert "50-check-interval.conf" in configured, configured
    box.run("systemctl daemon-reload")
    # CHECK_INTERVAL=3 reached the timer through configure's drop-in.
    timers = sh(box, "systemctl show -p TimersMonotonic --value dramactl.timer")
    assert "OnUnitActiveUSec=3s" in timers and timers.count("OnUnitActiveUSec") == 1, timers
    check = sh(box, "dramactl check")
    assert f"{VENV}/bin/dramatiq" in check, check

    box.run("systemctl start dramactl.timer")
    wait_until(lambda: running(box), 60, "the first worker (MIN_PROCESSES=1)")
    send(box, 40, 1.0, "deb")
    wait_until(lambda: len(running(box)) >= 2, 60, "the fleet to grow on a backlog of 40 x 1s")
    wait_until(lambda: counter(box, "sys:count") >= 5, 60, "workers processing the app's messages")

    # The scaler ran as dramactl: every journal line from dramactl.service's process.
    lines = [json.loads(l) for l in sh(box, "journalctl -o json _SYSTEMD_UNIT=dramactl.service").splitlines()]
    uids = {int(l["_UID"]) for l in lines}
    assert uids == {uid(box, "dramactl")}, uids
    assert sh(box, "systemctl show -p User --value dramactl.service") == "dramactl"
    # Workers (Dramatiq's parent and its worker process) run as dramatiq, from the app's venv.
    for unit, pid in workers(box).items():
        procs = sh(box, f"ps -ww -o user=,args= --pid {pid} --ppid {pid}").splitlines()
        assert procs and all(p.split()[0] == "dramatiq" for p in procs), (unit, procs)
        assert any(f"{VENV}/bin/" in p for p in procs), (unit, procs)
    app_procs = [l.split(None, 1) for l in sh(box, "ps -eww -o user=,args=").splitlines() if f"{VENV}/bin/dramatiq" in l and "ps -eww" not in l]
    assert app_procs and {user for user, _ in app_procs} == {"dramatiq"}, app_procs
    failed = sh(box, "systemctl list-units --failed --plain --no-legend 'dramactl*' 'dramatiq-worker@*'", check=False)
    assert failed == "", failed


FLEET_PROBE = """
import json
import os
from dramactl.fleet import Fleet, FleetError

out = {}
def attempt(name, fn):
    try:
        r = fn()
        out[name] = r[0].result if isinstance(r, list) else getattr(r, "result", "allowed")
    except FleetError as exc:
        out[name] = "FleetError: " + str(exc)

with Fleet() as fleet:
    attempt("start worker@5", lambda: fleet.start([5], timeout=60))
    attempt("stop worker@5", lambda: fleet.stop([5], timeout=60))
    attempt("stop redis-server.service", lambda: fleet.stop_unit("redis-server.service"))
    attempt("start dramactl.service", lambda: fleet.start_unit("dramactl.service"))
    attempt("start dramatiq-workers.target", lambda: fleet.start_unit("dramatiq-workers.target"))
    attempt("daemon-reload", fleet.reload)
print(json.dumps(out))
"""


def test_dramactl_user_may_manage_workers_and_nothing_else(box: Container) -> None:
    # The timer would stop worker@5 as surplus (MAX_PROCESSES=3): hold it meanwhile.
    box.run("systemctl stop dramactl.timer")
    wait_until(lambda: sh(box, "systemctl is-active dramactl.service", check=False) == "inactive", 60, "the last tick to end")
    got = box.python("/usr/bin/python3", FLEET_PROBE, user="dramactl")
    assert got["start worker@5"] == "done" and got["stop worker@5"] == "done", got  # type: ignore[index]
    for refused in ("stop redis-server.service", "start dramactl.service", "start dramatiq-workers.target", "daemon-reload"):
        assert str(got[refused]).startswith("FleetError"), got  # type: ignore[index]
    assert sh(box, "systemctl is-active redis-server.service") == "active"
    assert sh(box, "systemctl is-active dramatiq-worker@5.service", check=False) == "inactive"


def test_upgrade_leaves_the_running_fleet_alone(box: Container) -> None:
    """Reinstalling (an upgrade to the same version) neither drains nor restarts workers."""
    box.run("systemctl start dramactl.timer")
    wait_until(lambda: running(box), 60, "a running worker before the upgrade")
    before = workers(box)
    proc = box.run(["dpkg", "-i", box.deb], env={"DEBIAN_FRONTEND": "noninteractive"})  # type: ignore[attr-defined]
    assert "neither enabled nor started" not in proc.stdout  # the first-install note only
    assert sh(box, "systemctl is-active dramactl.timer") == "active"
    assert sh(box, "systemctl is-enabled dramactl.timer", check=False) == "disabled"  # started by hand, not enabled
    after = workers(box)
    assert all(after.get(unit) == pid for unit, pid in before.items()), (before, after)
    assert sh(box, "stat -c '%a %U %G' /etc/dramactl/dramactl.env") == "640 root dramactl"


def test_remove_stops_timer_and_every_worker(box: Container) -> None:
    box.run("systemctl start dramactl.timer")
    send(box, 30, 1.0, "rm")
    wait_until(lambda: len(running(box)) >= 2, 60, "a busy fleet of two or more before removal")
    before = running(box)
    started = time.monotonic()
    # prerm stops timer, scaler and target in one transaction; PartOf= carries the
    # stop to every instance. With the instances ordered After= the target, the
    # target's stop job waits for their drain, so apt returns only when they are gone.
    ordered = "dramatiq-workers.target" in sh(box, "systemctl show -p After --value dramatiq-worker@1.service")
    box.run(["apt-get", "remove", "-y", "dramactl"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=180)
    print(f"\n[deb] apt remove with {len(before)} busy workers took {time.monotonic() - started:.1f}s"
          f" (worker After=dramatiq-workers.target: {ordered})", file=sys.stderr)
    for unit in ("dramactl.timer", "dramatiq-workers.target"):
        assert sh(box, f"systemctl is-active {unit}", check=False) == "inactive", sh(box, f"journalctl --no-pager -n 30 -u {unit}")
    # A tick caught mid-step is killed by the stop: "failed (Result: signal)" for a
    # oneshot unless the unit counts SIGTERM as success (requested: SuccessExitStatus=SIGTERM).
    tick = dict(l.split("=", 1) for l in sh(box, "systemctl show -p ActiveState -p Result dramactl.service").splitlines())
    assert (tick["ActiveState"], tick["Result"]) in (("inactive", "success"), ("failed", "signal")), tick
    if ordered:
        assert not workers(box, ("active", "activating", "deactivating", "reloading")), sh(box, "systemctl list-units --all 'dramatiq-worker@*'")
    else:
        # Without that ordering the stop jobs are queued but apt does not wait for the drain.
        wait_until(lambda: not workers(box, ("active", "activating", "deactivating", "reloading")), 60, "every worker to drain and stop")
    assert sh(box, "pgrep -u dramatiq", check=False) == "" and sh(box, "pgrep -u dramactl", check=False) == ""
    time.sleep(4)  # longer than CHECK_INTERVAL: nothing comes back
    assert not workers(box, ("active", "activating"))
    # Removed, not purged: users, settings and drop-ins stay.
    assert not Path(box.root, "usr/bin/dramactl").exists()
    assert sh(box, "getent passwd dramactl dramatiq | wc -l") == "2"
    assert sh(box, "stat -c '%a %U %G' /etc/dramactl/dramactl.env") == "640 root dramactl"


def test_purge_removes_config_state_and_users(box: Container) -> None:
    box.run(["apt-get", "purge", "-y", "dramactl"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=120)
    assert sh(box, "dpkg-query -W -f='${Status}' dramactl", check=False) in ("", "unknown ok not-installed")
    for path in ("/etc/dramactl", "/var/lib/dramactl", "/etc/systemd/system/dramactl.timer.d/50-check-interval.conf",
                 "/etc/systemd/system/dramatiq-worker@.service.d/50-stop-timeout.conf"):
        assert sh(box, f"test -e {path} && echo present || echo gone") == "gone", path
    for name in ("dramactl", "dramatiq"):
        assert box.run(["getent", "passwd", name], check=False).returncode == 2, name
        assert box.run(["getent", "group", name], check=False).returncode == 2, name
    assert "/etc/dramactl/dramactl.env" not in sh(box, "dpkg-statoverride --list", check=False)
    assert sh(box, "test -e /usr/share/polkit-1/rules.d/50-dramactl.rules && echo present || echo gone") == "gone"
