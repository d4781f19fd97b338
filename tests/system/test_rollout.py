"""Deploys in a booted systemd: `dramactl restart` replaces every instance without losing
capacity or messages; a deploy whose new code does not import stops with the old instances
still serving."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.system import faults
from tests.system.conftest import APP_DIR, DRAMACTL, PYTHON, REPO, System, wait_until

pytestmark = pytest.mark.system

APP = "/srv/rollapp"  # the deployed app's code, on the container's own disk (the overlay)
STREAM_OUT = "/var/tmp/dramactl-stream"
MANAGE = str(REPO / "manage_dramatiq.sh")

# The app as deployed: the system tests' actor ("work" on queue "sys"), recording which
# version of the code processed each message.
APP_CODE = '''\
import os, time
import dramatiq
from dramatiq.brokers.redis import RedisBroker
PORT = 6379
{broken}
VERSION = "{version}"
broker = RedisBroker(host="localhost", port=PORT)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="sys", max_retries=3, min_backoff=200, max_backoff=2000)
def work(ident, seconds):
    client = broker.client
    client.incr("sys:started")
    time.sleep(seconds)
    client.hset("stream:version", ident, VERSION)
    if not client.sadd("sys:processed", ident):
        client.incr("sys:duplicates")
    client.incr("sys:count")
'''


def deploy(system: System, version: str, broken: str = "") -> None:
    """Write the app's code on disk, as a deploy tool would (running instances keep the code they imported)."""
    code = APP_CODE.format(version=version, broken=broken)
    system.sh(f"mkdir -p {APP} && cat > {APP}/rollapp.py.new <<'EOF'\n{code}EOF\nmv {APP}/rollapp.py.new {APP}/rollapp.py")


def pids(system: System) -> dict[str, int]:
    """Running instances -> MainPID, from systemctl."""
    out = system.sh("systemctl show -p Id -p MainPID 'dramatiq-worker@*.service'").stdout
    found = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("MainPID", "0") != "0":
            found[props["Id"]] = int(props["MainPID"])
    return found


