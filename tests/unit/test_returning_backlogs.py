"""A job every minute, through the simulator with the real policy (seeds 1-3, CI-sized): too
frequent for the three-block rule (a period must exceed two tolerances, 60 s), each job's
backlog grew the fleet and each drain released it, two actions a job (118.7 actions/h
against a limit of 40.7 over an hour, ``python -m bench.jobs``). A backlog that comes back
within SCALE_DOWN_STABILIZATION (120 s) now keeps its fleet
(:func:`dramactl.calm.returning_backlog`); this test failed before it (115.0 actions/h
against 48.0). Once three jobs make a stream, they are batches of one rate, staffed for
with their size in its noise (:mod:`dramactl.rates`)."""

from __future__ import annotations

from bench.long_tasks import calm, runs
from bench.traces import periodic


def test_a_job_every_minute_keeps_the_calm_target() -> None:
    r = runs(periodic(count=120, every=60.0, duration=1200.0))
    check = calm("every-60s", r)
    assert check.passed, check
    assert all(x.flaps_per_hour == 0 for x in r["dramactl"]), [x.flaps_per_hour for x in r["dramactl"]]
    flaps = sum(x.flaps_per_hour for x in r["dramactl"]) / len(r["dramactl"])
