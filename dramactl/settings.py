"""Operator settings: names, defaults, parsing and validation.

Sources, first match wins: the process environment, then ``./.env``, then
``/etc/dramactl/dramactl.env`` (or the file named by ``DRAMACTL_ENV_FILE``). Root's
commands skip ``./.env`` where the system file exists: they act on the fleet the units run
with that file, and an app directory's ``.env`` (REDIS_HOST, say) would have had them act
elsewhere, or send REDIS_PASSWORD to another host. The system file's DRAMACTL_STATE_DIR is
not read: ``dramactl.service`` keeps its state in its StateDirectory=, so it split the
tick's lock and state from the manual commands' (``check`` says so).
Every problem becomes one :class:`SettingsError` naming the setting and the fix,
raised before anything touches the fleet, so a bad config never stops workers.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, Mapping, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_ENV_FILE = "/etc/dramactl/dramactl.env"
DEFAULT_STATE_DIR = "/var/lib/dramactl"
EXAMPLE_COMMAND = "dramatiq dramactl.example.tasks"
EXAMPLE_QUEUES = ("email_processing", "ocr_processing", "high_priority", "low_priority")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
POLICIES = ("default", "step")
WATCHDOG_MIN = 5  # WATCHDOG_SEC below this restarts workers on a pause of a few seconds (GC, swap, a busy host)
MAX_STABILIZATION = 1800.0  # half of state.HISTORY_SECONDS: the window must fit the kept history
_QUEUE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]*$")
_FLEET_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
# Credentials in Redis URLs: userinfo (up to the token's last '@', as urlsplit reads it) and password= values.
_URL_USERINFO = re.compile(r"(?i)\b((?:rediss?|unix)://)\S*@")
_PASSWORD_PARAM = re.compile(r"(?i)([?&;]password=)([^&#\s]*)")
HIDDEN = "***"

T = TypeVar("T")


LONGEST_HOST_TTL = 86_400  # FLEET_HOST_TTL's limit: the fleet takes a longer heartbeat or claim as damaged


class SettingsError(ValueError):
    """A setting that cannot be used, with the fix, as one line."""

    def __init__(self, setting: str, problem: str, fix: str = "") -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem}" + (f"; {fix}" if fix else ""))


@dataclass(frozen=True)
class Settings:
    """Validated settings. Times are seconds; ``redis_url`` wins over host/port/db."""

    redis_host: str = "localhost"
    redis_port: int = 6379
    redis_db: int = 0
    redis_password: str = ""
    redis_url: str = ""
    namespace: str = "dramatiq"
    queues: tuple[str, ...] = EXAMPLE_QUEUES
    dramatiq_command: str = EXAMPLE_COMMAND
    worker_directory: str = ""
    worker_threads: int = 8
    min_processes: int = 1
    max_processes: int = 10
    check_interval: int = 180
    scale_up_multiplier: float = 5.0
    scale_down_multiplier: float = 2.5
    log_level: str = "INFO"
    graceful_shutdown_timeout: int = 30
    watchdog_sec: int = 60  # WatchdogSec= of the worker units (a drop-in): a frozen worker is restarted after it
    policy: str = "default"
    # Default-policy knobs (see dramactl.policy; `python -m bench` measures them).
    target_backlog_per_worker: float = 0.0  # messages per worker (ready + due + in flight); 0 = WORKER_THREADS
    max_queue_wait: float = 60.0  # latency guard: grow when the oldest ready message waited longer
    max_scale_up_step: int = 0  # instances added per tick at most; 0 = no limit below MAX_PROCESSES
    scale_down_stabilization: float = 120.0  # seconds the need must stay low before shrinking
    max_scale_down_step: int = 0  # instances removed per tick at most; 0 = straight to what the window needs
    state_dir: str = DEFAULT_STATE_DIR
    metrics_textfile_dir: str = ""  # node_exporter's textfile directory: each tick writes dramactl.prom there ("" = off)
    prom_port_base: int = 9191  # Dramatiq's Prometheus middleware: instance N serves on base + N - 1
    # Several hosts, one fleet (dramactl.share): off unless FLEET_NAME is set.
    fleet_name: str = ""  # hosts with the same name, on the same Redis, form one fleet
    fleet_max_processes: int = 0  # the fleet-wide cap on instances; 0 = the sum of the hosts' MAX_PROCESSES
    fleet_host_ttl: int = 0  # seconds a host's heartbeat lasts; 0 = 3 x CHECK_INTERVAL + 30, at most LONGEST_HOST_TTL
    # Memory, in bytes; 0 = off (dramactl.rollout recycles, drop-ins carry the limits).
    worker_memory_high: int = 0  # MemoryHigh= of each instance: the kernel throttles and reclaims above it
    worker_memory_max: int = 0  # MemoryMax= of each instance: the kernel's OOM killer acts above it
    worker_recycle_memory: int = 0  # a tick replaces (start, then drain) an instance whose MemoryCurrent passed it
    worker_recycle_min_age: int = 300  # seconds: nor one younger than this (or 3 x CHECK_INTERVAL): dramactl/recycle.py
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def host_ttl(self) -> int:
        """FLEET_HOST_TTL, or its default: three tick intervals plus the 30 s a tick may wait on start jobs,
        capped at :data:`LONGEST_HOST_TTL` (a longer heartbeat or claim is taken as damaged by the fleet)."""
        return self.fleet_host_ttl or min(3 * self.check_interval + 30, LONGEST_HOST_TTL)

    @property
    def redis_location(self) -> str:
        """Where Redis is, for messages (never includes the password)."""
        if self.redis_url:
            return redact(self.redis_url, self)
        return f"{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every password these settings hold, as written and URL-decoded: what no message may show."""
        found = {self.redis_password}
        if self.redis_url:
            parts = urlsplit(self.redis_url)
            userinfo = parts.netloc.rpartition("@")[0]
            if userinfo:
                found.add(userinfo.partition(":")[2] or userinfo)  # redis://secret@ is a password, too
            for name, value in parse_qsl(parts.query, keep_blank_values=True):
                if name.lower() == "password":
                    found.add(value)
            found |= {m.group(2) for m in _PASSWORD_PARAM.finditer(self.redis_url)}  # as written
            found |= {unquote(v) for v in found}
        return tuple(sorted((v for v in found if v), key=len, reverse=True))

    @property
    def worker_shutdown_timeout_ms(self) -> int:
        """Dramatiq's ``--worker-shutdown-timeout`` derived from GRACEFUL_SHUTDOWN_TIMEOUT."""
        return self.graceful_shutdown_timeout * 1000


