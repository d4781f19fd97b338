"""Three booted systemds sharing one Redis: the harness of the multi-host tests (issue 13).

A redis-server runs on the host (not in any container), listening on a unix socket only, in a
0755 temp dir under /var/tmp. Each container binds that dir at /run/shared-redis, so every
host's dramactl (``REDIS_URL=unix:///run/shared-redis/redis.sock``), its workers and the test
itself (through the host path) talk to the same Redis. The containers' own redis-server.service
(the host has one installed) is masked so nothing uses it by accident.

``FleetSampler`` watches every host's worker units once a second from outside, all hosts in the
same iteration, so per-host rows share one timestamp and sum into a fleet-wide count.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.system.conftest import APP_DIR, BASE_SETTINGS, DRAMACTL, PYTHON, REPO, VENV
from tests.system.faults import occupied
from tests.system.harness import Container, HarnessError

SHARED_DIR = "/run/shared-redis"  # where each container sees the host's Redis dir
REDIS_URL = f"unix://{SHARED_DIR}/redis.sock"
LETTERS = ("a", "b", "c")


class SharedRedis:
    """Debian's redis-server on the host: unix socket only, no persistence, its own temp dir."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        assert self.dir is not None
        return str(self.dir / "redis.sock")

    def start(self, timeout: float = 15.0) -> None:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="dramactl-shared-redis.", dir="/var/tmp"))
            os.chmod(self.dir, 0o755)  # the containers' dramactl and dramatiq users traverse it
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "777",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"the shared redis-server did not start: {self.log_tail()}")
            time.sleep(0.1)

    def client(self, timeout: float = 10.0) -> redis.Redis:
        # No retries: with Redis down each retry would only wait again.
        return redis.Redis(unix_socket_path=self.socket, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))

    def down(self) -> None:
        """An outage that keeps the data, as Debian's redis-server does on a stop: SHUTDOWN SAVE
        (one step: nothing written after the save is lost), then nothing listens on the socket."""
        assert self.proc is not None
        try:
            self.client().shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        self.proc.wait(15)

    def up(self) -> None:
        """Start again on the same socket and directory: the saved keys come back."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def hang(self) -> None:
        """A hung server, not a stopped one: SIGSTOP. Connections are still accepted and what
        clients send is buffered, unanswered; it runs once the server is resumed."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])  # type: ignore[operator]
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        self.resume()  # a hung server would never see its SIGTERM
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class Host:
    """dramactl in one of the containers (its hostname is the container's name)."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.values: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.c.name

    def sh(self, cmd, **kw) -> subprocess.CompletedProcess:
        return self.c.run(cmd, **kw)

    def dramactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.c.run([DRAMACTL, *args], check=check)

    def write_env(self, values: dict[str, str]) -> None:
        """/etc/dramactl/dramactl.env with exactly these values (no `dramactl install`)."""
        text = "".join(f"{k}={v}\n" for k, v in values.items())
        self.c.run(["sh", "-c", f"mkdir -p /etc/dramactl && cat > /etc/dramactl/dramactl.env <<'EOF'\n{text}EOF"])
        self.values = dict(values)

    def configure(self, values: dict[str, str]) -> None:
        """Like System.configure: the env file, then `dramactl install` (units, timer interval)."""
        self.write_env(values)
        self.dramactl("install")

    def start_timer(self) -> None:
        self.sh("systemctl start dramactl.timer")

    def stop(self) -> None:
        """Stop the timer, the scaler and every worker (what a per-test reset needs)."""
        if not self.c.alive:
            return
        self.sh("systemctl stop dramactl.timer dramactl.service dramatiq-workers.target 'dramatiq-worker@*.service'", check=False)
        self.sh("systemctl reset-failed 'dramatiq-worker@*' dramactl.service", check=False)

    def forget(self) -> None:
        """Drop dramactl's local state and the journal, so no test reads another's lines."""
        self.sh("find /var/lib/dramactl -mindepth 1 -delete", check=False)
        self.sh("journalctl --rotate --vacuum-time=1s", check=False)

    def units(self) -> dict[str, str]:
        out = self.sh("systemctl list-units --all --plain --no-legend 'dramatiq-worker@*.service'").stdout
        return {p[0]: f"{p[2]}/{p[3]}" for p in (line.split() for line in out.splitlines()) if len(p) >= 4 and p[2] != "inactive"}

    def active(self) -> list[str]:
        return sorted(n for n, s in self.units().items() if s == "active/running")

    def status(self) -> dict:
        return json.loads(self.dramactl("status", "--json").stdout)

    def journal(self, unit: str = "dramactl.service", identifier: str | None = None) -> str:
        cmd = ["journalctl", "--no-pager", "-o", "cat", "-u", unit] + (["-t", identifier] if identifier else [])
        return self.sh(cmd, check=False).stdout

    def hostname(self) -> str:
        return self.sh("hostname").stdout.strip()


class Cluster:
    """The shared Redis and three booted hosts named PREFIX-a, PREFIX-b, PREFIX-c."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.redis = SharedRedis()
        self.hosts: list[Host] = []
        self.boot_seconds: float | None = None

    def __getitem__(self, letter: str) -> Host:
        return self.hosts[LETTERS.index(letter)]

    def binds(self) -> list[str]:
        own = [str(REPO)] + ([str(VENV)] if not str(VENV).startswith(str(REPO)) else [])
        return own + [f"{self.redis.dir}:{SHARED_DIR}"]

    def _container(self, letter: str) -> Container:
        return Container(self.binds(), name=f"{self.prefix}-{letter}", mask=("redis-server.service",), hostname=f"{self.prefix}-{letter}")

    def boot(self) -> None:
        started = time.monotonic()
        self.redis.start()
        self.hosts = [Host(self._container(x)) for x in LETTERS]
        _parallel([h.c.boot for h in self.hosts])  # ~ the time of one boot instead of three
        self.boot_seconds = time.monotonic() - started

    def revive(self, host: Host) -> None:
        """Boot a host again after a power cut (a fresh overlay and machine-id, same name)."""
        host.c.shutdown()
        host.c = self._container(host.name.rsplit("-", 1)[1])
        host.c.boot()
        if host.values:
            host.configure(host.values)

    def shutdown(self) -> None:
        try:
            _parallel([h.c.shutdown for h in self.hosts])
        finally:
            self.redis.stop()

    def each(self, fn: Callable[[Host], object]) -> list:
        return _parallel([lambda h=h: fn(h) for h in self.hosts])

    def live(self) -> list[Host]:
        return [h for h in self.hosts if h.c.alive]

    def reset(self) -> None:
        """Every host stopped with its state forgotten, then the shared Redis emptied (after the
        stops, so no scaler re-registers in between); dead hosts booted again."""
        self.redis.up()  # a test that failed while Redis was down
        for h in self.hosts:
            if not h.c.alive:
                self.revive(h)
        self.each(Host.stop)
        self.redis.client().flushall()
        self.each(Host.forget)

    def configure(self, settings: dict[str, str], per_host: dict[str, dict[str, str]] | None = None) -> None:
        """BASE_SETTINGS + REDIS_URL + ``settings`` on every host, ``per_host[letter]`` on top."""
        per_host = per_host or {}

        def one(h: Host) -> None:
            letter = h.name.rsplit("-", 1)[1]
            h.configure({**BASE_SETTINGS, "REDIS_URL": REDIS_URL, **settings, **per_host.get(letter, {})})

        self.each(one)

    def send(self, count: int, seconds: float, prefix: str = "m", via: Host | None = None) -> None:
        """``count`` messages of ``seconds`` each, sent from inside a host (A unless ``via``)."""
        host = via or self.hosts[0]
        code = (
            "import sysapp, json\n"
            f"for i in range({count}): sysapp.work.send('{prefix}%d' % i, {seconds})\n"
            "print(json.dumps(True))"
        )
        host.c.python(PYTHON, code, cwd=APP_DIR, env={"REDIS_URL": REDIS_URL})

    def counts(self) -> dict:
        """The test app's counters and Dramatiq's leftover keys, read from the host."""
        r = self.redis.client()
        acks = sum(r.scard(k) for k in r.scan_iter("dramatiq:__acks__.*"))
        return {
            "count": int(r.get("sys:count") or 0), "processed": r.scard("sys:processed"),
            "duplicates": int(r.get("sys:duplicates") or 0), "ready": r.llen("dramatiq:sys"),
            "msgs": r.hlen("dramatiq:sys.msgs"), "delayed": r.hlen("dramatiq:sys.DQ.msgs"),
            "dead": r.zcard("dramatiq:sys.XQ"), "acks": acks,
        }


