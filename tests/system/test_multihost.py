"""Several hosts, one fleet (issue 13): three booted systemds share one Redis (tests/system/multihost.py).

With FLEET_NAME set, the hosts of one name size the fleet together: FLEET_MAX_PROCESSES caps the
fleet-wide total, MIN_PROCESSES applies to the whole fleet, each host stays within its own
MAX_PROCESSES, and a host whose heartbeat expired (FLEET_HOST_TTL) is dropped and its share taken
over. A 1 s sampler outside the containers counts each host's occupied instances (faults.occupied)
in the same iteration, so the fleet-wide sum is the sum of one row.

Interface used (status --json): ``fleet`` = {"name", "target", "cap", ...} or null without
FLEET_NAME; ``hosts`` = [{"name", "up", "share", "max", "last_tick", "live"}, ...]; host name =
the container's hostname. A bad config: the tick's one error line in ``journalctl -u dramactl.service``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import need
from tests.system.conftest import wait_until
from tests.system.harness import machine_name, missing_requirements
from tests.system.multihost import REDIS_URL, SHARED_DIR, Cluster, FleetSampler, Host, StatusPoller, row_at

pytestmark = pytest.mark.system

INTERVAL = 3  # CHECK_INTERVAL
TTL = 10  # FLEET_HOST_TTL
CAP = 6  # FLEET_MAX_PROCESSES
HEARTBEAT = 10  # the test app's Dramatiq heartbeat timeout (s): a dead host's messages come back after it
MAX = {"a": 2, "b": 3, "c": 4}  # each host's own MAX_PROCESSES
COMMON = {
    "CHECK_INTERVAL": str(INTERVAL),
    "WORKER_THREADS": "2",
    "MIN_PROCESSES": "1",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "5",
    "SCALE_DOWN_STABILIZATION": "6",
    "SYSAPP_HEARTBEAT_TIMEOUT": str(HEARTBEAT * 1000),
}
FLEET = {**COMMON, "FLEET_NAME": "t", "FLEET_MAX_PROCESSES": str(CAP), "FLEET_HOST_TTL": str(TTL)}
PER_HOST = {x: {"MAX_PROCESSES": str(m)} for x, m in MAX.items()}
SETTLE = 2 * INTERVAL + 3  # a target held this long: the hosts have acted on it (two ticks, workers starting)
SLACK = 5  # a tick's own duration and a loaded 2-core CI machine


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = missing_requirements()
    need(why is None, why or "")
    # The containers are PREFIX-a, PREFIX-b, PREFIX-c (machine_name: DRAMACTL_TEST_MACHINE, xdist's worker).
    c = Cluster(machine_name("dramactl-test"))
    try:
        c.boot()
        print(f"\n[multihost] shared Redis and three containers booted in {c.boot_seconds:.1f}s", file=sys.stderr)
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def hosts(cluster: Cluster) -> Cluster:
    cluster.reset()
    return cluster


def letter(host: Host) -> str:
    return host.name.rsplit("-", 1)[1]


def live_hosts(status: dict | None) -> set[str]:
    return {h["name"] for h in (status or {}).get("hosts") or [] if h.get("live")}


def listed_hosts(status: dict | None) -> set[str]:
    return {h["name"] for h in (status or {}).get("hosts") or []}


def bounds(sampler: FleetSampler, cluster: Cluster, cap: int | None) -> tuple[int, dict[str, int], list[str]]:
    """The fleet-wide and per-host peaks, and every sample above the fleet cap or a host's own MAX."""
    peaks = {h.name: 0 for h in cluster.hosts}
    peak, over = 0, []
    for row in sampler.rows:
        total = sampler.total(row)
        if cap is not None and total > cap:
            over.append(f"{total} fleet-wide at {row['t']:.0f} ({sampler.per_host(row)}) > FLEET_MAX_PROCESSES={cap}")
        for h in cluster.hosts:
            n = sampler.occupied(row, h.name)
            if n > MAX[letter(h)]:
                over.append(f"{h.name}: {n} at {row['t']:.0f} > its MAX_PROCESSES={MAX[letter(h)]}")
            peaks[h.name] = max(peaks[h.name], n)
        peak = max(peak, total)
    return peak, peaks, over


def converged(polls: list[tuple[float, int]], sampler: FleetSampler) -> list[tuple[int, int, int]]:
    """(lowest, highest target, sampled sum) wherever the targets polled over the last SETTLE
    seconds stayed within 1 of each other: the hosts had two ticks and start-up to act on it."""
    out = []
    for t, _ in polls:
        if t - polls[0][0] < SETTLE:
            continue
        window = [target for u, target in polls if t - SETTLE <= u <= t]
        row = row_at(sampler.rows, t)
        if row is not None and max(window) - min(window) <= 1:
            out.append((min(window), max(window), sampler.total(row)))
    return out