def redact(text: str, settings: "Settings | None" = None) -> str:
    """``text`` fit to print: URL userinfo, ``password=`` values and the settings' passwords become ***.

    Every surface that shows Redis' location or an error from Redis (check, status,
    the tick's journal line, the dashboard) passes its text through here.
    """
    text = _URL_USERINFO.sub(rf"\g<1>{HIDDEN}@", str(text))
    text = _PASSWORD_PARAM.sub(rf"\g<1>{HIDDEN}", text)
    for secret in settings.secrets if settings is not None else ():
        if len(secret) >= 8:
            text = text.replace(secret, HIDDEN)
        else:  # a short one only where it stands alone: "x" must not blank out every "unix"
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", HIDDEN, text)
    return text


NOT_IN_SYSTEM_FILE = "DRAMACTL_STATE_DIR"  # the units cannot follow it (module docstring)


def read_sources(
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    euid: int | None = None,
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Merge environment > ./.env > system env file; returns values and the files read.
    Root skips ./.env where the system file exists (module docstring)."""
    env, system_file, local_file = _env_files(environ, cwd)
    merged: dict[str, str] = {}
    read: list[str] = []
    system = _read_env_file(system_file)
    if system is not None:
        system.pop(NOT_IN_SYSTEM_FILE, None)
        merged.update(system)
        read.append(str(system_file))
    if system is None or not _is_root(euid):
        local = _read_env_file(local_file)
        if local is not None:
            merged.update(local)
            read.append(str(local_file))
    merged.update(env)
    return merged, tuple(reversed(read))


def _env_files(environ: Mapping[str, str] | None, cwd: Path | None) -> tuple[dict[str, str], Path, Path]:
    """(the environment, the system env file, ./.env) as every reader of the settings finds them."""
    env = dict(os.environ if environ is None else environ)
    return env, Path(env.get("DRAMACTL_ENV_FILE") or DEFAULT_ENV_FILE), (cwd or Path.cwd()) / ".env"


def _is_root(euid: int | None) -> bool:
    return (os.geteuid() if euid is None else euid) == 0


def exposed_password(environ: Mapping[str, str] | None = None) -> str | None:
    """A warning when the system env file holds a Redis password and every user can read it
    (``dramactl install`` and the .deb make it 0640 root:dramactl; an edit or a copy may not)."""
    _, system_file, _ = _env_files(environ, None)
    values = _read_env_file(system_file)
    if not values:
        return None
    url = values.get("REDIS_URL", "")
    if not (values.get("REDIS_PASSWORD") or _URL_USERINFO.search(url) or _PASSWORD_PARAM.search(url)):
        return None
    try:
        mode = stat.S_IMODE(os.stat(system_file).st_mode)
    except OSError:
        return None
    if not mode & 0o004:
        return None
    return f"{system_file} holds the Redis password and every user can read it (mode {mode:04o}); chmod 0640 it and chgrp it to dramactl"


def unread_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None, euid: int | None = None) -> list[str]:
    """What :func:`read_sources` left out, for ``check`` to say: a ./.env root skipped, and a
    DRAMACTL_STATE_DIR in the system file."""
    _, system_file, local_file = _env_files(environ, cwd)
    system = _read_env_file(system_file)
    notes = []
    if system is not None and _is_root(euid) and _read_env_file(local_file) is not None:
        notes.append(f"{local_file} not read: root's commands use {system_file}, the file the units read")
    if system is not None and system.get(NOT_IN_SYSTEM_FILE):
        notes.append(
            f"{NOT_IN_SYSTEM_FILE} in {system_file} not read: dramactl.service keeps its state and lock in its StateDirectory= "
            f"({DEFAULT_STATE_DIR}), and every command must use the same; remove it there"
        )
    return notes


def _read_env_file(path: Path) -> dict[str, str] | None:
    """A dotenv file's values, or None when absent or unreadable (units get it via EnvironmentFile=)."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None
    from io import StringIO

    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(stream=StringIO(text)).items() if v is not None}