def _parallel(calls: Sequence[Callable[[], object]]) -> list:
    """Run the calls in threads; re-raise the first failure once all have finished."""
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], object]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after every thread ended
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


_VIEW = "systemctl list-units --all --plain --no-legend 'dramatiq-worker@*.service'; echo @@; systemctl list-jobs --plain --no-legend"


def _systemd_view(host: Host) -> dict | None:
    """One host's worker units and pending jobs, as tests/system/sampler.py records them; None
    when the host is down (powered off: nothing runs there)."""
    if not host.c.alive:
        return None
    try:
        out = host.c.run(_VIEW, check=False, timeout=10).stdout
    except (subprocess.TimeoutExpired, AssertionError):
        return None
    listed, _, pending = out.partition("@@")
    units = {p[0]: f"{p[2]}/{p[3]}" for p in (line.split() for line in listed.splitlines()) if len(p) >= 4}
    jobs = {p[1]: p[2] for p in (line.split() for line in pending.splitlines()) if len(p) >= 3 and p[1].startswith("dramatiq-worker@")}
    return {"units": units, "jobs": jobs}


class FleetSampler(threading.Thread):
    """Once a second, every host's systemd view (sampled concurrently, one timestamp per row) and
    the shared queue. Rows: ``{"t": epoch, "hosts": {name: {"units", "jobs"} | None}, "ready": n,
    "processed": n}``; ``occupied(row, name)`` applies faults.occupied to one host."""

    def __init__(self, cluster: Cluster, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.cluster, self.interval = cluster, interval
        self.rows: list[dict] = []
        self.done = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=len(cluster.hosts))

    def run(self) -> None:
        client = self.cluster.redis.client(timeout=0.3)  # Redis down must not hold up the systemd samples
        while not self.done.is_set():
            started = time.time()
            hosts = dict(zip((h.name for h in self.cluster.hosts), self.pool.map(_systemd_view, self.cluster.hosts)))
            row: dict = {"t": started, "hosts": hosts}
            try:
                row.update(ready=client.llen("dramatiq:sys"), processed=client.scard("sys:processed"))
            except redis.RedisError:
                row.update(ready=None, processed=None)
            self.rows.append(row)
            self.done.wait(max(0.0, self.interval - (time.time() - started)))

    def __enter__(self) -> "FleetSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(15)
        self.pool.shutdown(wait=True)

    @staticmethod
    def occupied(row: dict, name: str) -> int:
        view = row["hosts"].get(name)
        return 0 if view is None else occupied(view)

    def total(self, row: dict) -> int:
        return sum(self.occupied(row, name) for name in row["hosts"])

    def latest(self) -> dict | None:
        return self.rows[-1] if self.rows else None

    def per_host(self, row: dict) -> str:
        return " ".join(f"{name.rsplit('-', 1)[1]}={self.occupied(row, name)}" for name in row["hosts"])


class StatusPoller(threading.Thread):
    """``dramactl status --json`` on one host every ``every`` seconds: ``polls`` holds (epoch, status
    or None when it failed)."""

    def __init__(self, host: Host, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.host, self.every = host, every
        self.polls: list[tuple[float, dict | None]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.time()
            try:
                status = self.host.status() if self.host.c.alive else None
            except (HarnessError, ValueError, subprocess.TimeoutExpired, AssertionError):
                status = None
            self.polls.append((started, status))
            self.done.wait(max(0.0, self.every - (time.time() - started)))

    def __enter__(self) -> "StatusPoller":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(30)


def row_at(rows: Iterable[dict], t: float) -> dict | None:
    """The sample taken closest to epoch ``t`` (within 1.5 s), or None."""
    best = min(rows, key=lambda r: abs(r["t"] - t), default=None)
    return best if best is not None and abs(best["t"] - t) <= 1.5 else None
