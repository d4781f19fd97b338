"""The policy's view in status and the dashboard: the default policy's own figures (the tick's reason, as fields),
the step rule's thresholds only under POLICY=step (pure)."""

from __future__ import annotations

import re

import pytest

from dramactl.policyview import describe, view
from dramactl.state import TickRecord
from dramactl.stats import FleetBacklog
from tests.unit.test_work_policy import NOW, running, seen, settings, worked


def figures_in_reason(v: dict) -> None:
    """Every figure of the view is the one the tick's reason (computed by the policy itself) prints."""
    reason = v["reason"]
    if v["arrival_rate"] is not None:
        assert f"λ {v['arrival_rate']:.2f}/s x E[S] {v['service_time']:.2f}s = {v['busy_threads']:.1f} busy threads needs {v['needs']['arrivals']}" in reason, (v, reason)
    if v["needs"]["drain"] is not None:
        assert f"{v['waiting']} waiting drain in {v['drain_seconds']:.0f}s with {v['needs']['drain']}" in reason, (v, reason)
    elif v["waiting"]:
        assert f"{v['waiting']} waiting within the queue" in reason, (v, reason)  # the queue's noise: nothing to drain
    if v["needs"]["recurring"] is not None:
        assert f": {v['needs']['recurring']} ready for them" in reason, (v, reason)
    if v["needs"]["latency_guard"] is not None:
        assert "MAX_QUEUE_WAIT" in reason


SCENARIOS = {
    "burst on slow messages": (worked(1.0, 4.0, workers=2, backlog=0), 1.0, 4.0, 300, 16),
    "steady tiny messages": (worked(300, 0.05, workers=2, backlog=0), 300, 0.05, 0, 8),
    "quiet": (worked(0.2, 1.0, workers=1, backlog=0), 0.2, 1.0, 0, 0),
    "learned start-up": (worked(2.0, 2.0, workers=3, backlog=0, startup=7.5), 2.0, 2.0, 40, 16),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_default_view_is_the_ticks_own_figures(name: str) -> None:
    history, rate, service, ready, in_flight = SCENARIOS[name]
    current = history[-1].workers
    backlog = seen(history, rate, service, ready=ready, in_flight=in_flight)
    v = view(backlog, running(current), settings(), history, NOW)
    assert (v["name"], v["by"]) == ("default", "work")
    assert v["arrival_rate"] == pytest.approx(rate, rel=1e-3, abs=0.01) and v["service_time"] == pytest.approx(service, abs=0.01)
    assert v["busy_threads"] == pytest.approx(rate * service, rel=0.01, abs=0.01)
    assert v["needs"]["arrivals"] is not None and v["target"] >= 1 and "scale_up_above" not in v
    figures_in_reason(v)
    text = "\n".join(describe(v))
    assert "step" not in text and "threshold" not in text
    assert f"arrivals {v['arrival_rate']:.2f}/s x E[S] {v['service_time']:.2f}s" in text and f"target {v['target']}" in text


def test_learned_start_up_is_shown_as_learned() -> None:
    history, rate, service, ready, in_flight = SCENARIOS["learned start-up"]
    v = view(seen(history, rate, service, ready=ready, in_flight=in_flight), running(3), settings(), history, NOW)
    assert (v["startup"], v["startup_learned"]) == (7.5, True)
    assert "start-up 7.5s (learned)" in describe(v)[0]
    fresh = view(FleetBacklog(), running(1), settings(), [], NOW)
    assert fresh["startup_learned"] is False and "assumed" in describe(fresh)[0]


def test_a_recurring_block_shows_the_fleet_it_asks_for() -> None:
    """Three blocks of 300 messages 180 s apart on a trickle of 0.2/s (a recurrence needs three): the fourth is due
    in 30 s, and the view names the fleet that rule asks for (the one the reason names)."""
    history: list[TickRecord] = []
    done = 0.0
    for k in range(40):
        done += 15 * 0.2 + (300 if k in (6, 18, 30) else 0)
        history.append(TickRecord(NOW - 15 * (40 - k), 0, 2, 2, wanted=2, done=done, busy=done * 1.0, for_rate=1))
    backlog = FleetBacklog(done_total=done + 3, busy_seconds_total=(done + 3) * 1.0)
    v = view(backlog, running(2), settings(), history, NOW)
    assert v["needs"] == {"arrivals": 1, "drain": None, "latency_guard": None, "recurring": 3, "rising": None}, v
    assert "300 msgs land every 180s, due in 30s" in v["reason"]
    figures_in_reason(v)
    assert "recurring block 3, rising load -; wants 1, target 3" in describe(v)[1]


def test_before_any_work_is_reported_it_says_it_sizes_by_count() -> None:
    v = view(FleetBacklog(ready=40), running(2), settings(), [], NOW)
    assert (v["by"], v["arrival_rate"], v["backlog_per_worker"]) == ("count", None, 8)
    assert v["needs"]["backlog"] == v["wanted"] and v["target"] >= 2
    assert describe(v)[0].startswith("policy default, by count until workers report work: 8 per worker")


def test_step_view_is_its_thresholds_only() -> None:
    history = worked(1.0, 4.0, workers=2)
    v = view(seen(history, 1.0, 4.0, ready=7), running(4), settings(POLICY="step"), history, NOW)
    assert v == {"name": "step", "workers": 4, "depth": 7, "scale_up_above": 20.0, "scale_down_below": 10.0}
    (line,) = describe(v)
    assert line.startswith("policy step: up above 20, down below 10 (depth 7")
    assert "E[S]" not in line and "arrivals" not in line


def test_without_redis_the_default_view_says_so() -> None:
    v = view(None, running(2), settings(), [], NOW)
    assert describe(v) == ["policy default: Redis could not be read"]
    assert re.search(r"up above 10", describe(view(None, running(2), settings(POLICY="step"), [], NOW))[0])


def test_the_latency_guard_shows_the_fleet_it_asks_for() -> None:
    history = worked(1.0, 2.0, workers=2, backlog=0)
    backlog = FleetBacklog(ready=5, in_flight=16, done_total=10_000, busy_seconds_total=20_000, oldest_age=90.0)
    v = view(backlog, running(2), settings(), history, NOW)
    assert v["needs"]["latency_guard"] == 3  # 2 up, the oldest waited 90 s > 60 s: +ceil(2 x 0.5)
    assert "oldest message waited 90s > MAX_QUEUE_WAIT=60s: +1" in v["reason"]
    figures_in_reason(v)
    assert "latency guard 3" in describe(v)[1]


def test_with_a_fleet_name_the_view_says_it_is_this_hosts() -> None:
    history = worked(1.0, 4.0, workers=2)
    v = view(seen(history, 1.0, 4.0), running(2), settings(FLEET_NAME="shop"), history, NOW)
    assert v["note"].startswith("this host's view; fleet shop decides from every host's instances")
    assert describe(v)[-1] == f"  ({v['note']})"
    assert "note" not in view(seen(history, 1.0, 4.0), running(2), settings(), history, NOW)
