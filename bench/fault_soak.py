"""The bad day at full size: 10,000 messages through SIGKILLs, Redis restarts, hangs and outages.

Run as root: ``python -m bench.fault_soak [--messages N] [--kill-every S]``. Boots the test
harness container (a real systemd 252 in systemd-nspawn), installs dramactl as an operator
would, and runs the scenario of tests/system/faults.py with the issue's settings: three waves
of the mixed workload (plain, time-limited with half of those failing once, two-step
pipelines), WORKER_THREADS=4, MIN_PROCESSES=1, MAX_PROCESSES=8, CHECK_INTERVAL=5,
GRACEFUL_SHUTDOWN_TIMEOUT=10, a SIGKILL every 20 s (whole units and Dramatiq's worker child
process in turn), one Redis restart, one 30 s Redis hang (SIGSTOP, then SIGCONT), one 40 s
Redis stop, one `scale-to 2` then `resume`, Dramatiq's default 60 s heartbeat timeout.
Prints what was lost, what ran twice, what was stranded in an ack set, the fleet's bounds and
the redelivery of orphans. tests/system/test_faults.py runs the same scenario sized for CI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.system import faults  # noqa: E402
from tests.system.conftest import REPO as TEST_REPO, VENV, System, wait_until  # noqa: E402
from tests.system.harness import Container, machine_name, missing_requirements  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=0.3, help="work per message")
    ap.add_argument("--kill-every", type=float, default=20.0)
    args = ap.parse_args()
    why = missing_requirements()
    if why:
        raise SystemExit(f"bench.fault_soak: {why}")
    binds = [str(TEST_REPO)] + ([str(VENV)] if not str(VENV).startswith(str(TEST_REPO)) else [])
    c = Container(binds, name=machine_name("dramactl-soak"))
    try:
        c.boot()
        system = System(c)
        system.configure()
        system.reset()
        plan = faults.FaultPlan(
            messages=args.messages,
            waves=3,
            seconds=args.seconds,
            kills=10_000,
            child_kills=10_000,
            kill_every=args.kill_every,
            redis_hang=30.0,
            redis_stop=40.0,
            scale_to=2,
            drain_timeout=1800.0,
            settings={
                "MIN_PROCESSES": "1",
                "MAX_PROCESSES": "8",
                "WORKER_THREADS": "4",
                "CHECK_INTERVAL": "5",
                "GRACEFUL_SHUTDOWN_TIMEOUT": "10",
                "SCALE_DOWN_STABILIZATION": "30",
            },
        )
        report = faults.run(system, plan, wait_until, log=lambda s: print(f"  {s}", flush=True))
        print(f"dramactl fault soak: {plan.messages} messages of {plan.seconds}s in 3 waves; MIN 1 MAX 8, 4 threads, CHECK_INTERVAL=5, "
              f"a SIGKILL every {plan.kill_every:.0f}s, Redis hung {plan.redis_hang:.0f}s and stopped {plan.redis_stop:.0f}s")
        for line in report.lines():
            print(line)
        print()
        checks = [
            (report.lost == 0 and report.dead == 0, f"nothing lost: {report.lost} lost, {report.dead} dead-lettered"),
            (report.stranded == 0, f"nothing stranded: {report.stranded} id(s) left in ack sets a heartbeat timeout after the drain"),
            (report.max_occupied <= 8, f"never above MAX: at most {report.max_occupied} up or coming back"),
            (report.below_min == 0, f"never below MIN: longest {report.below_min:.0f}s"),
            (report.orphaned_for <= 5 + 5 + 10, f"orphans redelivered within a tick of being reported: longest {report.orphaned_for:.0f}s"),
            (report.outlived == 0, f"every unit SIGKILL took the whole unit: {report.outlived} process(es) outlived their unit"),
        ]
        for ok, what in checks:
            print(("PASS  " if ok else "FAIL  ") + what)
    finally:
        c.shutdown()


if __name__ == "__main__":
    main()