def settled_status(status: dict, cluster: Cluster) -> bool:
    """The drained fleet as one host's status should show it: target 1, three live hosts, shares
    summing to the target, one instance up across them."""
    fleet, listed = status.get("fleet"), status.get("hosts") or []
    return bool(
        fleet and fleet.get("target") == 1 and len(listed) == len(cluster.hosts) and all(h.get("live") for h in listed)
        and sum(h.get("share", 0) for h in listed) == 1 and sum(h.get("up", 0) for h in listed) == 1
    )


def wait_live(host: Host, names: set[str], timeout: float) -> dict:
    """Wait until exactly ``names`` are live in ``host``'s status --json hosts; fail showing what it said."""
    seen: dict = {}

    def ok() -> bool:
        status = host.status()
        seen.update(fleet=status.get("fleet", "<no 'fleet' key>"), hosts=status.get("hosts", "<no 'hosts' key>"))
        return live_hosts(status) == names

    try:
        wait_until(ok, timeout, f"{sorted(names)} live in {host.name}'s status --json hosts")
    except pytest.fail.Exception:
        pytest.fail(f"{sorted(names)} never live in {host.name}'s status --json within {timeout}s; last fleet: {seen.get('fleet')!r}, hosts: {seen.get('hosts')!r}")
    return seen


def start_fleet(cluster: Cluster) -> None:
    """Start the timer on every host; wait until all three are registered and live in A's status."""
    for h in cluster.hosts:
        h.start_timer()
    wait_live(cluster["a"], {h.name for h in cluster.hosts}, 60)


def test_three_hosts_share_one_redis(hosts: Cluster) -> None:
    """The harness itself (no fleet): every host reaches the host's Redis over the bound socket, its
    own redis-server is masked, a worker on A consumes what B sends, and the scaler service ticks
    with the unix:// REDIS_URL on every host."""
    for h in hosts.hosts:
        assert h.hostname() == h.name
        assert h.sh(f"redis-cli -s {SHARED_DIR}/redis.sock ping").stdout.strip() == "PONG"
        assert h.sh("systemctl is-enabled redis-server", check=False).stdout.strip() == "masked"
    ids = {h.sh("cat /etc/machine-id").stdout.strip() for h in hosts.hosts}
    assert len(ids) == 3, ids

    hosts.configure(COMMON, {"a": {"MAX_PROCESSES": "1"}, "b": {"MIN_PROCESSES": "0"}, "c": {"MIN_PROCESSES": "0"}})
    hosts.each(lambda h: h.sh("systemctl start dramactl.service"))  # one tick each, as the timer runs it
    for h in hosts.hosts:
        log = h.journal()
        assert re.search(r"^queues ready=0 .*\| workers 0 -> [01] \|", log, re.M), log[-2000:]
    wait_until(lambda: hosts["a"].active() == ["dramatiq-worker@1.service"], 30, "A's one worker running")
    assert hosts["b"].units() == {} and hosts["c"].units() == {}

    hosts.send(40, 0.1, via=hosts["b"])
    wait_until(lambda: hosts.counts()["processed"] == 40, 60, "A's worker to process B's 40 messages")
    r = hosts.counts()
    assert (r["processed"], r["duplicates"], r["ready"], r["msgs"], r["dead"]) == (40, 0, 0, 0, 0), r
    assert "Worker process is ready for action" in hosts["a"].journal("dramatiq-worker@1.service")
    env = hosts["a"].sh("cat /proc/$(systemctl show -P MainPID dramatiq-worker@1)/environ | tr '\\0' '\\n'").stdout
    assert f"REDIS_URL={REDIS_URL}" in env.splitlines()
    assert hosts.redis.client().zcard("dramatiq:__heartbeats__") >= 1, "no worker heartbeat in the shared Redis"


def test_each_host_has_cgroups_of_its_own(hosts: Cluster) -> None:
    """The harness itself: hosts booted at once do not share a cgroup tree, so a unit on one host never
    holds another host's processes. (systemd-nspawn --keep-unit puts its container under the caller's
    cgroup: the three hosts shared one, and with one unit name on two hosts systemd could not kill the
    unit's cgroup, "Input/output error", nor start it again after a stop: "already loaded".)"""
    a, b = hosts["a"], hosts["b"]
    cgroups = {h.name: Path(f"/proc/{h.c.pid1}/cgroup").read_text() for h in hosts.hosts}
    assert len(set(cgroups.values())) == 3, cgroups
    for h in (a, b):
        h.sh("systemd-run --unit=harness-probe sleep 300")
    try:
        a.sh("systemctl stop harness-probe")
        a.sh("systemd-run --unit=harness-probe true")  # the same name again once stopped
        log = a.journal("harness-probe.service")
        assert "Failed to kill control group" not in log, log
        assert b.sh("systemctl is-active harness-probe", check=False).stdout.strip() == "active"
    finally:
        for h in (a, b):
            h.sh("systemctl stop harness-probe; systemctl reset-failed harness-probe", check=False)