def load(environ: Mapping[str, str] | None = None, cwd: Path | None = None, euid: int | None = None) -> Settings:
    """Read and validate the settings; raises :class:`SettingsError` on the first problem."""
    values, sources = read_sources(environ, cwd, euid)
    return parse(values, sources)


def parse(values: Mapping[str, str], sources: tuple[str, ...] = ()) -> Settings:
    """Validate raw ``NAME=value`` strings into :class:`Settings`."""
    d = Settings()
    get = _Reader(values)

    command = get.text("DRAMATIQ_COMMAND", "")
    if not command:
        command, default_queues = d.dramatiq_command, ",".join(EXAMPLE_QUEUES)
    else:
        default_queues = "default"
    check_command(command)

    queues = tuple(q.strip() for q in get.text("DRAMATIQ_QUEUE_NAME", default_queues).split(",") if q.strip())
    if not queues:
        raise SettingsError("DRAMATIQ_QUEUE_NAME", "no queue named", "set it to one or more comma-separated queue names")
    for q in queues:
        if not _QUEUE_NAME.match(q):
            raise SettingsError("DRAMATIQ_QUEUE_NAME", f"{_shown(q)} is not a Dramatiq queue name", "use letters, digits, '.', '_' or '-'")
    queues = tuple(dict.fromkeys(queues))  # a queue named twice is read once (its backlog was counted per mention)

    redis_url = get.text("REDIS_URL", "")
    if redis_url:
        check_redis_url(redis_url)

    log_level = get.text("LOG_LEVEL", d.log_level).upper()
    if log_level not in LOG_LEVELS:
        raise SettingsError("LOG_LEVEL", f"{log_level!r} is not a log level", "use one of " + ", ".join(LOG_LEVELS))

    policy = get.text("POLICY", d.policy).lower()
    if policy not in POLICIES:
        raise SettingsError("POLICY", f"{policy!r} is not a policy", "use 'default' or 'step' (the classic threshold step)")

    worker_directory = get.text("WORKER_DIRECTORY", "")
    if worker_directory and not os.path.isabs(worker_directory):
        raise SettingsError("WORKER_DIRECTORY", f"{worker_directory!r} is relative", "give an absolute path")

    metrics_dir = get.text("METRICS_TEXTFILE_DIR", "")
    if metrics_dir and not os.path.isabs(metrics_dir):
        raise SettingsError("METRICS_TEXTFILE_DIR", f"{metrics_dir!r} is relative", "give an absolute path, e.g. /var/lib/prometheus/node-exporter")

    systemd_state_dir = get.text("STATE_DIRECTORY", "").split(":")[0]  # systemd's StateDirectory=: it wins
    state_dir = systemd_state_dir or get.text("DRAMACTL_STATE_DIR", "") or d.state_dir  # empty: the default
    if not os.path.isabs(state_dir):  # a relative one would put the state wherever a command is run
        name = "STATE_DIRECTORY" if systemd_state_dir else "DRAMACTL_STATE_DIR"
        raise SettingsError(name, f"{_shown(state_dir)} is relative", f"give an absolute path, or leave it empty for {DEFAULT_STATE_DIR}")

    fleet_name = get.text("FLEET_NAME", "")
    if fleet_name and not _FLEET_NAME.match(fleet_name):
        raise SettingsError("FLEET_NAME", f"{fleet_name!r} is not a fleet name", "use up to 64 letters, digits, '.', '_' or '-'")

    s = Settings(
        redis_host=get.text("REDIS_HOST", d.redis_host) or d.redis_host,
        redis_port=get.integer("REDIS_PORT", d.redis_port, low=1, high=65535),
        redis_db=get.integer("REDIS_DB", d.redis_db, low=0, high=100000),
        redis_password=get.text("REDIS_PASSWORD", ""),
        redis_url=redis_url,
        namespace=get.text("REDIS_NAMESPACE", d.namespace) or d.namespace,
        queues=queues,
        dramatiq_command=command,
        worker_directory=worker_directory,
        worker_threads=get.integer("WORKER_THREADS", d.worker_threads, low=1, high=1024),
        min_processes=get.integer("MIN_PROCESSES", d.min_processes, low=0, high=1000),
        max_processes=get.integer("MAX_PROCESSES", d.max_processes, low=1, high=1000),
        check_interval=get.integer("CHECK_INTERVAL", d.check_interval, low=1, high=86400),
        scale_up_multiplier=get.number("SCALE_UP_THRESHOLD_MULTIPLIER", d.scale_up_multiplier, low=0.0, above=True),
        scale_down_multiplier=get.number("SCALE_DOWN_THRESHOLD_MULTIPLIER", d.scale_down_multiplier, low=0.0),
        log_level=log_level,
        graceful_shutdown_timeout=get.integer("GRACEFUL_SHUTDOWN_TIMEOUT", d.graceful_shutdown_timeout, low=1, high=3600),
        watchdog_sec=get.integer("WATCHDOG_SEC", d.watchdog_sec, low=WATCHDOG_MIN, high=3600),
        policy=policy,
        target_backlog_per_worker=get.number("TARGET_BACKLOG_PER_WORKER", d.target_backlog_per_worker, low=0.0),
        max_queue_wait=get.number("MAX_QUEUE_WAIT", d.max_queue_wait, low=0.0, above=True),
        max_scale_up_step=get.integer("MAX_SCALE_UP_STEP", d.max_scale_up_step, low=0, high=1000),
        scale_down_stabilization=get.number("SCALE_DOWN_STABILIZATION", d.scale_down_stabilization, low=0.0),
        max_scale_down_step=get.integer("MAX_SCALE_DOWN_STEP", d.max_scale_down_step, low=0, high=1000),
        state_dir=state_dir,
        metrics_textfile_dir=metrics_dir,
        prom_port_base=get.integer("DRAMATIQ_PROM_PORT_BASE", d.prom_port_base, low=1, high=65535),
        fleet_name=fleet_name,
        fleet_max_processes=get.integer("FLEET_MAX_PROCESSES", d.fleet_max_processes, low=0, high=100000),
        fleet_host_ttl=get.integer("FLEET_HOST_TTL", d.fleet_host_ttl, low=0, high=LONGEST_HOST_TTL),
        worker_memory_high=get.size("WORKER_MEMORY_HIGH"),
        worker_memory_max=get.size("WORKER_MEMORY_MAX"),
        worker_recycle_memory=get.size("WORKER_RECYCLE_MEMORY"),
        worker_recycle_min_age=get.integer("WORKER_RECYCLE_MIN_AGE", d.worker_recycle_min_age, low=0, high=7 * 86400),
        sources=sources,
    )
    if s.worker_memory_max and s.worker_memory_high > s.worker_memory_max:
        raise SettingsError(
            "WORKER_MEMORY_HIGH", f"{size_text(s.worker_memory_high)} is above WORKER_MEMORY_MAX={size_text(s.worker_memory_max)}", "make it lower than WORKER_MEMORY_MAX"
        )
    if s.worker_memory_max and s.worker_recycle_memory >= s.worker_memory_max:
        raise SettingsError(
            "WORKER_RECYCLE_MEMORY",
            f"{size_text(s.worker_recycle_memory)} is not below WORKER_MEMORY_MAX={size_text(s.worker_memory_max)}",
            "make it lower, so an instance is replaced before the kernel's OOM killer ends it",
        )
    if s.prom_port_base + s.max_processes - 1 > 65535:
        raise SettingsError(
            "DRAMATIQ_PROM_PORT_BASE", f"{s.prom_port_base} + MAX_PROCESSES={s.max_processes} - 1 is above 65535", "use a lower base port"
        )
    if s.min_processes > s.max_processes:
        raise SettingsError(
            "MIN_PROCESSES", f"{s.min_processes} is above MAX_PROCESSES={s.max_processes}", "lower MIN_PROCESSES or raise MAX_PROCESSES"
        )
    if s.fleet_max_processes and s.fleet_max_processes < s.min_processes:
        raise SettingsError(
            "FLEET_MAX_PROCESSES", f"{s.fleet_max_processes} is below MIN_PROCESSES={s.min_processes}", "raise it, lower MIN_PROCESSES, or set 0 for no fleet-wide cap"
        )
    if s.fleet_host_ttl and s.fleet_host_ttl <= s.check_interval:
        raise SettingsError(
            "FLEET_HOST_TTL",
            f"{s.fleet_host_ttl}s is not longer than CHECK_INTERVAL={s.check_interval}s",
            "make it longer than a tick interval (e.g. 3 x CHECK_INTERVAL + 30), or the hosts would drop out between ticks",
        )
    if s.fleet_name and s.host_ttl <= s.check_interval:  # FLEET_HOST_TTL unset: its default is capped
        raise SettingsError(
            "CHECK_INTERVAL",
            f"{s.check_interval}s is not shorter than the longest heartbeat a fleet keeps (FLEET_HOST_TTL, at most {LONGEST_HOST_TTL}s)",
            f"use a CHECK_INTERVAL below {LONGEST_HOST_TTL} with FLEET_NAME set, or the hosts would drop out between ticks",
        )
    if s.scale_down_stabilization > MAX_STABILIZATION:
        raise SettingsError(
            "SCALE_DOWN_STABILIZATION",
            f"{s.scale_down_stabilization:g}s is longer than the {MAX_STABILIZATION:g}s of history the scaler keeps",
            f"use at most {MAX_STABILIZATION:g}: a longer window never fills, so the fleet would never shrink",
        )
    if s.scale_down_multiplier >= s.scale_up_multiplier:
        raise SettingsError(
            "SCALE_DOWN_THRESHOLD_MULTIPLIER",
            f"{s.scale_down_multiplier:g} is not below SCALE_UP_THRESHOLD_MULTIPLIER={s.scale_up_multiplier:g}",
            "make it smaller than the scale-up multiplier, or the fleet would flap",
        )
    try:
        if not s.redis_url:  # REDIS_URL, when set, names the host: REDIS_HOST is not used
            s.redis_host.encode("idna")  # what the resolver is handed: a label over 63 characters cannot be
    except UnicodeError:
        raise SettingsError("REDIS_HOST", f"{_shown(s.redis_host)} is not a host name", "use a host name or address, e.g. localhost") from None
    return s


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MIN_MEMORY = 16 * 1024**2  # a limit below this cannot hold a Python worker
MAX_MEMORY = 2**64 - 2  # systemd's MemoryHigh=/MemoryMax= take bytes below 2**64 - 1 (its "infinity"), about 16 EiB
_URL_FIX = "use redis://host:port/db, with ':password@' before the host when Redis needs one"  # no 'redis://[:pw@]': redact() would eat it
_SHOWN = 40  # characters of a bad value an error line echoes


