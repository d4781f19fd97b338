"""What a week of 15 s ticks costs ``dramactl replay``: ``python -m bench.replay_cost``.

Builds 40 320 journal samples of a steady 0.75 messages/s of 4 s (the hook's counters
growing as the journal would record them), rebuilds the messages and runs the real
policy over them once at CHECK_INTERVAL=15, and prints the times and the peak resident
memory. ``dramactl replay`` makes one such run plus one per ``--set`` (static MAX and
HPA keep no policy history, so they are cheaper); ``dramactl tune`` one per combination.
"""

from __future__ import annotations

import resource
import time

from dramactl import replay

ENTRIES = 40_320  # a week of 15 s ticks
T0 = 1_700_000_000.0


def main() -> None:
    samples = [replay.Sample(T0 + 15 * i, True, 1, 0, (("default", 0.75 * i, 3.0 * i),), False) for i in range(ENTRIES)]
    started = time.perf_counter()
    rebuilt = replay.rebuild(samples)
    rebuilt_in = time.perf_counter() - started
    settings = replay.variant({"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"}, {})
    started = time.perf_counter()
    replay.run_policy(rebuilt, settings, "settings in force")
    ran_in = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{ENTRIES} entries: {len(rebuilt.arrivals)} messages rebuilt in {rebuilt_in:.1f}s; "
          f"one run of the real policy at CHECK_INTERVAL=15 {ran_in:.1f}s; peak resident {rss:.0f} MiB")


if __name__ == "__main__":
    main()