def test_burst_within_fleet_cap_and_each_max_then_drain_to_fleet_min(hosts: Cluster) -> None:
    """MAX 2, 3, 4 on A, B, C, FLEET_MAX_PROCESSES=6, MIN_PROCESSES=1: a 600-message burst never
    puts more than 6 up fleet-wide nor more than a host's MAX on it; once the fleet target holds,
    the hosts' sum is that target (±1); every message runs; drained, the fleet shrinks to ONE
    instance across the three hosts, and each host's status lists three live hosts whose shares
    sum to the fleet target."""
    hosts.configure(FLEET, PER_HOST)
    start_fleet(hosts)
    sent = 600
    with FleetSampler(hosts) as sampler, StatusPoller(hosts["a"]) as poller:
        wait_until(lambda: sampler.rows and sampler.total(sampler.rows[-1]) == 1 and len(sampler.rows) > 2, 60, "the fleet at MIN_PROCESSES=1 before the burst")
        landed = time.time()
        hosts.send(sent, 0.5)
        wait_until(lambda: hosts.counts()["processed"] >= sent, 150, f"all {sent} messages processed", interval=1)
        done = time.time()

        def settled_at_min() -> bool:
            last = sampler.rows[-3:]
            return len(last) == 3 and all(r["t"] > done for r in last) and all(sampler.total(r) == 1 for r in last)

        wait_until(settled_at_min, 6 + 6 * INTERVAL + 5 + 20, "the fleet back at ONE instance across the hosts", interval=1)
        shrunk = time.time() - done
        # Each host reports its own figures at its own tick: give every host a tick to catch up.
        deadline = time.monotonic() + 60
        while True:
            statuses = {h.name: h.status() for h in hosts.hosts}
            if all(settled_status(s, hosts) for s in statuses.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)

    peak, peaks, over = bounds(sampler, hosts, CAP)
    grown = next((r["t"] - landed for r in sampler.rows if r["t"] > landed and sampler.total(r) >= CAP - 1), None)

    # Convergence: wherever A's status showed the fleet target steady (within 1) for SETTLE seconds,
    # the sampled fleet-wide sum is within 1 of it.
    polls = [(t, s["fleet"]["target"]) for t, s in poller.polls if s and s.get("fleet")]
    checked = converged(polls, sampler) if polls else []
    off = [(lo, hi, total) for lo, hi, total in checked if not lo - 1 <= total <= hi + 1]
    r = hosts.counts()
    print(
        f"\n[multihost] burst of {sent}: fleet peak {peak} (cap {CAP}), per host {peaks}; near the cap {grown if grown is None else round(grown, 1)}s"
        f" after the burst; {len(checked) - len(off)}/{len(checked)} settled samples within target ±1; back at 1 instance"
        f" {shrunk:.1f}s after the last message; processed {r['processed']}, duplicates {r['duplicates']}; {len(sampler.rows)} samples"
    )
    assert not over, over[:10]
    assert polls, f"status --json never showed a fleet: {[(s or {}).get('fleet') for _, s in poller.polls[-3:]]}"
    assert any(lo >= CAP - 1 for lo, _, _ in checked), f"the burst never held a fleet target near the cap for {SETTLE}s: {polls}"
    assert not off, f"fleet-wide occupied vs a settled fleet target (target low, high, sum): {off} of {len(checked)}"
    assert peak >= CAP - 1, f"the fleet never grew near FLEET_MAX_PROCESSES={CAP}: peak {peak}"
    assert r["processed"] == sent and r["dead"] == 0, r
    assert (r["ready"], r["msgs"], r["delayed"], r["acks"]) == (0, 0, 0, 0), r

    for name, status in statuses.items():
        fleet = status["fleet"]
        assert (fleet["name"], fleet["cap"], fleet["target"]) == ("t", CAP, 1), (name, fleet)
        listed = {h["name"]: h for h in status["hosts"]}
        assert set(listed) == {h.name for h in hosts.hosts}, (name, status["hosts"])
        assert all(h["live"] for h in listed.values()), (name, status["hosts"])
        assert sum(h["share"] for h in listed.values()) == fleet["target"], (name, status["hosts"])
        assert sum(h["up"] for h in listed.values()) == 1, (name, status["hosts"])
        for h in hosts.hosts:
            assert listed[h.name]["max"] == MAX[letter(h)], (name, listed[h.name])
            assert listed[h.name]["last_tick"] > time.time() - (INTERVAL + TTL), (name, listed[h.name])