def size_text(n: int) -> str:
    """Bytes as the journal line shows them: ``612 MiB``, ``1.5 GiB``."""
    if n >= 1024**3:
        return f"{n / 1024**3:.3g} GiB"
    return f"{n / 1024**2:.0f} MiB"


def parse_size(raw: str) -> int | None:
    """``512M``, ``2G``, ``1.5G``, ``536870912`` (bytes; K/M/G/T are powers of 1024, as in systemd); None when not a size.

    Exact (a Decimal, not a float): 400 nines is a very large size, not an overflow."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", raw, re.IGNORECASE)
    if not m:
        return None
    return int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])


def _shown(value: object) -> str:
    """A bad value as an error line echoes it: text quoted, cut to a few dozen characters."""
    return cut(repr(value) if isinstance(value, str) else str(value))


def cut(text: str, limit: int = _SHOWN) -> str:
    """``text`` short enough for one error or journal line (settings, reports, the state file use it)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_redis_url(url: str) -> None:
    """SettingsError unless redis-py can use REDIS_URL: read as ``redis.Redis.from_url`` reads it, and a
    connection object made from it (nothing connects), so a bad port or query option is one line, not a
    traceback. No message shows the password."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        scheme = url.split(":", 1)[0]
        shown = _shown(scheme) if "@" not in scheme and "/" not in scheme else "it"  # 'pw@host' would show the password
        raise SettingsError("REDIS_URL", f"{shown} is not a Redis URL", _URL_FIX)
    rest = url.split("://", 1)[1]
    userinfo = rest[: rest.rindex("@")] if "@" in rest else ""
    if any(c in userinfo for c in "/?#"):
        # urlsplit ends the host part at the first of them: the password's tail would be read as
        # the host, its head as the port, and redis-py's error would quote it.
        raise SettingsError("REDIS_URL", "its user or password holds '/', '?' or '#', which end a URL's host part", "percent-encode them in the URL (%2F, %3F, %23)")
    from redis import ConnectionPool
    from redis.exceptions import RedisError

    try:
        ConnectionPool.from_url(url).make_connection()
    except (ValueError, TypeError, RedisError) as exc:
        message = redact(str(exc))
        for secret in {userinfo, *userinfo.split(":", 1)}:
            if len(secret) >= 3:
                message = message.replace(secret, HIDDEN)
        raise SettingsError("REDIS_URL", f"redis-py cannot read it ({cut(message, 200)})", _URL_FIX) from None


def check_command(command: str) -> list[str]:
    """Split DRAMATIQ_COMMAND and check it names a Dramatiq CLI and an app module."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SettingsError("DRAMATIQ_COMMAND", f"cannot be split into words ({exc})", "fix the quoting") from None
    if not argv:
        raise SettingsError("DRAMATIQ_COMMAND", "is empty", "set it to e.g. 'dramatiq myapp.tasks'")
    broker_index(argv)
    return argv