class Stream:
    """tests/system/stream.py as a transient unit: one message every ``interval`` seconds."""

    def __init__(self, system: System, interval: float, seconds: float) -> None:
        self.system, self.interval, self.seconds = system, interval, seconds

    def __enter__(self) -> "Stream":
        self.system.sh(f"rm -f {STREAM_OUT}.stop")
        self.system.sh(
            ["systemd-run", "--unit=dramactl-test-stream", "--collect", "--quiet", f"--working-directory={APP_DIR}",
             PYTHON, str(REPO / "tests/system/stream.py"), STREAM_OUT, str(self.interval), str(self.seconds)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.system.sh(f"touch {STREAM_OUT}.stop")
        wait_until(lambda: self.system.sh("systemctl is-active dramactl-test-stream", check=False).stdout.strip() != "active", 15, "the stream to stop")
        self.system.sh(f"rm -f {STREAM_OUT}.stop", check=False)


def watch_status(system: System, running) -> list[str]:
    """`dramactl status` lines starting with "held:", polled while ``running()``."""
    lines: list[str] = []
    while running():
        out = system.dramactl("status", check=False).stdout
        lines += [line for line in out.splitlines() if line.startswith("held:")]
        time.sleep(0.5)
    return lines


def hash_of(system: System, key: str) -> dict[str, str]:
    code = f"import redis, json\nr = redis.Redis(decode_responses=True)\nprint(json.dumps(r.hgetall('{key}')))"
    return system.c.python(PYTHON, code)  # type: ignore[return-value]


def sampler(system: System) -> faults.Sampler:
    """faults.Sampler under a name of its own (a transient unit's name stays taken for a while after it stops)."""
    return faults.Sampler(system, unit=f"dramactl-rollout-sampler-{time.monotonic_ns()}")


def consuming(row: dict) -> int:
    return sum(1 for state in row["units"].values() if state == "active/running")


def test_deploy_under_a_steady_stream_keeps_capacity_and_every_message(system: System) -> None:
    deploy(system, "v1")
    system.configure(DRAMATIQ_COMMAND="dramatiq rollapp", WORKER_DIRECTORY=APP, MIN_PROCESSES="2", MAX_PROCESSES="4")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: len(system.active()) == 2, 30, "the autoscaler to run MIN_PROCESSES=2 instances")
    before = pids(system)
    with sampler(system) as samples, Stream(system, interval=0.1, seconds=0.1):
        time.sleep(4)
        deploy(system, "v2")
        began = time.time()
        seen: list[str] = []
        watcher = threading.Thread(target=lambda: seen.extend(watch_status(system, lambda: ended is None)), daemon=True)
        ended = None
        watcher.start()
        out = system.c.run([MANAGE, "deploy"], env={"DRAMACTL": DRAMACTL}, timeout=300)
        ended = time.time()
        watcher.join(30)
        print(f"\n$ ./manage_dramatiq.sh deploy   ({ended - began:.1f} s)\n{out.stderr}{out.stdout}")
        time.sleep(4)  # the stream goes on after the roll, now served by v2 only
    sent = hash_of(system, "stream:sent")
    wait_until(lambda: system.redis()["count"] >= len(sent), 60, f"all {len(sent)} streamed messages processed")
    r = system.redis()
    versions = hash_of(system, "stream:version")

    # Every message processed once; nothing left anywhere in Redis.
    assert len(sent) > 60 and r["processed"] == len(sent) and r["duplicates"] == 0, (len(sent), r)
    assert (r["ready"], r["msgs"], r["delayed"], r["dead"], r["acks"]) == (0, 0, 0, 0, 0), r
    # Messages sent after the roll were all handled by the new code; earlier ones by either.
    after = [i for i, at in sent.items() if float(at) > ended]
    assert len(after) > 20 and {versions[i] for i in after} == {"v2"}, {versions[i] for i in after}
    assert "v1" in versions.values()
    # Every instance was replaced (new processes), the fleet the same size.
    now = pids(system)
    assert len(now) == 2 and not set(now.values()) & set(before.values()), (before, now)
    # Capacity sampled once a second never fell below what ran before, never passed MAX.
    during = [row for row in samples.rows if began - 1 <= row["t"] <= ended + 1]
    assert len(during) >= 3, samples.rows
    capacity = [consuming(row) for row in during]
    assert min(capacity) >= 2 and max(faults.occupied(row) for row in during) <= 4, capacity

    # `status` said the fleet was held while the roll ran.
    assert any(line.startswith("held: rolling restart of 2 instance(s) in progress since") for line in seen), seen
    # Progress as it went, then one journal entry for the whole roll.
    assert "waiting for READY=1" in out.stderr and "draining @" in out.stderr, out.stderr
    entries = system.sh("journalctl --no-pager -o json SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=restart").stdout.splitlines()
    assert len(entries) == 1, entries
    entry = json.loads(entries[0])
    assert entry["DRAMACTL_OK"] == "1" and entry["DRAMACTL_STARTED"] == "2" and entry["DRAMACTL_STOPPED"] == "2", entry
    assert "rolling restart: 2 instance(s) replaced" in entry["MESSAGE"], entry["MESSAGE"]
    # Ticks during the roll said they were held; the first tick after it sized the fleet again.
    ticks = system.sh("journalctl --no-pager -o cat -u dramactl.service").stdout
    assert "skipped: rolling restart of 2 instance(s) in progress" in ticks, ticks
    wait_until(
        lambda: "workers 2 -> 2" in system.sh(f"journalctl --no-pager -o cat -u dramactl.service --since @{int(ended) + 1}").stdout,
        15,
        "a tick after the roll",
    )


START_LIMIT = "/etc/systemd/system/dramatiq-worker@.service.d/60-test-start-timeout.conf"


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ("import module_that_is_not_installed", "dramatiq-worker@4 did not start (exit status 2 (the app cannot be imported), failed;"),
        ("time.sleep(3600)", "dramatiq-worker@4 did not start (no READY=1 within TimeoutStartSec=6s, "),
        # Dramatiq's consumers retry a connection error for ever: the hook's READY=1 waits for Redis to answer.
        ("PORT = 6390  # a wrong port: nothing listens there", "dramatiq-worker@4 did not start (no READY=1 within TimeoutStartSec=6s, "),
    ],
    ids=["does-not-import", "never-ready", "cannot-reach-redis"],
)
def test_deploy_of_code_that_does_not_start_stops_with_the_old_instances_serving(system: System, broken: str, cause: str) -> None:
    deploy(system, "v1")
    system.configure(DRAMATIQ_COMMAND="dramatiq rollapp", WORKER_DIRECTORY=APP, MAX_PROCESSES="4")
    system.dramactl("scale-to", "3")
    before = pids(system)
    system.sh(f"mkdir -p {START_LIMIT.rsplit('/', 1)[0]} && printf '[Service]\\nTimeoutStartSec=6s\\n' > {START_LIMIT} && systemctl daemon-reload")
    try:
        deploy(system, "v2", broken)
        out = system.dramactl("restart", check=False)
    finally:
        system.sh(f"rm -f {START_LIMIT} && systemctl daemon-reload")
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.startswith("dramactl: rolling restart stopped")]
    assert len(lines) == 1 and cause in lines[0], out.stderr
    # Stopped at the first replacement: the three old instances run as before, nothing failed left behind.
    assert pids(system) == before and system.active() == sorted(before), (before, system.units())
    assert "dramatiq-worker@4.service" not in system.units()
    entry = json.loads(system.sh("journalctl --no-pager -o json SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=restart").stdout)
    assert entry["DRAMACTL_OK"] == "0" and cause in entry["MESSAGE"], entry["MESSAGE"]
    system.send(6, 0.1)
    wait_until(lambda: system.redis()["count"] >= 6, 30, "the old instances to serve")