def test_a_host_with_a_bad_config_drops_out_and_the_others_carry_on(hosts: Cluster) -> None:
    """C's env file says MAX_PROCESSES=abc: its ticks exit with the one-line error and it never
    registers; A and B size the fleet between them and process everything."""
    hosts.configure(FLEET, PER_HOST)
    bad = hosts["c"]
    bad.write_env({**bad.values, "MAX_PROCESSES": "abc"})
    error = "MAX_PROCESSES: 'abc'"  # the SettingsError line names the setting and the value
    sent = 200
    with FleetSampler(hosts) as sampler, StatusPoller(hosts["a"]) as poller:
        for h in hosts.hosts:
            h.start_timer()
        wait_until(lambda: error in bad.journal(), 30, "C's tick failing on MAX_PROCESSES=abc")
        wait_live(hosts["a"], {hosts["a"].name, hosts["b"].name}, 60)
        hosts.send(sent, 0.5)
        wait_until(lambda: hosts.counts()["processed"] >= sent, 120, f"all {sent} messages processed by A and B", interval=1)
        statuses = {h.name: h.status() for h in (hosts["a"], hosts["b"])}

    peak, peaks, over = bounds(sampler, hosts, CAP)
    lines = [line for line in bad.journal(identifier="dramactl").splitlines() if line.strip()]
    r = hosts.counts()
    print(f"\n[multihost] bad config on C: {len(lines)} failed tick(s), one line each; A and B peaked at {peaks}; processed {r['processed']}/{sent}")
    assert not over, over[:10]
    assert peaks[bad.name] == 0, f"C started workers with a bad config: {peaks}"
    assert peak >= 2, f"A and B never grew for the burst: {peaks}"
    assert lines and all(error in line for line in lines), f"C's tick output is not just its one-line error: {lines[:5]}"
    assert "Traceback" not in bad.journal()
    assert not any(bad.name in listed_hosts(s) for _, s in poller.polls), "C showed up in A's hosts list"
    for name, status in statuses.items():
        assert live_hosts(status) == {hosts["a"].name, hosts["b"].name}, (name, status["hosts"])
        assert bad.name not in listed_hosts(status), (name, status["hosts"])
    assert r["processed"] == sent and r["dead"] == 0, r


def test_without_fleet_name_each_host_sizes_to_the_whole_backlog(hosts: Cluster) -> None:
    """FLEET_NAME unset everywhere: today's single-host behaviour, each host on its own sizes to the
    whole shared backlog up to its own MAX (2 + 3 + 4 = 9 instances, no fleet cap)."""
    hosts.configure(COMMON, PER_HOST)
    with FleetSampler(hosts) as sampler:
        for h in hosts.hosts:
            h.start_timer()
        hosts.send(300, 1.0)
        wait_until(
            lambda: sampler.rows and all(sampler.occupied(sampler.rows[-1], h.name) == MAX[letter(h)] for h in hosts.hosts),
            3 * INTERVAL + 10,
            "every host at its own MAX",
        )
        # The tick's line comes once its start jobs finished (nine workers starting at once on CI take a while).
        for h in hosts.hosts:
            wait_until(lambda: re.search(rf"\| workers \d+ -> {MAX[letter(h)]} \|", h.journal()), 30, f"{h.name}'s tick sizing to its MAX")
    _, peaks, over = bounds(sampler, hosts, None)
    assert not over, over[:10]
    for h in hosts.hosts:
        assert h.status().get("fleet") is None
    print(f"\n[multihost] no FLEET_NAME: peaks {peaks}, {sum(peaks.values())} instances for one backlog")


def test_a_host_powered_off_mid_burst_is_taken_over_and_nothing_is_lost(hosts: Cluster) -> None:
    """C loses power (SIGKILL of its PID 1) while the fleet runs at the cap: within CHECK_INTERVAL +
    FLEET_HOST_TTL (+ a tick) A and B run what they can of its share (min(cap, 2 + 3) = 5), C is no
    longer live in A's status, and every message is processed (C's are redelivered once its
    workers' heartbeats expire; duplicates counted)."""
    hosts.configure(FLEET, PER_HOST)
    start_fleet(hosts)
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    sent = 600
    expected = min(CAP, MAX["a"] + MAX["b"])
    with FleetSampler(hosts) as sampler, StatusPoller(a) as poller:
        hosts.send(sent, 1.0)
        wait_until(
            lambda: sampler.rows and sampler.total(sampler.rows[-1]) >= CAP - 1 and sampler.occupied(sampler.rows[-1], c.name) >= 1,
            3 * INTERVAL + 15,
            "the fleet near the cap with C running its share",
        )
        before = sampler.per_host(sampler.rows[-1])
        c.c.kill()
        killed = time.time()

        def taken_over() -> float | None:
            return next((r["t"] for r in sampler.rows if r["t"] > killed and sampler.occupied(r, a.name) + sampler.occupied(r, b.name) >= expected), None)

        at = wait_until(taken_over, INTERVAL + TTL + SLACK + 15, f"A and B at {expected} after C's power cut", interval=0.5)
        takeover = at - killed
        after = sampler.per_host(row_at(sampler.rows, at) or sampler.rows[-1])
        wait_until(lambda: c.name not in live_hosts(a.status()), 30, "C no longer live in A's status")
        gone = time.time() - killed
        backlog_at_takeover = (row_at(sampler.rows, at) or {}).get("ready")
        wait_until(lambda: hosts.counts()["processed"] >= sent, 180, f"all {sent} messages processed", interval=1)

    _, _, over = bounds(sampler, hosts, CAP)
    r = hosts.counts()
    print(
        f"\n[multihost] power cut on C ({before}): A+B at {expected} after {takeover:.1f}s ({after}; CHECK_INTERVAL {INTERVAL} +"
        f" FLEET_HOST_TTL {TTL}), C not live after {gone:.1f}s; processed {r['processed']}/{sent}, duplicates {r['duplicates']}"
    )
    assert not over, over[:10]
    assert backlog_at_takeover, "the backlog ran out before the takeover: nothing to measure"
    assert takeover <= INTERVAL + TTL + SLACK, f"takeover took {takeover:.1f}s"
    assert r["processed"] == sent and r["dead"] == 0, r