def broker_index(argv: list[str]) -> int:
    """Index of the app (broker) module in a Dramatiq command line; SettingsError when there is none."""
    for i, word in enumerate(argv):
        if os.path.basename(word) == "dramatiq":
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                return i + 1
            raise SettingsError(
                "DRAMATIQ_COMMAND", "names no app module right after 'dramatiq'", "write it as 'dramatiq myapp.tasks [options]'"
            )
    raise SettingsError("DRAMATIQ_COMMAND", f"{argv[0]!r} is not the dramatiq command", "write it as 'dramatiq myapp.tasks [options]'")


class _Reader:
    """Typed access to raw values, turning every bad value into a SettingsError."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values

    def text(self, name: str, default: str) -> str:
        return str(self.values.get(name, default)).strip()

    def _convert(self, name: str, default: T, kind: Callable[[str], T], what: str) -> T:
        raw = self.text(name, "")
        if raw == "":
            return default
        try:
            if not raw.isascii() or "_" in raw:  # int() and float() take '1_0', '١٢' and '１２'; systemd and people do not
                raise ValueError(raw)
            return kind(raw)
        except ValueError:
            raise SettingsError(name, f"{_shown(raw)} is not {what}", f"set it to {what} such as {default}") from None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._convert(name, default, int, "a whole number")
        if not low <= value <= high:
            raise SettingsError(name, f"{_shown(value)} is out of range", f"use a whole number from {low} to {high}")
        return value

    def size(self, name: str) -> int:
        """A memory size in bytes; empty or 0 = off."""
        raw = self.text(name, "")
        if raw in ("", "0"):
            return 0
        value = parse_size(raw)
        if value is None:
            raise SettingsError(name, f"{_shown(raw)} is not a size", "use bytes or K, M, G, T (powers of 1024) such as 512M or 2G; 0 or empty turns it off")
        if value < MIN_MEMORY:
            raise SettingsError(name, f"{cut(raw)} is below {size_text(MIN_MEMORY)}", "a Python worker needs more; use e.g. 512M, or 0 to turn it off")
        if value > MAX_MEMORY:
            raise SettingsError(name, f"{cut(raw)} is more than systemd takes (at most 2**64 - 2 bytes, 16 EiB)", "use e.g. 512M or 2G, or 0 to turn it off")
        return value

    def number(self, name: str, default: float, low: float, above: bool = False) -> float:
        value = self._convert(name, default, float, "a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(name, f"{value} is not a finite number", f"set it to a number such as {default:g}")
        if value < low or (above and value == low):
            bound = "above" if above else "at least"
            raise SettingsError(name, f"{value:g} is too small", f"use a number {bound} {low:g}")
        return value
