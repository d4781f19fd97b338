"""Long tasks and damaged counters in the work-based policy: inputs a review found the
policy mishandled (each of these failed before its fix): messages prefetched behind long
tasks with nothing ready, and a finite counter whose rate overflows."""

from __future__ import annotations

from dramactl.policy import decide
from dramactl.state import TickRecord
from dramactl.stats import FleetBacklog

from tests.unit.test_work_policy import NOW, running, seen, settings, worked


def test_messages_prefetched_behind_long_tasks_grow_the_fleet_with_nothing_ready() -> None:
    """0.06/s of two-minute tasks on six 2-thread workers (the unit test's long-low):
    24 messages in flight on 12 threads, i.e. 12 prefetched behind tasks that run a minute
    more on average (every worker's prefetch, 4, is full), nothing ready in Redis. Each of
    the 12 waits past the 30 s goal with probability ~exp(-2 x 30 / 120) = 0.6 and every
    arrival until a growth finds no free thread. The reacting fleet counts them (present
    24) but only ever lowers the static fleet (6), and the drain ignores what is
    prefetched while nothing is ready: main holds at 6."""
    s = settings(WORKER_THREADS=2)
    history = worked(0.06, 120.0, workers=6, seconds=900, backlog=6)
    full = decide(seen(history, 0.06, 120.0, in_flight=24), running(6), s, history, NOW)
    assert full.target > 6, full.reason


def test_a_block_absorbed_into_prefetch_behind_long_tasks_is_drained() -> None:
    """The same fleet, 10 messages landing at once: 6 take the free threads, 4 are
    prefetched behind two-minute tasks. The block is taken out of the rate (a block is a
    backlog to drain) and, nothing being ready, out of the drain too: counted nowhere."""
    s = settings(WORKER_THREADS=2)
    history = worked(0.06, 120.0, workers=6, seconds=900, backlog=6)
    block = decide(seen(history, 0.06, 120.0, in_flight=16), running(6), s, history, NOW)
    assert block.target > 6, block.reason


def test_a_damaged_but_finite_counter_is_not_a_traceback() -> None:
    """Counters pass queue._counter when finite and >= 0; 1e306 completions within a
    millisecond of the last tick make an infinite rate, and the tick raises
    OverflowError (math.ceil / math.floor of inf) instead of naming the key."""
    s = settings()
    history = [TickRecord(NOW - 0.001, 0, 2, 2, wanted=2, done=0.0, busy=0.0)]
    backlog = FleetBacklog(in_flight=3, done_total=1e306, busy_seconds_total=1e308)
    decision = decide(backlog, running(2), s, history, NOW)
    assert 1 <= decision.target <= s.max_processes



def test_a_damaged_busy_counter_while_a_backlog_waits_is_not_a_traceback() -> None:
    """A busy counter damaged into a huge finite value (1.7e308 passes queue._counter) with
    4000 messages ready: the rate and the mean service time are each finite, but the load
    (their product) and the drain overflow to inf, and math.ceil(inf) raised OverflowError.
    The drain's fleet is now at most one worker past the limit: the tick grows to MAX."""
    s = settings()
    history = [TickRecord(NOW - 15 * k, 200 * (20 - k), 2, 2, wanted=2, done=float(k <= 1) + float(k <= 2) + float(k <= 3), busy=1.0, for_rate=2)
               for k in range(20, 0, -1)]
    backlog = FleetBacklog(ready=4000, done_total=3.0, busy_seconds_total=1.7e308, oldest_age=10.0)
    assert decide(backlog, running(2), s, history, NOW).target == s.max_processes