def test_a_host_whose_ticks_stop_while_its_workers_run_still_counts_against_the_cap(hosts: Cluster) -> None:
    """C's dramactl.timer stops while its workers run on (as when its env file breaks after it started:
    the ticks stop, the workers do not). Once C's heartbeat expires, A and B must not take C's share
    on top of C's running workers (they did: 7 of a cap of 6, for as long as it lasted): the hook's
    reports keep C's processes counted, and the ticks say so."""
    hosts.configure(FLEET, PER_HOST)
    start_fleet(hosts)
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    with FleetSampler(hosts) as sampler:
        hosts.send(1000, 1.0)
        wait_until(
            lambda: sampler.rows and sampler.total(sampler.rows[-1]) >= CAP - 1 and sampler.occupied(sampler.rows[-1], c.name) >= 1,
            60,
            "the fleet near the cap with C running its share",
        )
        c.sh("systemctl stop dramactl.timer")
        stopped = time.time()
        wait_until(lambda: c.name not in live_hosts(a.status()), INTERVAL + TTL + SLACK + 15, "C's heartbeat expired in A's status")
        expired = time.time()
        time.sleep(4 * INTERVAL + SLACK)  # A and B tick with C expired and C's workers running
        after = [r for r in sampler.rows if r["t"] > expired]
        left = hosts.counts()["ready"]
    said = a.journal() + b.journal()
    _, _, over = bounds(sampler, hosts, CAP)
    c_running = min(sampler.occupied(r, c.name) for r in after)
    print(
        f"\n[multihost] C's timer stopped: expired after {expired - stopped:.1f}s; C ran at least {c_running} after that,"
        f" A+B at most {max(sampler.occupied(r, a.name) + sampler.occupied(r, b.name) for r in after)}; {left} messages still ready"
    )
    assert not over, over[:10]
    assert c_running >= 1 and left > 0, "C's workers ran on, with a backlog to grow for, all the while: the scenario held"
    assert "worker process(es) of hosts whose heartbeat expired still report, counted in the room" in said, said[-2000:]


def settled(sampler: FleetSampler, row: dict) -> bool:
    """The fleet at CAP - 1 or more in ``row``, every host sampled, and no job pending on any."""
    views = row["hosts"].values()
    return sampler.total(row) >= CAP - 1 and all(v is not None and not v["jobs"] for v in views)


@pytest.mark.parametrize("outage", ["stopped", "hung"])
def test_a_redis_outage_holds_every_host_and_no_host_takes_the_others_share_after_it(hosts: Cluster, outage: str) -> None:
    """The shared Redis stops (saving its keys, as Debian's does), or hangs (SIGSTOP: connections
    accepted, nothing answered), for longer than FLEET_HOST_TTL while the fleet runs near the cap.
    Meanwhile every host's tick exits with its one line and no host starts or stops an instance;
    when it is back, the first host to tick does not take the others' shares (their heartbeats are
    as old as its own: the silence is recorded and does not count), so the fleet stays within the
    cap, the three hosts stay live, and every message is processed. A hung server also runs, once
    resumed, what the ticks that gave up on it had sent (reads, and a claim or heartbeat from a
    tick caught between its steps): that must not take the fleet past the cap either."""
    hosts.configure(FLEET, PER_HOST)
    start_fleet(hosts)
    a = hosts["a"]
    sent = 500
    length = TTL + 2 * INTERVAL
    with FleetSampler(hosts) as sampler:
        hosts.send(sent, 1.0)
        # Near the cap and settled: no start job on any host in two samples a second apart. A tick whose
        # start job is pending when Redis goes waits for READY=1, which waits for Redis, and runs no
        # other tick until it is back; with all three caught so (CI, 4a445e1), no host's tick said it.
        wait_until(lambda: len(sampler.rows) >= 2 and all(settled(sampler, row) for row in sampler.rows[-2:]), 90,
                   "the fleet near the cap, no start job pending")
        down, up = (hosts.redis.down, hosts.redis.up) if outage == "stopped" else (hosts.redis.hang, hosts.redis.resume)
        down()
        stopped = time.time()
        try:
            time.sleep(length)
        finally:
            up()
        back = time.time()
        wait_live(a, {h.name for h in hosts.hosts}, 60)
        wait_until(lambda: hosts.counts()["processed"] >= sent, 240, f"all {sent} messages processed", interval=1)

    # A tick that had passed its Redis steps when Redis stopped may still finish acting (its
    # jobs wait up to 30 s): judge from a tick and a few seconds later.
    held = [r for r in sampler.rows if stopped + INTERVAL + 6 <= r["t"] <= back]
    shapes = {sampler.per_host(r) for r in held}
    _, _, over = bounds(sampler, hosts, CAP)
    after = [sampler.total(r) for r in sampler.rows if r["t"] > back]
    r = hosts.counts()
    print(
        f"\n[multihost] Redis {outage} {length}s (> FLEET_HOST_TTL {TTL}s): fleet held at {sorted(shapes)} over {len(held)} samples;"
        f" after it, peak {max(after, default=0)} (cap {CAP}); processed {r['processed']}/{sent}, duplicates {r['duplicates']}"
    )
    assert len(held) >= length - INTERVAL - 8, f"only {len(held)} samples while Redis was down"
    assert len(shapes) == 1, f"a host changed its fleet while Redis was down: {sorted(shapes)}"
    assert not over, over[:10]
    # Each tick that ran meanwhile exits with its one line. A host whose tick was acting when Redis went
    # (waiting for a start job: READY=1 waits for Redis to answer) may run no other tick until it is back.
    said = [h.name for h in hosts.hosts if "REDIS_URL: cannot reach" in h.journal()]
    assert said, "no host said it could not reach Redis"
    for h in hosts.hosts:
        assert "Traceback" not in h.journal(), h.name
    assert r["processed"] == sent and r["dead"] == 0, r


