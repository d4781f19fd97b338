"""How long a rolling restart takes for N instances, and what reading their memory costs a tick.

Run as root: ``python -m bench.deploy_time [--sizes 1,2,4,8] [--batches 1,2]``. Boots the test
harness container (a real systemd 252 in systemd-nspawn), installs dramactl with the system
tests' app (two threads per instance, idle), and for each size N runs ``dramactl restart
--batch K`` on a fleet of N (MAX_PROCESSES = N + K, so every replacement starts first), timing
the whole command. Then, on the largest fleet, times ``Fleet.instances()`` (one
ListUnitsByPatterns) against ``Fleet.instances(memory=True)`` (plus one MemoryCurrent read per
running instance), 200 rounds each, from inside the container.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.system.conftest import DRAMACTL, PYTHON, REPO as TEST_REPO, VENV, System, wait_until  # noqa: E402
from tests.system.harness import Container, missing_requirements  # noqa: E402

LISTING = """
import json, time
from dramactl.fleet import Fleet
f = Fleet()
f.instances(memory=True)
out = {}
for memory in (False, True):
    t = time.perf_counter()
    for _ in range(200):
        units = f.instances(memory=memory)
    out["memory" if memory else "plain"] = (time.perf_counter() - t) / 200 * 1e3
out["n"] = len(units)
out["read"] = sum(1 for u in units if u.memory is not None)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--batches", default="1,2")
    args = ap.parse_args()
    why = missing_requirements()
    if why:
        raise SystemExit(f"bench.deploy_time: {why}")
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    binds = [str(TEST_REPO)] + ([str(VENV)] if not str(VENV).startswith(str(TEST_REPO)) else [])
    c = Container(binds, name=os.environ.get("DRAMACTL_TEST_MACHINE", "dramactl-bench") + "-deploy")
    try:
        c.boot()
        system = System(c)
        print(f"{'instances':>9} {'batch':>5} {'restart (s)':>11} {'per instance (s)':>16}")
        for n in sizes:
            for k in batches:
                if k > n:
                    continue
                system.configure(MAX_PROCESSES=str(n + k), GRACEFUL_SHUTDOWN_TIMEOUT="20")
                system.reset()
                system.dramactl("scale-to", str(n))
                wait_until(lambda: len(system.active()) == n, 60, f"{n} instances")
                began = time.monotonic()
                system.c.run([DRAMACTL, "restart", "--batch", str(k)], timeout=600)
                took = time.monotonic() - began
                print(f"{n:>9} {k:>5} {took:>11.1f} {took / n:>16.2f}", flush=True)
        system.sh("mount -o remount,bind,rw /sys/fs/cgroup/memory 2>/dev/null && systemctl daemon-reexec", check=False)
        n = max(sizes)
        system.configure(MAX_PROCESSES=str(n))
        system.reset()
        system.dramactl("scale-to", str(n))
        cost = system.c.python(PYTHON, LISTING)
        print(
            f"\nFleet.instances() over {cost['n']} instances: {cost['plain']:.2f} ms; "
            f"with memory=True ({cost['read']} MemoryCurrent reads): {cost['memory']:.2f} ms "
            f"(+{(cost['memory'] - cost['plain']) / max(1, cost['read']):.3f} ms per instance)"
        )
        system.reset()
    finally:
        c.shutdown()


if __name__ == "__main__":
    main()
