"""Two calm rules of the work-based policy (pure): act on evidence beyond the noise, and
keep what cost a start-up until it has paid for it.

* :func:`rate_growth`: growth for the measured arrivals alone, while nothing waits,
  needs the evidence a shrink needs. The policy shrinks no lower than the fleet for the
  load two standard errors *up* (:meth:`dramactl.rates.WorkRates.load_high`); if it grew
  at every estimate above the fleet's, it would ratchet up on the estimate's own noise
  (each high reading grows it at once, the low ones cannot shrink it) and settle a
  standard error or two above the load. So growth for the rate, with no message
  waiting anywhere, needs the load two standard errors *down* to need more than the
  fleet has. The noise is the estimate's: wide where the rate rests on few arrivals and
  the mean service time on few completions (long tasks at low rates), negligible at
  high rates. A real shortfall shows as waiting messages (ready in Redis, or prefetched
  beyond the threads), and then the fleet grows for the estimate and the drain at once.
* :func:`starting_hold`: no shrink while an instance is starting, nor within the
  start-up of the last growth (rent-or-buy).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .rates import WorkRates
from .state import TickRecord


def rate_growth(
    for_rate: int, current: int, nothing_waits: bool, rates: WorkRates, sigmas: float, fleet: Callable[[float], int],
) -> tuple[int, str]:
    """(workers to grow to for the arrivals, a note for the tick line): ``for_rate``
    (the fleet for the load's estimate), or ``current`` when nothing waits and the load
    ``sigmas`` standard errors down needs no more than ``current`` (``fleet``: workers
    for a load in busy threads)."""
    if for_rate <= current or not nothing_waits:
        return for_rate, ""
    low = rates.load_low(sigmas)
    if low is None:
        return for_rate, ""
    need = fleet(low)
    if need > current:
        return for_rate, ""
    return current, f" (nothing waits, and {sigmas:g} sigma down, {low:.1f} busy threads, needs {need}: within the estimate's noise)"


def starting_hold(history: Sequence[TickRecord], now: float, starting: int, startup: float) -> str | None:
    """Why not to shrink now, or None: an instance is still starting, or the last growth
    is younger than the start-up. An instance stopped before it has run as long as it
    took to start paid its start-up for nothing; and the growth was decided on evidence
    no newer than a start-up ago, so undoing it sooner acts on the same evidence twice
    (the rent-or-buy rule: keep what cost a start-up at least as long as the start-up)."""
    if starting:
        return f"{starting} still starting"
    grown = [r.at for r in history if r.target > r.workers]
    if grown and now - grown[-1] < startup:
        return f"started {now - grown[-1]:.0f}s ago, start-up {startup:.0f}s"
    return None