def test_a_tick_that_waited_through_an_outage_for_a_start_job_records_the_silence(hosts: Cluster) -> None:
    """C's tick starts an instance whose app takes 10 s to start, and the shared Redis stops then, for
    longer than FLEET_HOST_TTL: that worker's READY=1 waits for Redis, so C's tick waits through the
    outage for its start job, renewing its heartbeat (dramactl.seat). A's and B's ticks come later
    than it (their timers are held for the outage and until C's next tick), and their workers hang
    (SIGSTOP) meanwhile, so their own reports, which expired with the outage, are not back either:
    C's renewals and settle, then C's next tick, are the first writes after it. The first of them
    must record the silence, or C's next tick finds A's and B's heartbeats and claims expired, takes
    the fleet alone and grows past the cap beside their instances (CI once saw 7 of 6 when a tick
    came before the workers' reports were back). The fleet stays within the cap and every message is
    processed. (10 s: with 4 s, a CI run once saw the job done before the outage began, the sampler
    and the commands before it lagging on a loaded host.)

    After the silence a host must tick within what its TTL had left when the silence began, so A and
    B, held until C's next tick, must be back within that: the outage begins while C starts its second
    instance (a host with none up starts one alone, then the rest), whose job ends as Redis is back,
    and the TTL is 15 s (the outage 21 s, within the tick's 30 s wait for start jobs). (With 10 s
    and the outage during the first of C's starts, the second took 10 s more after it, and A's first
    tick came 1 s after its heartbeat expired once the renewals ran on time: they had been starved
    while the tick waited on D-Bus, which recorded a second, false silence.)"""
    ttl = 15
    hosts.configure({**FLEET, "FLEET_HOST_TTL": str(ttl)}, {**PER_HOST, "c": {**PER_HOST["c"], "SYSAPP_START_DELAY": "10"}})
    start_fleet(hosts)
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    sent = 500
    length = ttl + 2 * INTERVAL

    def starting_on_c_alone() -> bool:
        """C starting an instance beside one up, A and B at their shares of 2 with no job: only C's tick waits."""
        row = sampler.latest()
        views = row and row["hosts"]
        return bool(
            views and views[c.name] and "start" in views[c.name]["jobs"].values() and "active/running" in views[c.name]["units"].values()
            and all(views[h.name] and not views[h.name]["jobs"] and sampler.occupied(row, h.name) == 2 for h in (a, b))
        )

    with FleetSampler(hosts) as sampler:
        hosts.send(sent, 1.0)
        wait_until(starting_on_c_alone, 60, "C starting an instance, A and B at 2 each")
        ticks = c.journal().count(" on this host")  # C's tick lines so far: the waiting tick's comes at its end
        for h in (a, b):
            h.sh("systemctl stop dramactl.timer")
        hosts.redis.down()
        stopped = time.time()
        try:
            for h in (a, b):
                h.sh("systemctl kill -s STOP 'dramatiq-worker@*.service'")
            time.sleep(length)
        finally:
            hosts.redis.up()
        back = time.time()
        try:
            wait_until(lambda: c.journal().count(" on this host") >= ticks + 2, 40, "C's waiting tick, then its next one, done")
        finally:
            for h in (a, b):
                h.sh("systemctl kill -s CONT 'dramatiq-worker@*.service'")
                h.start_timer()
        wait_live(a, {h.name for h in hosts.hosts}, 60)
        wait_until(lambda: hosts.counts()["processed"] >= sent, 240, f"all {sent} messages processed", interval=1)

    waited = [r for r in sampler.rows if stopped + 1 <= r["t"] <= back and "start" in (r["hosts"][c.name] or {"jobs": {}})["jobs"].values()]
    _, _, over = bounds(sampler, hosts, CAP)
    r = hosts.counts()
    print(f"\n[multihost] C's start job waited through {len(waited)} samples of a {length}s outage; fleet peak"
          f" {max(sampler.total(row) for row in sampler.rows)} (cap {CAP}); processed {r['processed']}/{sent}, duplicates {r['duplicates']}")
    assert len(waited) >= length - 4, f"C's start job was pending in only {len(waited)} samples of the outage"
    assert not over, over[:10]
    for h in hosts.hosts:
        assert "Traceback" not in h.journal(), h.name
    assert r["processed"] == sent and r["dead"] == 0, r