def child_pid(system: System, main: int) -> int:
    return int(system.sh(f"cat /proc/{main}/task/{main}/children").stdout.split()[0])


@pytest.mark.parametrize("how", ["systemctl reload", "kill -HUP"])
def test_reload_drains_and_comes_back_under_the_same_unit_never_deactivating(system: System, how: str) -> None:
    """SIGHUP is Dramatiq's reload: the unit reloads (RELOADING=1 ... READY=1), it is never
    treated as a stop, and the messages in hand finish or go back to the queue."""
    system.dramactl("scale-to", "1")
    main = pids(system)["dramatiq-worker@1.service"]
    child = child_pid(system, main)
    system.send(6, 1.5)
    wait_until(lambda: system.redis_counter("sys:started") >= 2, 15, "both threads busy")
    with sampler(system) as samples:
        began = time.monotonic()
        if how == "systemctl reload":
            system.sh("systemctl reload dramatiq-worker@1")
            took = time.monotonic() - began
            # The reload job ended at the new process's READY=1, not when the signal was sent.
            assert took > 1.0, took
            assert system.units() == {"dramatiq-worker@1.service": "active/running"}
            assert system.sh("systemctl show -P StatusText dramatiq-worker@1").stdout.startswith("consuming sys")
        else:
            system.sh(f"kill -HUP {main}")
            wait_until(lambda: system.sh("systemctl show -P StatusText dramatiq-worker@1").stdout.startswith("consuming sys")
                       and child_pid(system, main) != child, 30, "the new worker process to consume")
        wait_until(lambda: system.redis()["count"] >= 6, 60, "all 6 messages processed")
        time.sleep(1.5)
    states = {row["units"].get("dramatiq-worker@1.service") for row in samples.rows}
    assert states <= {"active/running", "reloading/reload"} and "active/running" in states, states
    assert pids(system) == {"dramatiq-worker@1.service": main} and child_pid(system, main) != child
    assert system.sh("systemctl show -P NRestarts dramatiq-worker@1").stdout.strip() == "0"
    r = system.redis()
    assert r["processed"] == 6 and r["duplicates"] == 0 and (r["ready"], r["msgs"], r["acks"]) == (0, 0, 0), r


