"""Hardening in a booted systemd: an unwritable state directory, the manual commands'
journal line, the watchdog, and the status block in docs/operations.md."""

from __future__ import annotations

import time

import pytest

from tests.system.conftest import DRAMACTL, System, wait_until

pytestmark = pytest.mark.system


NO_STATE_DIRECTORY = "/etc/systemd/system/dramactl.service.d/90-test-no-state-directory.conf"


def one_instance_and_a_backlog(system: System) -> str:
    """One instance, autoscaling on, and 40 x 5 s on its 2 threads: the policy would grow
    to MAX at once. The scaler user's uid."""
    system.dramactl("scale-to", "1")
    system.dramactl("resume")
    system.send(40, 5.0)
    return system.sh("id -u dramactl").stdout.strip()


def refusing_ticks(system: System, marker: str, count: int, line: str) -> None:
    """Start the real timer and wait for ``count`` ticks saying ``marker``: the fleet is left
    as it was, ``line`` is the only line dramactl wrote, and every tick exited 2 before
    deciding anything."""
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: system.c.journal("dramactl.service").count(marker) >= count, 30, f"{count} ticks refusing")
    assert system.active() == ["dramatiq-worker@1.service"]
    journal = system.c.journal("dramactl.service")
    lines = {l for l in journal.splitlines() if l.startswith("dramactl: ")}
    assert lines == {line}, lines
    assert "status=2/INVALIDARGUMENT" in journal and "Traceback" not in journal, journal[-2000:]
    assert "queues ready=" not in journal  # no tick got as far as deciding


def test_unwritable_state_directory_stops_the_tick_before_any_change(system: System) -> None:
    """/var/lib/dramactl owned by root, 0755: the real timer's ticks, which run as dramactl, see a
    backlog that would grow the fleet, change nothing and say why in one journal line, exit 2.

    The shipped unit's StateDirectory= makes systemd give the directory back to dramactl on
    every start, so the test drops it (as a unit written without it would) and keeps the
    directory visible with ReadWritePaths= (ProtectSystem=strict would make it read-only)."""
    system.sh(f"mkdir -p {NO_STATE_DIRECTORY.rsplit('/', 1)[0]} && printf '[Service]\\nStateDirectory=\\nReadWritePaths=/var/lib/dramactl\\n' > {NO_STATE_DIRECTORY}")
    system.sh("systemctl daemon-reload")
    uid = one_instance_and_a_backlog(system)
    system.sh("chown root:root /var/lib/dramactl && chmod 0755 /var/lib/dramactl")
    try:
        refusing_ticks(system, "is not writable", 3,
                       f"dramactl: state directory /var/lib/dramactl is not writable by uid {uid} (Permission denied; owner root, mode 0755); "
                       "fix its owner/mode (StateDirectory= in dramactl.service)")
    finally:
        system.sh(f"systemctl stop dramactl.timer; rm -f {NO_STATE_DIRECTORY}; systemctl daemon-reload")
        system.sh("chown -R dramactl:dramactl /var/lib/dramactl; chmod 0755 /var/lib/dramactl")  # -R as StateDirectory= does: root's scale-to made the files
    # Restored: the next tick grows the fleet and remembers it.
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: len(system.active()) > 1, 30, "the fleet growing once the directory is writable")


def test_a_root_owned_tick_lock_is_named_and_the_fleet_comes_back_once_it_is_given_back(system: System) -> None:
    """The directory is dramactl's, so StateDirectory= leaves its files alone: a tick.lock left
    root's 0600 (a partial chown) made every tick say the *directory* was not writable. The
    real timer's ticks now name the lock and its owner, change nothing, and grow the fleet
    once the lock is given back as the line says."""
    uid = one_instance_and_a_backlog(system)
    system.sh("chown dramactl:dramactl /var/lib/dramactl && chown root:root /var/lib/dramactl/tick.lock && chmod 0600 /var/lib/dramactl/tick.lock")
    try:
        refusing_ticks(system, "cannot be opened", 2,
                       f"dramactl: tick lock /var/lib/dramactl/tick.lock cannot be opened by uid {uid} (Permission denied; owner root, mode 0600); "
                       "give it the directory's owner (dramactl) or remove it (the next tick creates it again)")
    finally:
        system.sh("systemctl stop dramactl.timer; chown dramactl:dramactl /var/lib/dramactl/tick.lock")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: len(system.active()) > 1, 30, "the fleet growing once the lock is the directory owner's")


