"""Session fixture: one booted systemd with dramactl installed; per-test reset."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import need
from tests.system.harness import Container, machine_name, missing_requirements

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
PYTHON = str(VENV / "bin" / "python")
DRAMACTL = str(VENV / "bin" / "dramactl")
APP_DIR = str(REPO / "tests" / "system")

BASE_SETTINGS = {
    "DRAMATIQ_COMMAND": "dramatiq sysapp",
    "WORKER_DIRECTORY": APP_DIR,
    "DRAMATIQ_QUEUE_NAME": "sys",
    "MIN_PROCESSES": "1",
    "MAX_PROCESSES": "4",
    "CHECK_INTERVAL": "3",
    "WORKER_THREADS": "2",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "20",
    "SCALE_DOWN_STABILIZATION": "6",
}


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    """Poll until predicate() is truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class System:
    """dramactl inside the booted container, with helpers the scenarios share."""

    def __init__(self, container: Container) -> None:
        self.c = container

    def sh(self, cmd: str, **kw):
        return self.c.run(cmd, **kw)

    def dramactl(self, *args: str, check: bool = True, user: str | None = None):
        return self.c.run([DRAMACTL, *args], check=check, user=user)

    def configure(self, **overrides: str | None) -> dict[str, str]:
        """Write the env file: BASE_SETTINGS with ``overrides``; an override of None leaves that setting out."""
        values = {k: v for k, v in {**BASE_SETTINGS, **overrides}.items() if v is not None}
        text = "".join(f"{k}={v}\n" for k, v in values.items())
        (self.c.root / "etc/dramactl").mkdir(parents=True, exist_ok=True)
        self.c.run(["sh", "-c", f"cat > /etc/dramactl/dramactl.env <<'EOF'\n{text}EOF"])
        self.dramactl("install")
        return values

    def reset(self) -> None:
        """Stop everything dramactl started and forget its state; empty Redis; start each test
        with an empty journal, so no test reads another's lines."""
        self.sh("systemctl stop dramactl.timer dramactl.service dramatiq-workers.target 'dramatiq-worker@*.service'", check=False)
        self.sh("systemctl reset-failed 'dramatiq-worker@*' dramactl.service", check=False)
        self.sh("rm -f /var/lib/dramactl/state.json", check=False)
        self.sh("systemctl is-active -q redis-server || systemctl start redis-server", check=False)
        self.sh("redis-cli flushall")
        self.sh("journalctl --rotate --vacuum-time=1s", check=False)

    def units(self) -> dict[str, str]:
        """Loaded worker instances -> 'active/sub', straight from systemctl."""
        out = self.sh("systemctl list-units --all --plain --no-legend 'dramatiq-worker@*.service'").stdout
        units = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] != "inactive":
                units[parts[0]] = f"{parts[2]}/{parts[3]}"
        return units

    def active(self) -> list[str]:
        return sorted(n for n, s in self.units().items() if s == "active/running")

    def send(self, count: int, seconds: float, prefix: str = "m") -> None:
        code = (
            "import sysapp, json\n"
            f"for i in range({count}): sysapp.work.send('{prefix}%d' % i, {seconds})\n"
            "print(json.dumps(True))"
        )
        self.c.python(PYTHON, code, cwd=APP_DIR)

    def send_mix(self, count: int, seconds: float, prefix: str = "m") -> None:
        """sysapp.send_mix: plain, time-limited (half failing once) and pipelined messages."""
        self.c.python(PYTHON, f"import sysapp, json\nsysapp.send_mix({count}, {seconds}, {prefix!r})\nprint(json.dumps(True))", cwd=APP_DIR)

    def send_delayed(self, count: int, seconds: float, delay_ms: int, prefix: str = "d") -> None:
        self.c.python(PYTHON, f"import sysapp, json\nsysapp.send_delayed({count}, {seconds}, {delay_ms}, {prefix!r})\nprint(json.dumps(True))", cwd=APP_DIR)

    def redis(self) -> dict:
        """The test app's counters and Dramatiq's leftover keys."""
        code = (
            "import redis, json\n"
            "r = redis.Redis()\n"
            "acks = sum(r.scard(k) for k in r.scan_iter('dramatiq:__acks__.*'))\n"
            "print(json.dumps({'count': int(r.get('sys:count') or 0), 'processed': r.scard('sys:processed'),"
            " 'duplicates': int(r.get('sys:duplicates') or 0), 'ready': r.llen('dramatiq:sys'),"
            " 'msgs': r.hlen('dramatiq:sys.msgs'), 'delayed': r.hlen('dramatiq:sys.DQ.msgs'),"
            " 'dead': r.zcard('dramatiq:sys.XQ'), 'acks': acks, 'failed': r.scard('sys:failed')}))"
        )
        return self.c.python(PYTHON, code)  # type: ignore[return-value]

    def redis_counter(self, key: str) -> int:
        return int(self.sh(f"redis-cli get {key}").stdout.strip() or 0)

    def status(self) -> dict:
        return json.loads(self.dramactl("status", "--json").stdout)


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    why = missing_requirements()
    need(why is None, why or "")
    binds = [str(REPO)] + ([str(VENV)] if not str(VENV).startswith(str(REPO)) else [])
    # Two checkouts, or two pytest-xdist workers, on one host may each boot a session container.
    c = Container(binds, name=machine_name("dramactl-test"))
    try:
        c.boot()
        print(f"\n[harness] container booted in {c.boot_seconds:.1f}s", file=sys.stderr)
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def system(container: Container) -> Iterator[System]:
    s = System(container)
    s.configure()
    s.reset()
    yield s
    s.reset()
