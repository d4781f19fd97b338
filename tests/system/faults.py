"""The bad-day scenario, shared by the CI-sized test (tests/system/test_faults.py) and the
10,000-message benchmark (bench/fault_soak.py): a mixed workload (plain messages, time-limited
ones, some failing once so they retry, pipelines) runs while whole units and Dramatiq's worker
child processes are SIGKILLed, Redis restarts, hangs (SIGSTOP, then SIGCONT) and stops, and the
fleet is scaled down by hand; a sampler inside the container watches systemd and Redis once a
second. The report says what was lost, what ran twice, what was left stranded in an ack set, and
how the fleet size and the orphaned messages behaved.
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
    kills: int = 6  # SIGKILLs of whole units at most, one every kill_every seconds from the first wave on
    child_kills: int = 3  # SIGKILLs of Dramatiq's worker child process at most, taking turns with the unit kills
    kill_every: float = 4.0
    redis_restart: bool = True
    redis_hang: float = 30.0  # Redis SIGSTOPped this long, then SIGCONT: hung, not stopped
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
    stranded: int  # ids left in any ack set once drained and a heartbeat timeout passed
    kills: int
    child_kills: int
    workload: str
    hook: str  # what the hook did, from the workers' journal
    outlived: int  # processes systemd reported alive after their unit stopped, or a unit cgroup it could not kill
    leftovers: list  # when something is lost or stranded: what is left where, and the journal lines naming it
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
            f"messages sent {self.sent}, processed {self.processed}, lost {self.lost}, duplicates {self.duplicates}, dead-lettered {self.dead}, stranded {self.stranded}",
            f"workload: {self.workload}",
            f"faults: {self.kills} SIGKILLs of units, {self.child_kills} of worker child processes, Redis restart, Redis hang, Redis stop; "
            f"manual scale-down: {self.scale_down}",
            f"hook: {self.hook}",
            f"processes that outlived their unit: {self.outlived}",
            f"fleet (up or coming back) max {self.max_occupied} (MAX {hi}); longest below MIN {lo}: {self.below_min:.0f}s",
            f"orphaned messages: at most {self.max_orphaned}, longest shown {self.orphaned_for:.0f}s before redelivery",
            f"ticks during the Redis stop that exited with one line: {self.redis_down_ticks}",
            f"{self.samples} samples over {self.elapsed:.0f}s",
        ] + self.leftovers


class Killer(threading.Thread):
    """Every ``every`` seconds SIGKILLs a random running instance: the whole unit (``limit``
    times at most) or, taking turns with those, Dramatiq's worker child process (``child_limit``
    times at most; its main process then exits and systemd restarts the unit)."""

    def __init__(self, system: System, every: float, limit: int, child_limit: int = 0) -> None:
        super().__init__(daemon=True)
        self.system, self.every, self.limit, self.child_limit = system, every, limit, child_limit
        self.kills = 0
        self.child_kills = 0
        self.done = threading.Event()
        self.rng = random.Random(1)

    def run(self) -> None:
        turn = 0
        while (self.kills < self.limit or self.child_kills < self.child_limit) and not self.done.wait(self.every):
            victims = self.system.active()
            if not victims:
                continue
            victim = self.rng.choice(victims)
            child = self.child_kills < self.child_limit and (turn % 2 == 1 or self.kills >= self.limit)
            turn += 1
            # A kill can race a process that is just exiting: count only real ones.
            if child:
                self.child_kills += kill_child(self.system, victim)
            else:
                self.kills += kill_unit(self.system, victim)


def kill_unit(system: System, unit: str) -> bool:
    """`systemctl kill -s KILL` ``unit``: every process in its cgroup, the worker child with the main
    process. True when its main process is gone (a kill can race a process that is just exiting)."""
    script = (
        f"pid=$(systemctl show -P MainPID {unit}); [ \"$pid\" -gt 0 ] || exit 1; "
        f"systemctl kill -s KILL {unit}; sleep 0.3; ! kill -0 $pid 2>/dev/null"
    )
    return system.sh(script, check=False).returncode == 0


def kill_child(system: System, unit: str) -> bool:
    """SIGKILL the worker child process of ``unit`` (a child of its MainPID, not the MainPID)."""
    script = (
        f"pid=$(systemctl show -P MainPID {unit}); [ \"$pid\" -gt 0 ] || exit 1; "
        "child=$(cat /proc/$pid/task/$pid/children 2>/dev/null | awk '{print $1}'); [ -n \"$child\" ] || exit 1; "
        "kill -KILL $child"
    )
    return system.sh(script, check=False).returncode == 0


class RedisHang:
    """redis-server's MainPID SIGSTOPped (a hung server: connections accepted, nothing answered),
    SIGCONT on leaving, whatever happened in between."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.pid = 0

    def __enter__(self) -> "RedisHang":
        self.pid = int(self.system.sh("systemctl show -P MainPID redis-server").stdout.strip() or 0)
        assert self.pid > 0, "redis-server is not running"
        self.system.sh(f"kill -STOP {self.pid}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.system.sh(f"kill -CONT {self.pid}", check=False)


def settle(predicate: Callable[[], object], timeout: float, interval: float = 1.0) -> bool:
    """Poll until predicate() is truthy or timeout passes; the report tells the rest."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


LEFTOVERS = """
import json, time, redis
r = redis.Redis()
now = time.time() * 1000
beats = dict(r.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True))
out = []
for key in sorted(r.scan_iter("dramatiq:__acks__.*")):
    worker, queue = key.decode().split("__acks__.", 1)[1].split(".", 1)
    age = beats.get(worker.encode())
    for rid in sorted(r.smembers(key)):
        body = r.hget(f"dramatiq:{queue}.msgs", rid)
        m = json.loads(body) if body else {}
        out.append({"where": f"ack set of worker {worker[:8]} (heartbeat {'gone' if age is None else '%.0fs ago' % ((now - age) / 1000)}), queue {queue}",
                    "id": m.get("message_id", rid.decode() + " (no body)"), "what": f"{m.get('actor_name')}{tuple(m.get('args', ()))}"})