def test_manual_commands_journal_line_reads_the_queue_or_leaves_it_out(system: System) -> None:
    """scale-up/-down print Outcome.summary(): the queue figures come from one probe of the real
    Redis; when Redis cannot be reached the scale still happens and the figures are left out."""
    import re

    system.dramactl("scale-to", "1")
    system.send(12, 10.0)  # 2 threads: 2 run, some prefetched, the rest ready; none ends before the scale-up reads them
    wait_until(lambda: system.redis_counter("sys:started") >= 2, 15, "both threads busy")
    ready = system.redis()["ready"]
    assert ready > 0
    out = system.dramactl("scale-up").stdout.strip()
    m = re.match(r"queues ready=(\d+) delayed=0 due=0 in_flight=(\d+) orphaned=0 dead=0 oldest=\d+\.\ds \| workers 1 -> 2 \| manual; autoscaling paused \| started @2:done$", out)
    assert m and int(m.group(1)) > 0 and int(m.group(1)) + int(m.group(2)) == 12, out
    wait_until(lambda: system.redis()["count"] == 12, 120, "all 12 processed")
    # Redis unreachable for this command (the workers keep theirs): the scale goes ahead.
    res = system.c.run([DRAMACTL, "scale-down"], env={"REDIS_PORT": "1"}, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "workers 2 -> 1 | manual; autoscaling paused | stop @2 (highest number: no instance reports) | stopped @2:done", res.stdout
    assert system.active() == ["dramatiq-worker@1.service"]


WATCHDOG = 10  # WATCHDOG_SEC for the watchdog test: the drop-in `dramactl install` writes


def test_frozen_worker_is_restarted_by_the_watchdog_and_its_messages_redelivered(system: System) -> None:
    """SIGSTOP to both of an instance's processes while it holds messages: no WATCHDOG=1, so
    systemd logs "Watchdog timeout" within WATCHDOG_SEC plus slack and restarts it; the new
    worker's maintenance redelivers what the frozen one held, and every message is recorded."""
    system.configure(WATCHDOG_SEC=str(WATCHDOG), GRACEFUL_SHUTDOWN_TIMEOUT="5", SYSAPP_HEARTBEAT_TIMEOUT="5000")
    unit = "dramatiq-worker@1.service"
    system.dramactl("scale-to", "1")
    assert system.sh(f"systemctl show -P WatchdogUSec {unit}").stdout.strip() == f"{WATCHDOG}s"
    pid = system.sh(f"systemctl show -P MainPID {unit}").stdout.strip()
    system.send(6, 3.0)  # 2 threads: 2 running, the rest prefetched or ready
    wait_until(lambda: system.redis_counter("sys:started") >= 2, 15, "both threads busy")
    assert system.redis()["ready"] + system.redis()["count"] < 6  # the worker holds messages
    frozen = time.monotonic()
    # Both processes, Dramatiq's main and its worker child: `systemctl kill -s STOP` stops them too
    # but fails with EIO on this systemd (252) in the container for the auxiliary process.
    procs = system.sh(f"echo {pid} $(cat /proc/{pid}/task/{pid}/children)").stdout.split()
    assert len(procs) == 2, procs
    system.sh(f"kill -STOP {' '.join(procs)}")
    wait_until(lambda: "Watchdog timeout" in system.c.journal(unit), WATCHDOG + 10, "systemd's watchdog timeout", interval=0.2)
    fired = time.monotonic() - frozen
    wait_until(
        lambda: system.active() == [unit] and system.sh(f"systemctl show -P MainPID {unit}").stdout.strip() not in ("0", pid),
        120,
        "the instance running again as a new process",
    )
    back = time.monotonic() - frozen
    wait_until(lambda: system.redis()["processed"] == 6, 60, "all 6 messages processed")
    done = time.monotonic() - frozen
    print(f"\n[watchdog] WatchdogSec={WATCHDOG}s: timeout after {fired:.1f}s, running again after {back:.1f}s, all done after {done:.1f}s")
    assert fired <= WATCHDOG + 3
    assert back <= WATCHDOG + 20
    r = system.redis()
    assert (r["processed"], r["ready"], r["msgs"], r["acks"], r["dead"]) == (6, 0, 0, 0, 0), r
    assert int(system.sh(f"systemctl show -P NRestarts {unit}").stdout) == 1
    assert f"Watchdog timeout (limit {WATCHDOG}s)!" in system.c.journal(unit)


README_SETTINGS = {"CHECK_INTERVAL": "15", "MAX_PROCESSES": "6", "WORKER_THREADS": "2"}


def test_readme_status_for_real(system: System) -> None:
    """docs/operations.md's "Status, for real" block: 120 two-second messages land on a fleet of one under the
    real timer; 20 s later, once the tick that saw them has ended, `dramactl status` and the last tick's journal
    line are printed (run with -s to see them; docs/operations.md shows the output of such a run) and must have
    that block's shape."""
    import re

    from tests.system.conftest import REPO

    system.configure(**README_SETTINGS)
    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: system.active() == ["dramatiq-worker@1.service"], 20, "the first tick's fleet of one")
    time.sleep(2)

    def ticks() -> list[str]:
        return [l for l in system.c.journal("dramactl.service").splitlines() if l.startswith("queues ")]

    system.send(120, 2.0)
    before = len(ticks())  # the ticks that ended before they landed
    time.sleep(20)
    # The tick that saw them has ended (on a loaded host it can still be running 20 s on: a CI run's was).
    wait_until(lambda: len(ticks()) > before, 60, "the tick after the messages landed")
    status = system.dramactl("status").stdout
    line = ticks()[-1]
    print("\n$ dramactl status\n" + status + "\n$ journalctl -u dramactl.service -o cat | grep '^queues' | tail -1\n" + line)
    # Every tick's lines, timed, for a failure's diagnosis.
    journal = system.sh("journalctl --no-pager -o short-precise -u dramactl.service").stdout
    print(journal)
    system.sh("systemctl stop dramactl.timer")

    assert "Failed with result" not in journal, journal  # no tick failed (a wait alone would hide one)
    assert re.search(r"\| workers 1 -> [2-6] \|", ticks()[before]), journal  # the first tick after they landed grew the fleet

    up = re.findall(r"^dramatiq-worker@\d+\.service\s+active \(running\)", status, re.M)
    assert len(up) > 1, status  # the fleet grew from one
    assert re.search(r"^sys(\s+\d+){6}\s+\d+s$", status, re.M), status
    assert "limits: min 1 max 6  policy default  threads/worker 2\n" in status, status
    # The default policy's own view (the workers report work through the hook), never the step rule's thresholds.
    assert re.search(r"^policy default, by work: arrivals \S+ x E\[S\] 2\.\d\ds = \d+\.\d busy threads; start-up [\d.]+s \(learned\)$", status, re.M), status
    assert re.search(r"^  needs: arrivals \d+, drain \d+ \(\d+ waiting, in \d+s\), latency guard \S+, recurring block \S+, rising load \S+; wants \d+, target \d+$", status, re.M), status
    assert "step" not in status and "threshold" not in status
    assert "autoscaling: on" in status and re.search(r"^timer: active, every 15s, last ", status, re.M), status
    assert re.match(r"queues ready=\d+ delayed=0 due=0 in_flight=\d+ orphaned=0 dead=0 oldest=\S+ \| workers \d -> \d \| \S", line), line
    # docs/operations.md shows a run of this very scenario: same settings, same headers and lines.
    readme = (REPO / "docs" / "operations.md").read_text()
    block = readme.split("## Status, for real", 1)[1].split("```", 2)[1]
    for text in (
        "tests/system/test_hardening.py::test_readme_status_for_real",
        "(`CHECK_INTERVAL=15`, `MAX_PROCESSES=6`, `WORKER_THREADS=2`)",
    ):
        assert text in readme.split("## Status, for real", 1)[1].split("```", 1)[0]
    for header in (status.splitlines()[0], next(l for l in status.splitlines() if l.startswith("INSTANCE"))):
        assert header in block.splitlines()
    assert "limits: min 1 max 6  policy default  threads/worker 2" in block.splitlines()
    assert any(l.startswith("policy default, by work: arrivals ") for l in block.splitlines()), block
    assert "step thresholds" not in block
