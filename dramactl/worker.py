"""What a ``dramatiq-worker@N`` instance runs: DRAMATIQ_COMMAND made concrete.

The unit execs ``dramactl worker-exec N``; this module turns the settings into the
Dramatiq command line (one process, the fleet's thread count, a shutdown timeout
that fits inside the unit's TimeoutStopSec, the readiness hook) and replaces the
current process with it, so systemd supervises Dramatiq itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .settings import Settings, SettingsError, broker_index, check_command

HOOK_DIR = Path(__file__).with_name("hook")
HOOK_MODULE = "dramactl_ready"


def worker_argv(settings: Settings, threads: int) -> list[str]:
    """The full argv for one instance; SettingsError when the command cannot run."""
    argv = check_command(settings.dramatiq_command)
    # After the app and every module named with it: its guard must be the broker's last
    # middleware, after any the app's modules add.
    last = broker_index(argv)
    while last + 1 < len(argv) and not argv[last + 1].startswith("-"):
        last += 1
    argv = argv[: last + 1] + [HOOK_MODULE] + argv[last + 1 :]
    argv += [
        "--processes", "1",
        "--threads", str(threads),
        "--worker-shutdown-timeout", str(settings.worker_shutdown_timeout_ms),
    ] + (["--verbose"] if settings.log_level == "DEBUG" else [])
    if argv[0] == "dramatiq":
        # Our own environment's Dramatiq: the one installed beside dramactl.
        if importlib.util.find_spec("dramatiq") is None:
            raise SettingsError(
                "DRAMATIQ_COMMAND", "'dramatiq' is not installed beside dramactl", "give the full path to your app's dramatiq, e.g. /srv/app/venv/bin/dramatiq"
            )
        # Its console script when there is one: Dramatiq's SIGHUP reload (`systemctl
        # reload`) re-executes sys.argv, and a `python -m dramatiq` it re-executes as
        # plain "python", which outside a venv on PATH finds no Dramatiq.
        script = Path(sys.executable).with_name("dramatiq")
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script), *argv[1:]]
        return [sys.executable, "-m", "dramatiq", *argv[1:]]
    resolved = shutil.which(argv[0])
    if resolved is None:
        raise SettingsError("DRAMATIQ_COMMAND", f"{argv[0]!r} is not an executable on PATH", "give the full path to dramatiq")
    return [resolved, *argv[1:]]


def worker_environment(settings: Settings, base: dict[str, str], number: int) -> dict[str, str]:
    """The environment Dramatiq gets: the hook on PYTHONPATH, the instance number."""
    env = dict(base)
    parts = [str(HOOK_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if settings.worker_directory:
        parts.insert(1, settings.worker_directory)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["DRAMACTL_INSTANCE"] = str(number)
    # Dramatiq's Prometheus middleware (dramatiq.middleware.Prometheus, when the app adds it) serves on
    # one port from one multiprocess directory: each instance gets its own of both.
    env["dramatiq_prom_port"] = str(prom_port(settings, number))
    env["dramatiq_prom_db"] = os.path.join(base.get("dramatiq_prom_db") or os.path.join(tempfile.gettempdir(), "dramatiq-prometheus"), f"instance-{number}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def prom_port(settings: Settings, number: int) -> int:
    """The port of instance N's Dramatiq Prometheus exposition: DRAMATIQ_PROM_PORT_BASE + N - 1 (dev, N=0: the base)."""
    return settings.prom_port_base + max(number, 1) - 1


def exec_worker(settings: Settings, threads: int, number: int, values: dict[str, str], watch: str | None = None) -> None:
    """Replace this process with the Dramatiq worker (never returns).

    ``watch`` (development) makes Dramatiq reload the worker when code under it changes.
    """
    argv = worker_argv(settings, threads) + (["--watch", watch] if watch else [])
    env = worker_environment(settings, {**values, **os.environ}, number)
    if settings.worker_directory:
        os.chdir(settings.worker_directory)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)
