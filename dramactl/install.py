"""``dramactl install``: put the units, polkit rule and users in place on a pip-installed host.

The Debian package ships the same files itself; this is the path for a venv. The
unit files are copied as they are from ``systemd/``; only values derived from the
settings (tick interval, stop timeout, watchdog) go into small drop-ins, so the shipped
units stay the documented ones.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import reach
from .settings import DEFAULT_ENV_FILE, Settings, SettingsError

UNITS = ("dramatiq-worker@.service", "dramatiq-workers.target", "dramactl.service", "dramactl.timer")
# systemd's fixed search path for ExecStart= commands given without a directory.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
REPO = Path(__file__).resolve().parents[1]


class InstallError(RuntimeError):
    """A step of the install cannot be done; the message says what to do."""


@dataclass
class InstallReport:
    """What install changed, one line each."""

    actions: list[str] = field(default_factory=list)

    def did(self, line: str) -> None:
        self.actions.append(line)


def data_path(kind: str, name: str) -> Path:
    """A shipped file: from the wheel's data dir, or from the source checkout."""
    for base in (Path(sys.prefix) / "share" / "dramactl", REPO / "packaging", REPO):
        candidate = base / kind / name
        if candidate.is_file():
            return candidate
    raise InstallError(f"{kind}/{name} is missing from this installation; reinstall dramactl")


def stop_timeout(settings: Settings) -> int:
    """TimeoutStopSec for workers: Dramatiq waits up to the timeout for threads, then consumers."""
    return max(75, 2 * settings.graceful_shutdown_timeout + 15)


# What PrivateTmp=/ProtectHome= hide from the services.
HIDDEN_PREFIXES = ("/tmp/", "/var/tmp/", "/home/", "/run/user/")
HOME_PREFIXES = ("/home/", "/run/user/")  # ProtectHome='s part of them
CODE_PATHS = "50-code-paths.conf"


def code_targets(settings: Settings) -> list[reach.Target]:
    """What the units run (interpreter, package, the app's dramatiq, WORKER_DIRECTORY), for reach."""
    from .worker import worker_argv

    return reach.targets(settings, worker_argv(settings, settings.worker_threads)[0])


def check_reach(settings: Settings, only_existing_users: bool = False) -> None:
    """SettingsError (one line: path, why, fix) when a service user could not run what its unit runs."""
    users = [reach.User.lookup(name) for name in reach.SERVICE_USERS]
    reach.check(code_targets(settings), [u for u in users if u.exists or not only_existing_users])


def hidden_code_paths(settings: Settings) -> list[str]:
    """Our venv, our source (editable installs), the interpreters and the app dir, where the hardening hides them."""
    package_root = str(Path(__file__).resolve().parents[1])
    paths = {str(Path(sys.prefix).resolve()), package_root}
    if settings.worker_directory:
        paths.add(settings.worker_directory)
    try:
        paths.update(reach.bind_candidates(code_targets(settings)))
    except SettingsError:  # a command that cannot run yet: `check` and the tick say so
        pass
    for path in sorted(paths):
        if path == "/root" or path.startswith("/root/"):
            raise InstallError(f"{path} is under /root, which the dramatiq and dramactl users cannot read; install dramactl in a venv under /opt")
    return sorted(p for p in paths if (p + "/").startswith(HIDDEN_PREFIXES))


