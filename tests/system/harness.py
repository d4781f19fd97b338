"""A real systemd, booted in a systemd-nspawn container over an overlay of the host root.

The host has no systemd as PID 1 and no system bus; the container does. The overlay
keeps every write (units, users, /etc) out of the host. Binds the checkout and the
venv at their own paths so the same interpreter and code run inside.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


class HarnessError(RuntimeError):
    """The container could not be booted or used."""


def missing_requirements() -> str | None:
    """Why this host cannot run the harness, or None when it can."""
    if os.geteuid() != 0:
        return "the systemd harness needs root (it mounts an overlay and runs systemd-nspawn)"
    for tool in ("systemd-nspawn", "nsenter", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install systemd-container util-linux redis-server)"
    return None


def machine_name(default: str) -> str:
    """A container name no other run on this host uses: DRAMACTL_TEST_MACHINE (two checkouts on
    one host) or the default, with pytest-xdist's worker id when the suite runs in parallel."""
    base = os.environ.get("DRAMACTL_TEST_MACHINE") or default
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{base}-{worker}" if worker else base


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _tracking_cgroups() -> list[Path]:
    """This process's cgroup, as a directory, in each hierarchy systemd tracks units in: the
    cgroup2 one, and name=systemd on a legacy or hybrid host."""
    mounts: dict[str, tuple[str, str]] = {}  # the /proc/self/cgroup controller field -> (mount root, mount point)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, (fstype, _source, options) = left.split(), right.split()[:3]
        if fstype == "cgroup2":
            mounts.setdefault("", (fields[3], fields[4]))
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            mounts.setdefault("name=systemd", (fields[3], fields[4]))
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if controllers in mounts:
            root, point = mounts[controllers]
            if root != "/" and (path == root or path.startswith(root + "/")):
                path = path[len(root):]
            dirs.append(Path(point) / path.lstrip("/"))
    return dirs


