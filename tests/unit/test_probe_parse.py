"""The probe's reply turned into QueueStats: pure, no Redis."""

from __future__ import annotations

from dramactl.queue import FIELDS, parse_probe
from dramactl.stats import FleetBacklog, QueueStats

NOW = 1_700_000_000_000


def reply(*queues: tuple) -> list:
    flat: list = [NOW]
    for q in queues:
        assert len(q) == FIELDS
        flat += q
    return flat


def test_held_splits_into_in_flight_and_orphaned() -> None:
    # ready, held, delayed, due, dead, head_ts, tail_ts, orphaned, done, busy, busy_sq, error
    (q,) = parse_probe(["a"], reply((3, 10, 4, 1, 2, NOW - 2500, NOW - 500, 4, b"", b"", b"", b"")))
    assert (q.ready, q.in_flight, q.orphaned, q.delayed, q.due, q.dead) == (3, 3, 4, 4, 1, 2)
    assert q.oldest_age == 2.5 and q.newest_age == 0.5 and q.error is None
    assert q.backlog == 3 + 1 + 3 + 4, "ready + due + in flight + orphaned: held messages all count"


def test_orphans_never_exceed_what_is_held() -> None:
    """A dead worker's ack set can name ids already gone from the queue."""
    (q,) = parse_probe(["a"], reply((3, 5, 0, 0, 0, -1, -1, 9, b"", b"", b"", b"")))
    assert (q.in_flight, q.orphaned, q.backlog) == (0, 2, 5)
    assert q.oldest_age is None


def test_a_queue_error_comes_back_on_that_queue_only() -> None:
    stats = parse_probe(["bad", "good"], reply((0,) * 8 + (b"", b"", b"", b"dramatiq:bad is a zset, not a Dramatiq queue list"), (1, 1, 0, 0, 0, NOW, NOW, 0, b"", b"", b"", b"")))
    assert stats[0] == QueueStats("bad", error="dramatiq:bad is a zset, not a Dramatiq queue list")
    assert stats[1].ready == 1 and stats[1].error is None


def test_fleet_backlog_sums_orphaned_and_keeps_totals() -> None:
    qs = [QueueStats("a", ready=1, in_flight=2, orphaned=3), QueueStats("b", due=4, orphaned=1)]
    total = FleetBacklog.of(qs)
    assert (total.orphaned, total.backlog, total.depth) == (4, 11, 5)
    assert total.to_dict()["orphaned"] == 4 and qs[0].to_dict()["orphaned"] == 3


def test_work_counters_come_back_per_queue_and_sum_over_the_fleet() -> None:
    a, b = parse_probe(["a", "b"], reply((0, 0, 0, 0, 0, -1, -1, 0, b"120", b"6.5", b"0.75", b""), (0, 0, 0, 0, 0, -1, -1, 0, b"", b"", b"", b"")))
    assert (a.done_total, a.busy_seconds_total, a.busy_sq_total) == (120.0, 6.5, 0.75)
    assert (b.done_total, b.busy_seconds_total, b.busy_sq_total) == (None, None, None), "no worker with the hook reported on b"
    total = FleetBacklog.of([a, b, QueueStats("c", done_total=30.0, busy_seconds_total=1.5)])
    assert (total.done_total, total.busy_seconds_total) == (150.0, 8.0)
    assert FleetBacklog.of([b]).done_total is None


def test_a_garbled_counter_reads_as_absent() -> None:
    (q,) = parse_probe(["a"], reply((0, 0, 0, 0, 0, -1, -1, 0, b"lots", b"-3", b"nan", b"")))
    assert (q.done_total, q.busy_seconds_total, q.busy_sq_total) == (None, None, None)


def test_the_newest_age_is_the_tails_unless_its_timestamp_cannot_be_the_newest() -> None:
    # ready, held, delayed, due, dead, head_ts, tail_ts, orphaned, done, busy, busy_sq, error
    def newest(ready: int, head: int, tail: int) -> float | None:
        (q,) = parse_probe(["a"], reply((ready, ready, 0, 0, 0, head, tail, 0, b"", b"", b"", b"")))
        return q.newest_age

    assert newest(5, NOW - 9000, NOW - 1500) == 1.5
    assert newest(5, NOW - 9000, NOW - 9000) == 9.0, "a burst sent at one moment"
    assert newest(1, NOW - 4000, NOW - 4000) == 4.0, "one ready message: the probe gives the head's"
    assert newest(5, NOW - 9000, -1) is None, "not a number"
    assert newest(5, NOW - 9000, NOW + 1) is None, "newer than Redis' clock"
    assert newest(5, NOW - 9000, NOW - 9001) is None, "older than the head: moved back to the list"
    assert newest(5, -1, NOW - 1000) is None, "no head to bound it by"
    assert newest(0, -1, -1) is None


def test_the_fleets_newest_age_is_the_latest_arrival_anywhere_and_only_when_every_queue_gives_one() -> None:
    a = QueueStats("a", ready=3, oldest_age=20.0, newest_age=12.0)
    b = QueueStats("b", ready=2, oldest_age=8.0, newest_age=5.0)
    empty = QueueStats("empty")
    total = FleetBacklog.of([a, b, empty])
    assert (total.oldest_age, total.newest_age) == (20.0, 5.0)
    unknown = QueueStats("c", ready=1, oldest_age=1.0)  # its newest unknown: it may have come just before the read
    assert FleetBacklog.of([a, b, unknown]).newest_age is None
    assert FleetBacklog.of([empty]).newest_age is None