WATCHDOG = "/etc/systemd/system/dramatiq-worker@.service.d/60-test-watchdog.conf"


def test_a_reload_whose_drain_outlasts_the_watchdog_is_not_killed_by_it(system: System) -> None:
    """systemd keeps a unit's watchdog armed while it reloads: the draining process pings it
    until it exits, and the new one right after its READY=1. With WatchdogSec=10s and two
    8 s tasks in hand (the drain alone near the whole watchdog), the reload ends with the
    same main process, no restart, and each message processed once."""
    system.sh(f"mkdir -p {WATCHDOG.rsplit('/', 1)[0]} && printf '[Service]\\nWatchdogSec=10s\\n' > {WATCHDOG} && systemctl daemon-reload")
    try:
        system.dramactl("scale-to", "0")
        wait_until(lambda: not pids(system), 60, "the instances to stop")
        system.dramactl("scale-to", "1")  # started under the short watchdog
        main = pids(system)["dramatiq-worker@1.service"]
        assert system.sh("systemctl show -P WatchdogUSec dramatiq-worker@1").stdout.strip() == "10s"
        since = system.sh("date +%s").stdout.strip()
        system.send(2, 8.0)
        wait_until(lambda: system.redis_counter("sys:started") >= 2, 15, "both threads busy")
        out = system.sh("systemctl reload dramatiq-worker@1", check=False)
        assert out.returncode == 0, (out.stdout, out.stderr)
        wait_until(lambda: system.redis()["count"] >= 2, 60, "both messages processed")
        time.sleep(12)  # longer than WatchdogSec: the new process keeps pinging
        journal = system.sh(f"journalctl --no-pager -o cat -u dramatiq-worker@1 --since @{since}").stdout
        assert "Watchdog timeout" not in journal, journal[-2000:]
        assert pids(system) == {"dramatiq-worker@1.service": main}
        assert system.sh("systemctl show -P NRestarts dramatiq-worker@1").stdout.strip() == "0"
        r = system.redis()
        assert r["processed"] == 2 and r["duplicates"] == 0 and (r["ready"], r["msgs"], r["acks"]) == (0, 0, 0), r
    finally:
        system.sh(f"rm -f {WATCHDOG} && systemctl daemon-reload")
        system.dramactl("scale-to", "0")


LEAK_CODE = '''\
import time
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(host="localhost", port=6379)
dramatiq.set_broker(broker)
KEPT = []  # what the leak holds on to, for the life of the process


@dramatiq.actor(queue_name="sys", max_retries=3, min_backoff=200, max_backoff=2000)
def work(ident, seconds):
    client = broker.client
    client.incr("sys:started")
    KEPT.append(b"x" * (4 << 20))  # 4 MiB, written, so resident
    time.sleep(seconds)
    if not client.sadd("sys:processed", ident):
        client.incr("sys:duplicates")
    client.incr("sys:count")
'''


def memory_accounting(system: System) -> None:
    """systemd in the container accounts and limits memory, as on any cgroup v2 host. On a cgroup v1
    host, systemd-nspawn mounts the memory controller read-only in the container (MemoryCurrent is
    then "[not set]" and MemoryMax= does nothing): make it writable there and let systemd see it."""
    mounts = system.sh("cat /proc/self/mounts").stdout
    if any(line.split()[1] == "/sys/fs/cgroup/memory" and "ro" in line.split()[3].split(",") for line in mounts.splitlines()):
        system.sh("mount -o remount,bind,rw /sys/fs/cgroup/memory && systemctl daemon-reexec")


