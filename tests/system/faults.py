"""The bad-day scenario, shared by the CI-sized test (tests/system/test_faults.py) and the
10,000-message benchmark (bench/fault_soak.py): messages run while workers are SIGKILLed,
Redis restarts and stops, and the fleet is scaled down by hand; a sampler inside the container
watches systemd and Redis once a second. The report says what was lost, what ran twice, and how
the fleet size and the orphaned messages behaved.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tests.system.conftest import PYTHON, REPO, System

SAMPLES = "/var/tmp/dramactl-fault-samples.jsonl"


class Sampler:
    """tests/system/sampler.py as a transient unit inside the container, one row a second.

    ``unit``: the transient unit's name; a test that samples more than once gives each its own."""

    def __init__(self, system: System, unit: str = "dramactl-fault-sampler") -> None:
        self.system = system
        self.unit = unit
        self.samples = SAMPLES if unit == "dramactl-fault-sampler" else f"/var/tmp/{unit}.jsonl"
        self.rows: list[dict] = []

    def __enter__(self) -> "Sampler":
        self.system.sh(f"rm -f {self.samples} {self.samples}.stop")
        self.system.sh(
            ["systemd-run", f"--unit={self.unit}", "--collect", "--quiet", PYTHON, str(REPO / "tests/system/sampler.py"), self.samples]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.system.sh(f"touch {self.samples}.stop")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.system.sh(f"systemctl is-active {self.unit}", check=False).stdout.strip() == "active":
            time.sleep(0.3)
        self.system.sh(f"systemctl stop {self.unit}", check=False)
        text = self.system.sh(f"cat {self.samples}", check=False).stdout
        self.rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.system.sh(f"rm -f {self.samples} {self.samples}.stop", check=False)


def occupied(row: dict) -> int:
    """Instances up or coming back, as systemd will resolve them: active, activating (auto-restart
    included), reloading, and deactivating without a stop job (a crash being cleaned up before
    Restart= brings it back). A drain on a stop job goes away and does not count."""
    n = 0
    for unit, state in row["units"].items():
        active = state.split("/")[0]
        if active in ("active", "activating", "reloading") or (active == "deactivating" and row["jobs"].get(unit) != "stop"):
            n += 1
    return n


def longest(rows: list[dict], bad: Callable[[dict], bool]) -> float:
    """The longest stretch of consecutive samples for which ``bad(row)`` holds, in seconds."""
    worst, start = 0.0, None
    for row in rows:
        if bad(row):
            start = row["t"] if start is None else start
            worst = max(worst, row["t"] - start)
        else:
            start = None
    return worst


@dataclass
class FaultPlan:
    messages: int = 2000
    waves: int = 2
    seconds: float = 0.5  # each message's work
    kills: int = 6  # SIGKILLs at most, one every kill_every seconds from the first wave on
    kill_every: float = 4.0
    redis_restart: bool = True
    redis_stop: float = 30.0
    scale_to: int = 1
    drain_timeout: float = 420.0
    settings: dict = field(default_factory=dict)


@dataclass
class FaultReport:
    sent: int
    processed: int
    duplicates: int
    dead: int
    kills: int
    max_occupied: int
    below_min: float  # longest stretch with fewer than MIN up or coming back (seconds)
    orphaned_for: float  # longest stretch with orphaned messages reported (seconds)
    max_orphaned: int
    redis_down_ticks: int  # ticks that exited with one line while Redis was stopped
    elapsed: float
    samples: int
    bounds: tuple[int, int]
    scale_down: str

    @property
    def lost(self) -> int:
        return self.sent - self.processed

    def lines(self) -> list[str]:
        lo, hi = self.bounds
        return [
            f"messages sent {self.sent}, processed {self.processed}, lost {self.lost}, duplicates {self.duplicates}, dead-lettered {self.dead}",
            f"faults: {self.kills} SIGKILLs, Redis restart, Redis stop; manual scale-down: {self.scale_down}",
            f"fleet (up or coming back) max {self.max_occupied} (MAX {hi}); longest below MIN {lo}: {self.below_min:.0f}s",
            f"orphaned messages: at most {self.max_orphaned}, longest shown {self.orphaned_for:.0f}s before redelivery",
            f"ticks during the Redis stop that exited with one line: {self.redis_down_ticks}",
            f"{self.samples} samples over {self.elapsed:.0f}s",
        ]


class Killer(threading.Thread):
    """SIGKILLs a random running instance every ``every`` seconds, ``limit`` times at most."""

    def __init__(self, system: System, every: float, limit: int) -> None:
        super().__init__(daemon=True)
        self.system, self.every, self.limit = system, every, limit
        self.kills = 0
        self.done = threading.Event()
        self.rng = random.Random(1)

    def run(self) -> None:
        while self.kills < self.limit and not self.done.wait(self.every):
            victims = self.system.active()
            if victims:  # a kill can race a process that is just exiting: count only real ones
                self.kills += self.system.sh(f"systemctl kill -s KILL {self.rng.choice(victims)}", check=False).returncode == 0


def run(system: System, plan: FaultPlan, wait_until: Callable[..., object], log: Callable[[str], None] = lambda s: None) -> FaultReport:
    """Waves of messages; SIGKILLs throughout; a Redis restart after the first wave, a Redis stop
    after the last; a manual scale-down under load, then resume; until everything drained."""
    values = system.configure(**plan.settings)
    lo, hi = int(values["MIN_PROCESSES"]), int(values["MAX_PROCESSES"])
    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: len(system.active()) >= max(1, lo), 30, "the fleet at MIN")
    waves = [plan.messages // plan.waves + (i < plan.messages % plan.waves) for i in range(plan.waves)]
    sent = sum(waves)
    started = time.monotonic()
    killer = Killer(system, plan.kill_every, plan.kills)
    with Sampler(system) as sampler:
        system.send(waves[0], plan.seconds, prefix="w0-")
        log(f"wave 1: {waves[0]} messages")
        wait_until(lambda: len(system.active()) >= min(3, hi), 60, "the fleet to grow")
        killer.start()
        time.sleep(plan.kill_every * 1.5)
        if plan.redis_restart:
            system.sh("systemctl restart redis-server")
            log("redis restarted")
        for w in range(1, plan.waves):
            time.sleep(plan.kill_every)
            system.send(waves[w], plan.seconds, prefix=f"w{w}-")
            log(f"wave {w + 1}: {waves[w]} messages")
        time.sleep(3)
        stop_at = time.time()
        system.sh("systemctl stop redis-server")
        time.sleep(plan.redis_stop)
        system.sh("systemctl start redis-server")
        log(f"redis stopped for {plan.redis_stop:.0f}s")
        down = [line for line in system.sh(f"journalctl --no-pager -o cat -u dramactl.service --since @{stop_at:.0f}").stdout.splitlines() if "cannot reach Redis" in line]
        time.sleep(3)
        out = system.dramactl("scale-to", str(plan.scale_to)).stdout
        scale_down = out.split(" | ")[-1].strip() if "stopped" in out else out.strip()
        time.sleep(5)
        system.dramactl("resume")
        log("scaled down by hand under load, then resumed")

        def drained() -> bool:
            r = system.redis()
            return r["processed"] >= sent or (r["ready"], r["msgs"], r["delayed"], r["acks"]) == (0, 0, 0, 0)

        wait_until(drained, plan.drain_timeout, "every message processed (or nothing left anywhere)", interval=2)
        killer.done.set()
        killer.join(30)
        log(f"{killer.kills} SIGKILLs")
        wait_until(lambda: len(system.active()) <= max(1, lo), 180, "the fleet back at MIN", interval=1)
        time.sleep(2)
    r = system.redis()
    rows = sampler.rows
    with_redis = [row for row in rows if not row.get("error")]
    return FaultReport(
        sent=sent,
        processed=r["processed"],
        duplicates=r["duplicates"],
        dead=r["dead"],
        kills=killer.kills,
        max_occupied=max(occupied(row) for row in rows),
        below_min=longest(rows, lambda row: occupied(row) < lo),
        orphaned_for=longest(with_redis, lambda row: row.get("orphaned", 0) > 0),
        max_orphaned=max((row.get("orphaned", 0) for row in with_redis), default=0),
        redis_down_ticks=len(down),
        elapsed=time.monotonic() - started,
        samples=len(rows),
        bounds=(lo, hi),
        scale_down=scale_down,
    )