print(json.dumps(out))
"""


def leftovers(system: System, waves: list[int], limit: int = 5) -> list[str]:
    """The idents never processed, what is left in the ack sets, and the workers' journal lines
    naming the first few."""
    processed = set(system.sh("redis-cli --raw smembers sys:processed").stdout.split())
    lost = [f"w{w}-{i}" for w, n in enumerate(waves) for i in range(n) if f"w{w}-{i}" not in processed]
    lines = [f"lost: {len(lost)} ident(s): {' '.join(lost[:20])}{' ...' if len(lost) > 20 else ''}"] if lost else []
    for ident in lost[:limit]:
        found = system.sh(f"journalctl --no-pager -o short-precise -u 'dramatiq-worker@*' -g \"'{ident}'\"", check=False).stdout
        lines += [f"  journal: {line}" for line in found.splitlines()[-8:] if ident in line]
    left = system.c.python(PYTHON, LEFTOVERS) or []
    lines += [f"left: {item['what']} message {item['id']} in the {item['where']}" for item in left]
    for item in left[:limit]:
        found = system.sh(f"journalctl --no-pager -o short-precise -u 'dramatiq-worker@*' -g {item['id']}", check=False).stdout
        lines += [f"  journal: {line}" for line in found.splitlines()[-8:] if item["id"] in line]
    return lines


def outlived(text: str) -> int:
    """systemd's lines, in the workers' journal ``text``, for a process that outlived its unit (a
    kill that did not take the whole cgroup)."""
    return text.count("Failed to kill control group") + text.count("remains running after unit stopped")


def hook_summary(text: str) -> str:
    """What the hook did in the workers, from their journal ``text``: holds and hand-backs."""
    held = text.count("dramactl: holding message ")
    stored = text.count("follow-up(s) stored after holding")
    unacked = text.count("interrupted, so its follow-ups (a retry, a next step, a result) may not exist")
    handed = sum(int(line.split("handed ", 1)[1].split(" ", 1)[0]) for line in text.splitlines() if "dramactl: handed " in line)
    return f"{held} message(s) held for their follow-ups ({stored} stored, then acked), {unacked} left unacked after an interrupt, {handed} stranded id(s) handed back by the sweep"


def run(system: System, plan: FaultPlan, wait_until: Callable[..., object], log: Callable[[str], None] = lambda s: None) -> FaultReport:
    """Waves of the mixed workload; SIGKILLs of units and worker children throughout; a Redis
    restart after the first wave, a Redis hang then a Redis stop after the last; a manual
    scale-down under load, then resume; until everything drained; then a heartbeat timeout,
    after which nothing may be left in any ack set."""
    values = system.configure(**plan.settings)
    lo, hi = int(values["MIN_PROCESSES"]), int(values["MAX_PROCESSES"])
    heartbeat = int(values.get("SYSAPP_HEARTBEAT_TIMEOUT", "60000")) / 1000
    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: len(system.active()) >= max(1, lo), 30, "the fleet at MIN")
    waves = [plan.messages // plan.waves + (i < plan.messages % plan.waves) for i in range(plan.waves)]
    sent = sum(waves)
    started = time.monotonic()
    killer = Killer(system, plan.kill_every, plan.kills, plan.child_kills)
    with Sampler(system) as sampler:
        system.send_mix(waves[0], plan.seconds, prefix="w0-")
        log(f"wave 1: {waves[0]} messages")
        wait_until(lambda: len(system.active()) >= min(3, hi), 60, "the fleet to grow")
        killer.start()
        time.sleep(plan.kill_every * 1.5)
        if plan.redis_restart:
            system.sh("systemctl restart redis-server")
            log("redis restarted")
        for w in range(1, plan.waves):
            time.sleep(plan.kill_every)
            system.send_mix(waves[w], plan.seconds, prefix=f"w{w}-")
            log(f"wave {w + 1}: {waves[w]} messages")
        time.sleep(3)
        if plan.redis_hang:
            with RedisHang(system):
                time.sleep(plan.redis_hang)
            log(f"redis hung (SIGSTOP) for {plan.redis_hang:.0f}s, then SIGCONT")
            time.sleep(5)
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

        # Drained: every message processed, or nothing ready and no progress for three heartbeat
        # timeouts (what is missing then is lost or stranded: the report says which).
        progress = {"at": time.monotonic(), "seen": None}

        def drained() -> bool:
            r = system.redis()
            if r["processed"] >= sent:
                return True
            seen = (r["processed"], r["count"], r["ready"], r["delayed"])
            if seen != progress["seen"]:
                progress.update(at=time.monotonic(), seen=seen)
            return r["ready"] == 0 and time.monotonic() - progress["at"] > 3 * heartbeat

        wait_until(drained, plan.drain_timeout, "every message processed (or no progress for three heartbeat timeouts)", interval=2)
        log("drained")
        killer.done.set()
        killer.join(30)
        log(f"{killer.kills} SIGKILLs of units, {killer.child_kills} of worker children")
        wait_until(lambda: len(system.active()) <= max(1, lo), 180, "the fleet back at MIN", interval=1)
        # A heartbeat timeout (and a maintenance round) later, no ack set may hold anything: a dead
        # worker's went back to the queue, a live worker holds nothing once the queue drained.
        time.sleep(heartbeat + 5 + 2)
        if system.redis()["processed"] < sent:  # drained by a stall: give what came back a chance to run
            settle(lambda: system.redis()["processed"] >= sent, 30)
    r = system.redis()
    rows = sampler.rows
    left = leftovers(system, waves) if r["acks"] or r["processed"] < sent else []
    with_redis = [row for row in rows if not row.get("error")]
    kinds = [(i % 4) for w in waves for i in range(w)]
    workload = (
        f"{kinds.count(0)} plain, {kinds.count(1) + kinds.count(2)} time-limited ({kinds.count(1)} failing once: "
        f"{r['failed']} failures), {kinds.count(3)} two-step pipelines"
    )
    workers_journal = system.sh("journalctl --no-pager -o cat -u 'dramatiq-worker@*'", check=False).stdout
    return FaultReport(
        sent=sent,
        processed=r["processed"],
        duplicates=r["duplicates"],
        dead=r["dead"],
        stranded=r["acks"],
        kills=killer.kills,
        child_kills=killer.child_kills,
        workload=workload,
        hook=hook_summary(workers_journal),
        outlived=outlived(workers_journal),
        leftovers=left,
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