def _remove_cgroup(top: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup and the ones under it, deepest first, once their last process has gone."""
    deadline = time.monotonic() + timeout
    while top.exists():
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
        if time.monotonic() > deadline:
            print(f"[harness] could not remove the container's cgroup {top}: processes are still in it", file=sys.stderr)
            return
        time.sleep(0.1)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _bind(spec: str) -> str:
    """A --bind= argument: PATH (resolved, bound at the same path) or SOURCE:DEST (source resolved)."""
    source, sep, dest = spec.partition(":")
    return str(Path(source).resolve()) + (f":{dest}" if sep else "")


class Container:
    """One booted systemd; ``run`` executes commands inside it via nsenter."""

    def __init__(
        self,
        binds: Sequence[str],
        name: str = "dramactl-test",
        private_network: bool = True,
        mask: Sequence[str] = (),
        hostname: str | None = None,
    ) -> None:
        # A bind is a path (bound at the same path inside) or SOURCE:DEST (bound at DEST).
        self.binds = [_bind(b) for b in binds]
        self.name = name
        self.private_network = private_network
        self.mask = tuple(mask)  # extra units masked in this container only (e.g. its own redis-server)
        # systemd inside applies /etc/hostname (the host's, through the overlay) over nspawn's -M name.
        self.hostname = hostname
        self.base: Path | None = None
        self.cgroups: list[Path] = []  # this boot's own cgroups (see _own_cgroups)
        self.boots = 0
        self.nspawn: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.boot_seconds: float | None = None

    @property
    def root(self) -> Path:
        assert self.base is not None
        return self.base / "root"

    def boot(self, timeout: float = 90.0) -> None:
        started = time.monotonic()
        self._prepare()
        self._start(started + timeout)
        self.boot_seconds = time.monotonic() - started
        self.open_binds_to_service_users()

    def reboot(self, timeout: float = 90.0) -> float:
        """`systemctl reboot` inside, then boot the same root again (systemd-nspawn exits
        on a container reboot, as systemd-nspawn@.service expects); returns seconds taken."""
        assert self.nspawn is not None
        started = time.monotonic()
        self.run(["systemctl", "reboot"], check=False)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"the container did not go down for reboot: {self.console_tail()}") from None
        self.pid1 = None
        self.console.close()
        self._start(started + timeout)
        return time.monotonic() - started

    def _prepare(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="dramactl-nspawn.", dir="/var/tmp"))
        for d in ("up", "work", "root"):
            (self.base / d).mkdir()
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={self.base}/up,workdir={self.base}/work", str(self.root)],
            check=True,
        )
        machine_id = subprocess.run(["systemd-id128", "new"], check=True, capture_output=True, text=True).stdout
        (self.root / "etc/machine-id").write_text(machine_id)
        if self.hostname:
            (self.root / "etc/hostname").write_text(self.hostname + "\n")
        # Host services the tests do not need only slow the boot down.
        # Debian enables prometheus and node_exporter on install: the metrics test runs its own, on its own terms.
        for unit in ("postgresql.service", "avahi-daemon.service", "avahi-daemon.socket", "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
                     "prometheus.service", "prometheus-node-exporter.service", "prometheus-node-exporter-apt.timer",
                     "prometheus-node-exporter-smartmon.timer", "prometheus-node-exporter-nvme.timer"):
            (self.root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (self.root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        for unit in self.mask:
            (self.root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (self.root / "etc/systemd/system" / unit).symlink_to("/dev/null")

    def _own_cgroups(self) -> None:
        """A cgroup of its own for this boot of the container, under the caller's.

        systemd-nspawn --keep-unit puts the container in <its cgroup>/payload, so every container
        started from one process (the multi-host tests, an xdist worker) or from one cgroup (two xdist
        workers) would share that one: each systemd would see the others' processes in its units'
        cgroups (as PID 0: "Failed to kill control group ...: Input/output error"), remove cgroups they
        still use (a start failing with 219/CGROUP). A fresh one for each boot: nspawn enables
        controllers in the last one's subtree_control, and cgroup v2 lets no process into a
        non-root cgroup that hands memory or io down."""
        for own in self.cgroups:
            _remove_cgroup(own)
        self.boots += 1
        self.cgroups = []
        for parent in _tracking_cgroups():
            own = parent / f"{self.base.name}.{self.boots}"
            try:
                own.mkdir()
            except OSError as exc:
                raise HarnessError(f"cannot make the container's cgroup {own}: {exc}") from None
            self.cgroups.append(own)
            # nspawn enables systemd's controllers below its cgroup; above it, as nspawn did when its cgroup
            # was the caller's: in the root cgroup (the mount point), or in one with no processes of its own.
            available = parent / "cgroup.controllers"  # cgroup2 only
            if not available.exists() or (not os.path.ismount(parent) and (parent / "cgroup.procs").read_text().strip()):
                continue
            for controller in set(available.read_text().split()) & {"cpu", "cpuset", "io", "memory", "pids"}:
                try:
                    (parent / "cgroup.subtree_control").write_text(f"+{controller}")
                except OSError:
                    pass  # as nspawn: a controller the parent cannot hand down is left out

    def _start(self, deadline: float) -> None:
        self._own_cgroups()
        args = ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit", "-M", self.name]
        if self.private_network:
            args.append("--private-network")
        args += [f"--bind={b}" for b in self.binds]
        # Into the container's own cgroups, then exec nspawn (so the container starts there).
        enter = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; exec "$@"'
        args = ["sh", "-c", enter, "sh", *map(str, self.cgroups), "--", *args]
        self.console = open(self.base / "console.log", "ab")
        self.nspawn = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT, start_new_session=True)
        while self.pid1 is None:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"systemd-nspawn did not boot: {self.console_tail()}")
            self.pid1 = next((p for p in _children(self.nspawn.pid) if _comm(p) == "systemd"), None)
            time.sleep(0.1)
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise HarnessError(f"systemd did not reach running (last: {state!r}): {self.console_tail()}")
            time.sleep(0.2)
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()

    def open_binds_to_service_users(self) -> None:
        """Let unprivileged users (dramactl, dramatiq) traverse to the binds: a CI checkout
        sits in a 0700 mktemp dir. Changes the overlay's copies only, never the host."""
        for path in self.binds:
            if ":" in path:  # bound elsewhere: the source's own mode applies, nothing to open
                continue
            for parent in Path(path).parents:
                inside = self.root / str(parent).lstrip("/")
                if str(parent) != "/" and inside.exists():
                    os.chmod(inside, inside.stat().st_mode | 0o011)

    @property
    def alive(self) -> bool:
        return self.nspawn is not None and self.nspawn.poll() is None

    def kill(self, timeout: float = 30.0) -> None:
        """Cut the power: SIGKILL the container's PID 1 (the kernel then kills every process in
        its PID namespace, no unit stops, no shutdown) and wait for systemd-nspawn to exit.
        ``shutdown`` still cleans up the mount and the temp dir."""
        assert self.nspawn is not None and self.pid1 is not None
        try:
            os.kill(self.pid1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(10)
        self.pid1 = None

    def console_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.base / "console.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return ""

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str = "/",
    ) -> subprocess.CompletedProcess:
        """Run a command inside (a string goes through sh -c), as root or ``user``."""
        assert self.pid1 is not None, "container not booted"
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if env:
            argv = ["env", *[f"{k}={v}" for k, v in env.items()], *argv]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        full = ["nsenter", "-t", str(self.pid1), "-a", "sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise HarnessError(f"{shlex.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def python(self, interpreter: str, code: str, **kwargs) -> object:
        """Run Python inside and return the JSON it prints on its last line."""
        out = self.run([interpreter, "-c", code], **kwargs).stdout.strip().splitlines()
        return json.loads(out[-1]) if out else None

    def journal(self, unit: str, since: str | None = None) -> str:
        cmd = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since:
            cmd += ["--since", since]
        return self.run(cmd, check=False).stdout

    def shutdown(self) -> None:
        """Power off, wait, unmount, remove: leaves no container, mount or temp dir."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.pid1:
                subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "systemctl", "poweroff"], capture_output=True, timeout=30)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(10)
        if getattr(self, "console", None):
            self.console.close()
        if self.base is not None:
            if os.path.ismount(self.root):
                if subprocess.run(["umount", str(self.root)], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        for own in self.cgroups:
            _remove_cgroup(own)
        self.cgroups = []
