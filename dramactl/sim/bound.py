"""A lower bound on the worker-seconds of *any* policy on a workload.

Claim. Let messages i arrive at a_i with service times S_i, workers have ``threads``
threads, a policy keeps at least MIN workers alive at every moment of [0, H] (H the
trace's duration) and serves every message, and W = ∫_0^H' n(t) dt are its
worker-seconds up to H' >= H, when its last message completes (the simulator runs
until then). Let Q(H) be the work left at H in a *fluid* queue fed with work S_i at
a_i and drained at the constant rate MIN x threads. Then

    W >= LB = MIN x H + Q(H) / threads.

Proof. Let b(t) be the threads busy at t; a busy thread belongs to a live worker, so
n(t) >= b(t) / threads, and n(t) >= MIN on [0, H]. Split the work done before H into
F = ∫_0^H min(b, MIN x threads) dt (under the floor) and the rest. Then

    ∫_0^H n >= ∫_0^H max(MIN, b / threads) = MIN x H + ∫_0^H (b - MIN x threads)^+ / threads,
    ∫_H^H' n >= ∫_H^H' b / threads,

so W >= MIN x H + (Σ S_i - F) / threads. F is work done at a rate at most
MIN x threads and never before its message arrived, i.e. a feasible schedule of the
fluid queue above; the fluid queue serving work as early as possible completes the
most by H, Σ S_i - Q(H), hence F <= Σ S_i - Q(H) and W >= LB. ∎

It needs no start-up, no discreteness and no foresight to reach, so no policy, the
clairvoyant one included, goes under it (tests/unit/test_bench.py checks every
policy, trace and seed). On steady load above the floor it is the fluid demand
∫ λ E[S] / threads; on blocks of messages it credits the floor's idle threads.
"""

from __future__ import annotations

from typing import Sequence


def work_lower_bound(arrivals: Sequence[float], services: Sequence[float], threads: int, min_workers: int, horizon: float) -> float:
    """MIN x H + Q(H) / threads (see the module docstring); ``arrivals`` sorted."""
    rate = min_workers * threads
    left, last = 0.0, 0.0
    for at, service in zip(arrivals, services):
        if at >= horizon:
            break
        left = max(0.0, left - rate * (at - last)) + service
        last = at
    left = max(0.0, left - rate * (horizon - last))
    return min_workers * horizon + left / threads
