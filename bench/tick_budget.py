"""Cost of one scaler tick as a whole process, in a booted systemd, against the budget.

Run as root: ``python -m bench.tick_budget [--runs N] [--big 64]``. Boots the test
harness container, installs dramactl, and times ``dramactl tick`` (a steady-state
tick: MIN=MAX so nothing changes) with 1 instance and with ``--big`` instances,
next to the reference ``python -c "import redis, pystemd.systemd1, click, dotenv"``,
with dramactl's bytecode compiled first as an install compiles it.
Prints medians (wall) and peaks (RSS) and PASS/FAIL lines for the budgets:
tick <= 1.3x reference wall and <= 1.2x reference RSS; big tick <= 1.2x small tick.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.system.harness import Container, missing_requirements  # noqa: E402

REFERENCE = "import redis, pystemd.systemd1, click, dotenv"

# One run of argv, measured in the container by its parent: wall seconds by perf_counter
# around spawn and wait, CPU seconds (user + system) and peak RSS (KiB) from the child's
# rusage (wait4). /usr/bin/time reports wall and CPU in 10 ms steps, as coarse as the
# wall budget's margin. Printed on stderr, after anything the command wrote there.
TIMER = """
import os, sys, time
t = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
print(f"{wall:.4f} {usage.ru_utime + usage.ru_stime:.4f} {usage.ru_maxrss}", file=sys.stderr)
"""


class Sample:
    """Runs of one command: wall seconds, CPU seconds (user+sys), peak RSS (MB)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.rss: list[float] = []

    def add(self, c: Container, python: str, argv: list[str]) -> None:
        out = c.run([python, "-c", TIMER, *argv], check=False).stderr.strip().splitlines()[-1].split()
        self.wall.append(float(out[0]))
        self.cpu.append(float(out[1]))
        self.rss.append(int(out[2]) / 1024)

    @property
    def figures(self) -> tuple[float, float, float]:
        return statistics.median(self.wall), statistics.median(self.cpu), max(self.rss)


def measure_pair(c: Container, python: str, ref_argv: list[str], tick_argv: list[str], runs: int) -> tuple[Sample, Sample]:
    """Reference and tick interleaved, so both see the same machine load."""
    ref, tick = Sample(), Sample()
    for _ in range(runs):
        ref.add(c, python, ref_argv)
        tick.add(c, python, tick_argv)
    return ref, tick


# StartUnit until its job is removed (Type=notify: until READY=1, i.e. consuming), then StopUnit.
JOB_LATENCY = """
import json, statistics, time
from dramactl.fleet import Fleet
starts, stops = [], []
with Fleet() as f:
    for _ in range(5):
        t = time.monotonic(); assert f.start([99])[0].ok; starts.append(time.monotonic() - t)
        t = time.monotonic(); assert f.stop([99])[0].ok; stops.append(time.monotonic() - t)
print(json.dumps({"start": statistics.median(starts), "stop": statistics.median(stops)}))
"""


def configure(c: Container, dramactl: str, count: int) -> None:
    env = {
        "DRAMATIQ_COMMAND": "dramatiq sysapp",
        "WORKER_DIRECTORY": str(REPO / "tests/system"),
        "DRAMATIQ_QUEUE_NAME": "sys",
        "WORKER_THREADS": "1",
        "MIN_PROCESSES": str(count),
        "MAX_PROCESSES": str(count),
    }
    text = "".join(f"{k}={v}\n" for k, v in env.items())
    c.run(["sh", "-c", f"mkdir -p /etc/dramactl && cat > /etc/dramactl/dramactl.env <<'EOF'\n{text}EOF"])
    c.run([dramactl, "install"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--big", type=int, default=64)
    args = parser.parse_args()
    why = missing_requirements()
    if why:
        print(f"tick_budget: {why}", file=sys.stderr)
        return 2
    python = str(Path(sys.prefix) / "bin/python")
    dramactl = str(Path(sys.prefix) / "bin/dramactl")
    binds = [str(REPO)] + ([sys.prefix] if not sys.prefix.startswith(str(REPO)) else [])
    # DRAMACTL_TEST_MACHINE names the container when two checkouts run benches or tests on one host.
    c = Container(binds, name=os.environ.get("DRAMACTL_TEST_MACHINE") or "dramactl-bench")
    try:
        c.boot()
        # An installed dramactl has its bytecode compiled (pip at install, dh_python3 in the .deb);
        # the checkout's editable install may not (PYTHONDONTWRITEBYTECODE), so compile it as pip would.
        c.run([python, "-m", "compileall", "-q", str(REPO / "dramactl")])
        rows = []
        refs, ticks = {}, {}
        for count in (1, args.big):
            configure(c, dramactl, count)
            c.run([dramactl, "scale-to", str(count)], timeout=600)
            c.run([dramactl, "resume"])
            started = time.monotonic()
            while True:
                active = c.run("systemctl list-units --plain --no-legend --state=active 'dramatiq-worker@*' | wc -l").stdout.strip()
                if int(active) == count or time.monotonic() - started > 300:
                    break
                time.sleep(1)
            time.sleep(3)  # let the instances settle after boot
            refs[count], ticks[count] = measure_pair(c, python, [python, "-c", REFERENCE], [dramactl, "tick"], args.runs)
            rows.append((f"reference imports, {count} running", refs[count]))
            rows.append((f"dramactl tick, {count} instance(s)", ticks[count]))
            c.run([dramactl, "scale-to", "0"], timeout=600)
        jobs = c.python(python, JOB_LATENCY, timeout=600)
    finally:
        c.shutdown()

    print(f"\n{'what':<34} {'wall s (median)':>15} {'CPU s (median)':>15} {'peak RSS MB':>12}")
    for name, sample in rows:
        wall, cpu, rss = sample.figures
        print(f"{name:<34} {wall:>15.3f} {cpu:>15.3f} {rss:>12.1f}")
    print(f"(runs: {args.runs} each, interleaved; booted systemd in systemd-nspawn on this machine)")
    print(f"StartUnit -> job done (READY=1, consuming): {jobs['start']:.2f} s median of 5; StopUnit -> stopped (idle worker): {jobs['stop']:.2f} s")
    ref_wall, _, ref_rss = refs[1].figures
    small_wall, small_cpu, small_rss = ticks[1].figures
    big_wall, big_cpu, _ = ticks[args.big].figures
    checks = [
        (f"tick wall <= 1.3x reference ({small_wall:.3f} vs {1.3 * ref_wall:.3f} s)", small_wall <= 1.3 * ref_wall),
        (f"tick peak RSS <= 1.2x reference ({small_rss:.1f} vs {1.2 * ref_rss:.1f} MB)", small_rss <= 1.2 * ref_rss),
        (f"tick over {args.big} <= 1.2x tick over 1, wall ({big_wall:.3f} vs {1.2 * small_wall:.3f} s)", big_wall <= 1.2 * small_wall),
        (f"tick over {args.big} <= 1.2x tick over 1, CPU ({big_cpu:.3f} vs {1.2 * small_cpu:.3f} s)", big_cpu <= 1.2 * small_cpu),
    ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