# --- issue 18: hosts that fail, collide, disagree -------------------------------------------------


def fleet_ids(status: dict | None) -> dict[str, str]:
    """Live hosts of a status --json: id -> hostname as shown."""
    return {h.get("id", h["name"]): h["name"] for h in (status or {}).get("hosts") or [] if h.get("live")}


def test_a_host_whose_workers_fail_hands_the_floor_to_a_host_that_serves(hosts: Cluster) -> None:
    """MIN=1, no backlog: the fleet runs one instance, on host X. X's worker command breaks (the app
    cannot be imported: exit 2, the unit fails for good). X reports failing in its heartbeat and the
    floor moves to a host that serves, within X's next tick + the other host's next tick + a start;
    X is shown failing and keeps 0; the fleet never passes its cap."""
    hosts.configure(FLEET, PER_HOST)
    start_fleet(hosts)

    def alone() -> Host | None:
        running = {h.name: h.active() for h in hosts.hosts}
        busy = [h for h in hosts.hosts if running[h.name]]
        return busy[0] if len(busy) == 1 and len(running[busy[0].name]) == 1 else None

    x = wait_until(alone, 3 * INTERVAL + 20, "the fleet at MIN=1 on one host")
    assert isinstance(x, Host)
    x.write_env({**x.values, "DRAMATIQ_COMMAND": "dramatiq no_such_app_module"})
    with FleetSampler(hosts) as sampler:
        unit = x.active()[0]
        x.sh(f"kill -KILL $(systemctl show -P MainPID {unit})")  # Restart=on-failure starts it again, broken
        broken = time.time()
        other = wait_until(lambda: next((h for h in hosts.hosts if h is not x and h.active()), None), 2 * INTERVAL + 40, "another host running the floor")
        took = time.time() - broken
        time.sleep(2 * INTERVAL)  # two more ticks: the floor stays where it serves
        status = x.status()
    assert isinstance(other, Host)
    _, _, over = bounds(sampler, hosts, CAP)
    mine = next(h for h in status["hosts"] if h["id"] == status["fleet"]["this_host"])
    print(f"\n[multihost] {x.name}'s workers broke: {other.name} ran the floor after {took:.1f}s (CHECK_INTERVAL {INTERVAL})")
    assert not over, over[:10]
    assert x.active() == [] and other.active(), (x.units(), other.units())
    assert mine["failing"] is True and mine["share"] == 0, mine
    assert "this host's instances fail" in x.journal()
    assert took <= 2 * INTERVAL + 25, f"the floor moved after {took:.1f}s"


def test_two_hosts_with_one_hostname_never_pass_the_cap(hosts: Cluster) -> None:
    """Cloned hosts: C takes B's hostname. Each is its machine-id in the fleet, so neither overwrites
    the other's heartbeat; a burst runs the fleet at its cap, never above, and status lists three
    live hosts, the two of one hostname told apart by their id."""
    b, c = hosts["b"], hosts["c"]
    c.sh(f"hostname {b.name}")
    try:
        assert c.hostname() == b.name
        hosts.configure(FLEET, PER_HOST)
        for h in hosts.hosts:
            h.start_timer()
        wait_until(lambda: len(fleet_ids(hosts["a"].status())) == 3, 60, "three live hosts in A's status")
        with FleetSampler(hosts) as sampler:
            hosts.send(400, 1.0)
            wait_until(lambda: sampler.rows and sampler.total(sampler.rows[-1]) >= CAP - 1, 60, "the fleet near its cap")
            time.sleep(2 * INTERVAL + SLACK)
            shown = fleet_ids(hosts["a"].status())
    finally:
        c.sh(f"hostname {c.name}")
    peak, _, over = bounds(sampler, hosts, CAP)
    print(f"\n[multihost] two hosts named {b.name}: fleet peak {peak} (cap {CAP}); status shows {sorted(shown.values())}")
    assert not over, over[:10]
    assert len(shown) == 3 and sum(1 for n in shown.values() if n.startswith(b.name + "/")) == 2, shown