def drop_ins(settings: Settings) -> dict[str, str]:
    """Drop-in files (relative to the unit dir) carrying values derived from settings and this install."""
    header = "# Written by `dramactl install` from the settings; run it again after changing them.\n"
    files = {
        # Timer triggers add up: the empty assignment clears the unit's list first.
        "dramactl.timer.d/50-check-interval.conf": (
            f"{header}[Timer]\nOnActiveSec=\nOnActiveSec=1s\nOnUnitActiveSec={settings.check_interval}s\n"
        ),
        "dramatiq-worker@.service.d/50-stop-timeout.conf": f"{header}[Service]\nTimeoutStopSec={stop_timeout(settings)}s\n",
        # A worker that stops sending WATCHDOG=1 (frozen, or a consumer thread died) is restarted after this.
        "dramatiq-worker@.service.d/50-watchdog.conf": f"{header}[Service]\nWatchdogSec={settings.watchdog_sec}s\n",
    }
    memory = "".join(
        f"{name}={value}\n" for name, value in (("MemoryHigh", settings.worker_memory_high), ("MemoryMax", settings.worker_memory_max)) if value
    )
    if memory:
        # WORKER_MEMORY_HIGH / WORKER_MEMORY_MAX, in bytes; WORKER_RECYCLE_MEMORY (below them) replaces an instance first.
        files["dramatiq-worker@.service.d/50-memory.conf"] = f"{header}[Service]\n{memory}"
    if settings.metrics_textfile_dir:
        # ProtectSystem=strict: the tick may write its metrics textfile there and nowhere else new.
        files["dramactl.service.d/50-metrics.conf"] = f"{header}[Service]\nReadWritePaths=-{settings.metrics_textfile_dir}\n"
    hidden = hidden_code_paths(settings)
    if hidden:
        # The units' PrivateTmp/ProtectHome would hide this installation: show it again, read-only.
        text = f"{header}[Service]\n"
        if any((p + "/").startswith(HOME_PREFIXES) for p in hidden):
            # ProtectHome=yes makes /home inaccessible (mode 000): a bind below it cannot be reached. A read-only
            # tmpfs over /home (and /run/user) hides the other homes as well and holds the mount points of the binds.
            text += "ProtectHome=tmpfs\n"
        text += f"BindReadOnlyPaths={' '.join(hidden)}\n"
        for unit in ("dramactl.service", "dramatiq-worker@.service"):
            files[f"{unit}.d/{CODE_PATHS}"] = text
    return files


def _write(path: Path, text: str, mode: int = 0o644, gid: int | None = None) -> bool:
    """Write if different; True when the file changed.

    The text goes into a temporary file that already has its final mode (and group),
    which then replaces ``path``: no reader ever sees a half-written file, and a
    secret (the env file's REDIS_PASSWORD) is never in a file anyone else may read.
    """
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_with_mode(path, mode, gid)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def create_with_mode(path: Path, mode: int, gid: int | None = None) -> tuple[int, str]:
    """An empty temporary file beside ``path`` with ``mode`` and group ``gid`` set before anything is written.

    mkstemp creates it 0600 (never wider than the final mode); fchown and fchmod
    then give it its final group and mode while it is still empty.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def group_id(root: Path, name: str) -> int:
    """A group's id on the system at ``root`` (its own /etc/group when installing below another root)."""
    if root == Path("/"):
        return grp.getgrnam(name).gr_gid
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            return int(fields[2])
    raise InstallError(f"group {name} is missing from {root / 'etc/group'}; run without --no-users")


def link_entry_point(report: InstallReport, root: Path) -> None:
    """Make `dramactl` resolvable on systemd's search path (units run `dramactl ...`)."""
    ours = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "dramactl" else Path(sys.executable).with_name("dramactl")
    found = shutil.which("dramactl", path=os.pathsep.join(str(root) + p for p in SYSTEMD_PATH.split(":")))
    if found and Path(found).resolve() == ours.resolve():
        return
    link = root / "usr/local/bin/dramactl"
    if link.exists() and not link.is_symlink():
        raise InstallError(f"{link} exists and is not ours; remove it or put {ours.parent} first")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(ours)
    report.did(f"linked {link} -> {ours}")


# Drop-ins that exist only while their setting is set: removed when it is unset.
OPTIONAL_DROP_INS = (
    "dramactl.service.d/50-metrics.conf",
    "dramatiq-worker@.service.d/50-memory.conf",
    # A venv moved out of /home or /tmp: a stale bind of a path that is gone would fail the units.
    f"dramactl.service.d/{CODE_PATHS}",
    f"dramatiq-worker@.service.d/{CODE_PATHS}",
)