def test_an_instance_that_leaks_is_recycled_before_memory_max_kills_it(system: System) -> None:
    memory_accounting(system)
    system.sh(f"mkdir -p {APP} && cat > {APP}/rollapp.py <<'EOF'\n{LEAK_CODE}EOF")
    system.configure(
        DRAMATIQ_COMMAND="dramatiq rollapp", WORKER_DIRECTORY=APP, WORKER_MEMORY_MAX="384M", WORKER_RECYCLE_MEMORY="128M",
        # A leak this fast (below) needs recycling sooner than the default 5 minutes after a start: 3 ticks (9 s).
        WORKER_RECYCLE_MIN_AGE="0",
    )
    assert system.sh("systemctl show -P MemoryMax dramatiq-worker@1").stdout.strip() == str(384 << 20)
    system.dramactl("scale-to", "1")
    assert int(system.sh("systemctl show -P MemoryCurrent dramatiq-worker@1").stdout) < 128 << 20
    system.sh("systemctl start dramactl.timer")
    # 400 MiB of leak in all, 16 MiB/s on one instance of 2 threads: past MemoryMax without recycling,
    # 16 s from WORKER_RECYCLE_MEMORY to MemoryMax with it.
    system.send(100, 0.5)
    wait_until(lambda: system.redis()["count"] >= 100, 120, "all 100 messages processed")
    system.sh("systemctl stop dramactl.timer")
    # A tick may be recycling right now: let it finish (journal line, state, metrics) before reading them.
    wait_until(lambda: system.sh("systemctl is-active dramactl.service", check=False).stdout.strip() != "active"
               and system.sh("systemctl is-active dramactl.service", check=False).stdout.strip() != "activating", 60, "the last tick to end")
    r = system.redis()
    assert r["processed"] == 100 and r["duplicates"] == 0 and (r["ready"], r["msgs"], r["acks"], r["dead"]) == (0, 0, 0, 0), r

    # Never the kernel: no worker process OOM-killed (Dramatiq's main process logs a child killed by
    # SIGKILL as "exited unexpectedly (code -9)"), no restart.
    workers = system.sh("journalctl --no-pager -o cat -u 'dramatiq-worker@*'").stdout
    assert "oom" not in workers.lower() and "exited unexpectedly" not in workers, workers[-3000:]
    ticks = system.sh("journalctl --no-pager -o cat -u dramactl.service").stdout
    recycles = [line for line in ticks.splitlines() if "| recycle @" in line]
    print("\n".join(recycles))
    assert all(" MiB > 128 MiB) | started @" in line for line in recycles), ticks
    # A replacement that does not start leaves the old instance serving, and a later tick recycles it.
    replaced = [line for line in recycles if "| stopped @" in line]
    unstarted = [line for line in recycles if "| stopped @" not in line]
    assert replaced and all(":failed" in line and "did not start" in line for line in unstarted), ticks
    gone = {line.split("| started @", 1)[1].split(":", 1)[0] for line in unstarted}  # their NRestarts may be 1
    units = system.sh("systemctl show -p Id -p NRestarts 'dramatiq-worker@*.service'").stdout.split("\n\n")
    shown = [dict(line.split("=", 1) for line in u.split()) for u in units if "Id=" in u]
    restarts = {u["Id"].split("@", 1)[1].split(".", 1)[0]: u["NRestarts"] for u in shown}
    assert restarts and all(n == "0" for i, n in restarts.items() if i not in gone), units
    # Counted (the replaced ones), and in the history's own field (each attempt).
    metrics = system.dramactl("metrics").stdout
    assert f"dramactl_recycles_total {len(replaced)}" in metrics, metrics
    fields = system.sh("journalctl --no-pager -o json SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=tick").stdout.splitlines()
    assert sum(1 for f in fields if "DRAMACTL_RECYCLE" in json.loads(f)) == len(recycles)
    status = system.dramactl("status").stdout
    assert "MEMORY" in status and " MiB" in status.split("MEMORY", 1)[1], status