def test_scale_to_beyond_the_fleets_room_is_refused_and_scale_up_capped(hosts: Cluster) -> None:
    """A and B are sized by hand to 2 and 3 (FLEET_MAX_PROCESSES=6): C may run 1. `scale-to 4` on C
    (its own MAX) is refused in one line naming FLEET_MAX_PROCESSES and changes nothing; `scale-up -n 2`
    is capped at 1 and says so; the fleet never runs more than 6."""
    hosts.configure(FLEET, PER_HOST)
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    start_fleet(hosts)
    with FleetSampler(hosts) as sampler:
        a.dramactl("scale-to", "2")
        b.dramactl("scale-to", "3")
        assert (len(a.active()), len(b.active())) == (2, 3)
        # C's own timer is held while its instances are compared around the refusal (a tick of
        # C's in between may resize it by the fleet's split: that is not the refused command).
        # A stop the last tick left to systemd (a drain) ends first: every unit of C settled.
        # (A oneshot tick is "activating" while it runs, which `is-active` does not count: wait for inactive.)
        c.sh("systemctl stop dramactl.timer && while [ \"$(systemctl show -P ActiveState dramactl.service)\" = activating ]; do sleep 0.2; done")
        wait_until(lambda: all(s == "active/running" for s in c.units().values()), 60, "C's units settled (no start or drain in progress)")
        before = c.active()
        refused = c.dramactl("scale-to", "4", check=False)
        still = c.active()
        c.sh("systemctl start dramactl.timer")
        capped = c.dramactl("scale-up", "-n", "2", check=False)
        time.sleep(2 * INTERVAL)  # C's ticks (paused now) hold it; A's and B's too
        after = {h.name: len(h.active()) for h in hosts.hosts}
    _, _, over = bounds(sampler, hosts, CAP)
    assert refused.returncode == 2 and still == before, (
        refused.stdout, refused.stderr, before, still, c.units(), c.journal("dramatiq-worker@1.service")[-2000:], c.journal()[-2000:],
    )
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dramactl: FLEET_MAX_PROCESSES: cannot scale this host to 4"), lines
    assert "room for 1" in lines[0]
    assert capped.returncode == 0 and "capped at 1 by FLEET_MAX_PROCESSES" in capped.stdout, (capped.stdout, capped.stderr)
    assert after == {a.name: 2, b.name: 3, c.name: 1}, after
    assert not over, over[:10]


def test_hosts_with_different_min_follow_the_fleets_record_and_do_not_flap(hosts: Cluster) -> None:
    """MIN_PROCESSES 1, 2 and 3 on A, B and C, no backlog: every host follows the fleet's settings
    record (the first host's), so the fleet's target does not change from tick to tick while the
    backlog does not; the hosts whose MIN differs say so in status and in the journal."""
    hosts.configure(FLEET, {x: {**PER_HOST[x], "MIN_PROCESSES": m} for x, m in zip("abc", "123")})
    start_fleet(hosts)
    with StatusPoller(hosts["a"], every=1.0) as poller:
        time.sleep(6 * INTERVAL)
    targets = [s["fleet"]["target"] for _, s in poller.polls if s and s.get("fleet")]
    print(f"\n[multihost] MIN 1/2/3 on A/B/C: targets {targets}")
    assert len(targets) >= 4 * INTERVAL and len(set(targets)) == 1, targets
    record = hosts["a"].status()["fleet"]["settings"]
    differ = [h for h in hosts.hosts if h.status()["fleet"]["settings_differ"]]
    assert targets[0] == record["min_processes"], (targets, record)
    assert len(differ) == 2, [h.name for h in differ]
    for h in differ:
        assert "differ from the fleet's record" in h.journal(), h.name


def test_a_rolling_restart_at_the_fleets_cap_drains_first_and_keeps_the_hosts_heartbeat(hosts: Cluster) -> None:
    """`dramactl restart` on a host of a fleet at FLEET_MAX_PROCESSES: A, B and C sized by hand to 2 + 2 + 2 = 6.
    C (MAX_PROCESSES 4, so only the fleet's cap stops it) drains each instance before its replacement and says
    so; the fleet sampled once a second never runs more than 6. C's app starts slowly (4 s to READY=1), so the
    roll outlasts FLEET_HOST_TTL (10 s) while it holds C's ticks: A's status shows C live at every poll."""
    hosts.configure(FLEET, {**PER_HOST, "c": {**PER_HOST["c"], "SYSAPP_START_DELAY": "4"}})
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    start_fleet(hosts)
    for h in (a, b, c):
        h.dramactl("scale-to", "2")
    assert [len(h.active()) for h in (a, b, c)] == [2, 2, 2]
    with FleetSampler(hosts) as sampler, StatusPoller(a, every=1.0) as poller:
        began = time.time()
        out = c.dramactl("restart")
        ended = time.time()
    _, _, over = bounds(sampler, hosts, CAP)
    during = [s for t, s in poller.polls if began <= t <= ended]
    print(f"\n[multihost] restart on C at the fleet's cap: {ended - began:.1f}s, fleet peak {max(sampler.total(r) for r in sampler.rows)}"
          f" (cap {CAP}), C live in {sum(c.name in live_hosts(s) for s in during if s)} of {len(during)} polls of A's status\n{out.stderr}{out.stdout}")
    assert ended - began > TTL
    assert not over, over[:10]
    assert out.stderr.count("FLEET_MAX_PROCESSES reached: fleet t's other hosts claim the rest: draining @") == 2, out.stderr
    assert "2 drained before their replacement (FLEET_MAX_PROCESSES reached" in out.stdout, out.stdout
    assert len(during) >= TTL and all(s is not None and c.name in live_hosts(s) for s in during), during
    assert len(c.active()) == 2