def write_drop_ins(settings: Settings, report: InstallReport, base: Path) -> None:
    files = drop_ins(settings)
    for rel, text in files.items():
        path = base / "etc/systemd/system" / rel
        if _write(path, text):
            report.did(f"wrote {path}")
    for rel in OPTIONAL_DROP_INS:
        path = base / "etc/systemd/system" / rel
        if rel not in files and path.is_file():
            path.unlink()
            report.did(f"removed {path}")


def reload_systemd(report: InstallReport) -> None:
    from .fleet import Fleet

    with Fleet() as fleet:
        fleet.reload()
    report.did("reloaded systemd")


def configure(settings: Settings, *, root: str = "/", reload: bool = True) -> InstallReport:
    """Apply settings that live in unit drop-ins (CHECK_INTERVAL, stop timeout, WATCHDOG_SEC, memory limits): for package installs."""
    report = InstallReport()
    write_drop_ins(settings, report, Path(root))
    if reload and report.actions:
        reload_systemd(report)
    return report


def install(settings: Settings, *, root: str = "/", users: bool = True, reload: bool = True) -> InstallReport:
    """Install units, drop-ins, polkit rule, users and the env file; reload systemd.

    On the live system (root "/") it first checks that the service users can reach
    the interpreter and code their units run, and stops before any change if not.
    """
    base = Path(root)
    if base == Path("/"):
        check_reach(settings)
    report = InstallReport()
    unit_dir = base / "etc/systemd/system"
    for name in UNITS:
        if _write(unit_dir / name, data_path("systemd", name).read_text()):
            report.did(f"installed {unit_dir / name}")
    write_drop_ins(settings, report, base)
    rule = base / "etc/polkit-1/rules.d/50-dramactl.rules"
    if _write(rule, data_path("polkit", "50-dramactl.rules").read_text()):
        report.did(f"installed {rule} (dramactl may start/stop dramatiq-worker@*.service only)")
    sysusers = base / "etc/sysusers.d/dramactl.conf"
    if _write(sysusers, data_path("sysusers", "dramactl.conf").read_text()):
        report.did(f"installed {sysusers}")
    if users:
        rooted = [f"--root={base}"] if base != Path("/") else []
        run = subprocess.run(["systemd-sysusers", *rooted, str(sysusers)], capture_output=True, text=True)
        if run.returncode:
            raise InstallError(f"systemd-sysusers failed: {run.stderr.strip()}")
        if "Creating" in run.stderr + run.stdout:
            report.did("created the system users dramactl and dramatiq")
    env_file = base / DEFAULT_ENV_FILE.lstrip("/")
    if not env_file.exists():
        local = Path.cwd() / ".env"
        # Not through a link: root would copy its target (/etc/shadow, say) into a file the dramactl group reads.
        source = local if local.is_file() and not local.is_symlink() else data_path("env", "dramactl.env")
        # 0640 root:dramactl from the first byte: it may hold REDIS_PASSWORD.
        _write(env_file, source.read_text(), 0o640, group_id(base, "dramactl") if users else None)
        report.did(f"created {env_file} from {source}")
    link_entry_point(report, base)
    write_completion(report, base)
    if reload:
        reload_systemd(report)
    return report


# Where pip installs put shell completion: bash-completion, zsh and fish look there (the .deb uses /usr/share).
COMPLETION_SHARE = "usr/local/share"


def write_completion(report: InstallReport, base: Path) -> None:
    """click's completion scripts for bash, zsh and fish (:mod:`dramactl.completion`), rewritten when they differ."""
    from .completion import scripts

    for path, text in scripts(base / COMPLETION_SHARE).items():
        if _write(path, text):
            report.did(f"installed {path} (shell completion)")
