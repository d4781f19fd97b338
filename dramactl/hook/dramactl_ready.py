"""What dramactl adds to every worker instance: readiness, a watchdog, and no lost messages.

Dramatiq imports this module in each worker process after the app's broker
(``dramatiq app dramactl_ready``). It lives alone in its directory and needs only
Dramatiq and the stdlib, so it can be put on the path of an app's own virtualenv.

What it installs:

* :class:`ReadyNotifier`: ``READY=1`` for ``Type=notify`` once the consumers run and
  the broker's Redis answers,
  ``WATCHDOG=1`` while every consumer and worker thread lives (and through a reload's
  drain), ``STOPPING=1``.
* :class:`FollowUpGuard`: no message is acked before everything its processing
  enqueued is stored in Redis: its retry, a pipeline's next step, callbacks,
  ``on_retry_exhausted``. Dramatiq logs a refused enqueue and acks the original
  anyway; the guard holds the worker thread (and with it the ack) until Redis takes
  each follow-up. Interrupts (``time_limit``, shutdown notifications) cannot cut the
  follow-ups short; when they did anyway, the message is left unacked.
* :class:`Maintenance`: Dramatiq redelivers the messages of a dead worker (one
  whose heartbeat expired) only when a dispatch happens to draw maintenance
  (0.1 % of calls). Every few seconds this runs Dramatiq's own dispatch script
  with maintenance on, for each queue the worker consumes; once at boot, too. It
  also publishes the broker's heartbeat timeout, so ``dramactl`` can tell orphaned
  messages from in-flight ones. And it sweeps: messages in this live worker's ack
  sets that the process does not hold (a fetch a hung Redis ran after the client
  gave up; delayed messages Dramatiq dropped from memory on a connection error; an
  ack that never happened; the message and the prefetched work of worker threads an
  interrupt ended) go back to their queues through Dramatiq's requeue script.
  On a thread of its own (no Redis needed, so a hung Redis does not hold it up),
  worker threads stuck in their actor past its time limit (blocked where Dramatiq's
  interrupt cannot reach) are named in the journal and the unit's status; when every
  worker thread is stuck, :class:`ReadyNotifier` stops pinging the watchdog.
* Acks and nacks that time out are retried like those that lose the connection
  (:func:`_timeouts_as_connection_loss`, Bogdanp/dramatiq#894); one Dramatiq gives up
  on anyway is no longer held by the process, so the sweep hands its message back.
* :class:`WorkReporter`: per queue, messages completed, seconds spent on them and the
  sum of those seconds squared (their spread, for ``dramactl replay``), added up in
  memory and flushed by a background thread at most once a second in one pipelined
  round trip (HINCRBY done, HINCRBYFLOAT busy and busy_sq, HSET at) into
  ``<ns>:__dramactl__.work.<queue>``, the cumulative counters dramactl's probe
  reads to size the fleet by work. In the same round trip it publishes this worker
  process's report (threads, busy threads, start of the oldest running task, held
  messages, messages fetched and waiting for a thread, whether its intake is paused)
  into ``<ns>:__dramactl__.instances.<host>``, field ``<instance>.<pid>``: what
  dramactl's scale-down reads to stop the least busy instance first (the HASH expires
  REPORTS_TTL_MS after the host's last flush: while it exists, the other hosts of a
  fleet count these processes even if this host's ticks stop). It never
  raises into the app's middleware chain. Also in that round trip it reads whether the
  scaler paused this instance's intake (``<ns>:__dramactl__.pause.<host>``, field
  ``<instance>``: a scale-down waits for its long tasks, dramactl/intake.py; read once
  at boot too, before the consumers start); while
  it is, the consumers fetch 0 messages (Dramatiq's fetch script still runs, so the
  broker heartbeat goes on) and the instance drains to completion. A stop or reload
  signal (SIGTERM, SIGHUP) pauses the intake too, at once (``_pause_on_signal``). Once the
  process's mean task is a second or more, its consumers fetch only what a free thread can
  start (:class:`FreeThreads`): a message waits in Redis for the fleet's first free thread,
  not in the work queue of an instance whose threads all run long tasks.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import dramatiq
from dramatiq.middleware import Middleware, MiddlewareError

log = logging.getLogger("dramactl.hook")

MAINTENANCE_SECONDS = 5.0
HEARTBEAT_KEY = "{namespace}:__dramactl__.heartbeat_timeout"  # read by dramactl's probe
WORK_KEY = "{namespace}:__dramactl__.work.{queue}"  # done / busy / busy_sq / at, read by dramactl's probe
WORK_FLUSH_SECONDS = 1.0
HOLD_ALARM_SECONDS = 60.0  # a hold this long is an error in the worker's journal ...
HOLD_ALARM_REPEAT_SECONDS = 600.0  # ... repeated this often while it lasts
STUCK_GRACE_SECONDS = 30.0  # a thread still in its actor this long past the actor's time limit is stuck
SWEEP_ROUNDS = 2  # rounds in a row an id sits in the ack set, not in the process, before it is handed back
REQUEUE_CHUNK = 500  # ids per call of Dramatiq's requeue script
INSTANCES_KEY = "{namespace}:__dramactl__.instances.{host}"  # field "<instance>.<pid>", read by dramactl's probe
REPORTS_TTL_MS = 10_000  # each flush keeps the host's reports HASH this long: it outlives its last reporting process by this
PAUSE_KEY = "{namespace}:__dramactl__.pause.{host}"  # field "<instance>": its intake is paused (written by dramactl's tick)
BOOT_READ_SECONDS = 2.0  # the boot's read of the pause waits this long at most (a hung Redis)


class Holds:
    """Messages this process holds back from their ack (counted by the guards that hold them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    def count(self) -> int:
        with self._lock:
            return max(0, self._count)


HOLDS = Holds()


def _pausable_fetch(broker, *paused: threading.Event, gate: "FreeThreads | None" = None) -> bool:
    """Make the Redis broker's consumers fetch 0 messages while any of ``paused`` is set, and
    otherwise through ``gate`` (only what a free thread can start, :class:`FreeThreads`). They
    call ``broker.do_fetch`` (RedisBroker.__getattr__ builds it per call) whenever they hold
    fewer than their prefetch; an attribute of the same name on the broker comes first.
    Dramatiq's dispatch script with a count of 0 pops nothing but still records the
    heartbeat, so the messages this process runs are not taken for a dead worker's."""
    if "do_fetch" in vars(broker):
        return False  # already wrapped (or the app's own): leave it
    try:
        fetch = broker.do_fetch
    except AttributeError:
        return False  # not the Redis broker

    def do_fetch(queue_name, prefetch):
        if any(p.is_set() for p in paused):
            return fetch(queue_name, 0)
        if gate is not None:
            return gate.fetch(fetch, queue_name, prefetch, paused)
        return fetch(queue_name, prefetch)

    broker.do_fetch = do_fetch
    return True


LONG_TASK_SECONDS = 1.0  # a process whose mean task is at least this long fetches only for its free threads


class FreeThreads:
    """Once this process's tasks are long, its consumers fetch only what a free thread can start.

    Dramatiq's Redis consumer fetches whenever it holds fewer than its prefetch (2 x the
    threads by default), so the instances' consumers race for each message: one whose
    threads are all busy takes it as readily as an idle one (more readily: a consumer that
    just got a message polls again at once, an idle one backs off to once a second), and
    the message then waits in its work queue behind a running task, for long tasks minutes,
    while another instance has idle threads. It also holds those messages through a stop's
    drain, and hands them back only at its end. With this gate a message stays in Redis
    until a thread is free for it, and the first free thread of the fleet takes it.

    Free threads are the live worker threads less what the process holds unfinished:
    Dramatiq's own count for its consumers (fetched and not yet acked or nacked, delayed
    queues apart), or the running tasks when more, and the fetches under way. A consumer with
    no free thread waits for one (an ack or nack frees it) at most the worker timeout
    (Dramatiq's longest back-off, so the heartbeat and the consumer's checks for a stop go on as
    before), then fetches 0 (the heartbeat) and is told to come back at once, so a freed thread
    gets its next message one Redis round trip after its ack rather than after a poll. A pause
    (the scaler's, a stop or reload signal) fetches 0 at once, also for a consumer already
    waiting here. Hence the threshold :data:`LONG_TASK_SECONDS`: from a mean task of a second,
    that round trip is under 0.1 % of a task, and a fetch per message is at most one a second
    per thread; below it, Dramatiq's batched prefetch is kept (a message waits behind a busy
    thread for less than a second there). Until a task has completed, the gate is on: a new
    instance of a long-task app does not take a whole prefetch first. The count is taken under
    a lock, the fetch itself outside it (reserved meanwhile), so a hung Redis holds up only the
    consumer whose call hangs, and two consumers never take more than the free threads."""

    def __init__(self, worker, reporter: "WorkReporter") -> None:
        self.worker = worker
        self.reporter = reporter
        self.poll = max(0.01, float(getattr(worker, "worker_timeout", 1000)) / 1000.0)
        self.changed = threading.Condition()  # an ack or nack freed a thread
        self.waiting = 0  # consumers in :meth:`fetch` (an ack wakes them only then: no lock per message otherwise)
        self.reserved = 0  # messages asked for by fetches under way
        self.last: dict[str, object] = {}  # queue -> the list its last fetch returned (the consumer's cache-to-be)

    @property
    def long(self) -> bool:
        mean = self.reporter.mean_task()
        return mean is None or mean >= LONG_TASK_SECONDS

    def threads(self) -> int:
        live = [t for t in getattr(self.worker, "workers", None) or () if t.is_alive()]
        return len(live) if live else int(getattr(self.worker, "worker_threads", 0) or 0)

    def held(self, caller: str) -> int:
        """What this process holds unfinished (see the class), the consumer ``caller`` apart from the
        list it is about to replace."""
        held = 0
        for name, thread in list(getattr(self.worker, "consumers", {}).items()):
            consumer = getattr(thread, "consumer", None)
            if name.endswith(".DQ") or consumer is None:
                continue
            cache = getattr(consumer, "message_cache", [])
            held += len(getattr(consumer, "queued_message_ids", ())) + len(cache)
            last = self.last.get(name)
            if name != caller and last is not None and cache is not last:
                held += len(last)  # returned by its fetch a moment ago, not in its cache yet
        return max(held, self.reporter.busy()) + self.reserved

    def fetch(self, fetch, queue_name: str, prefetch: int, paused=()):
        if queue_name.endswith(".DQ") or not self.long:
            return fetch(queue_name, prefetch)
        deadline = time.monotonic() + self.poll
        with self.changed:
            self.waiting += 1  # before the count: an ack after it sees a waiter and wakes it
            try:
                while True:
                    stop = any(p.is_set() for p in paused)
                    count = 0 if stop else min(prefetch, max(0, self.threads() - self.held(queue_name)))
                    left = deadline - time.monotonic()
                    if count or stop or left <= 0:
                        break
                    self.changed.wait(left)
            finally:
                self.waiting -= 1
            self.reserved += count
        try:
            got = fetch(queue_name, count)
        except BaseException:
            with self.changed:
                self.reserved -= count
            raise
        with self.changed:
            self.reserved -= count
            self.last[queue_name] = got
        if not count and not stop:
            self._come_back(queue_name)
        return got

    def _come_back(self, queue_name: str) -> None:
        """The consumer backs off after an empty fetch, up to the worker timeout: reset its
        count of misses so it is back in :meth:`fetch` within a few milliseconds."""
        try:
            self.worker.consumers[queue_name].consumer.misses = 0
        except Exception:  # noqa: BLE001 - another consumer than Dramatiq's Redis one: its own back-off
            pass

    def thread_freed(self) -> None:
        if self.waiting:
            with self.changed:
                self.changed.notify_all()


def host_identity() -> str:
    """This host's identity, exactly as dramactl.reports.host_identity computes it (the hook
    cannot import dramactl; tests/unit/test_victims.py checks the two agree)."""
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            ident = f.read().strip()
    except (OSError, ValueError):
        return socket.gethostname()
    return ident if len(ident) == 32 and all(c in "0123456789abcdef" for c in ident) else socket.gethostname()


def notify(state: str) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def _notify_quietly(state: str) -> None:
    try:
        notify(state)
    except OSError:
        pass


def _chain_signal(name: str, action) -> None:
    """Run ``action`` when signal ``name`` arrives, then the handler installed before it:
    Dramatiq's worker process has one for SIGTERM and SIGHUP (its stop and its reload).
    Only in the main thread, and only over such a handler: an embedded Worker's process
    keeps its default."""
    import signal

    sig = getattr(signal, name, None)
    if sig is None or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(sig)
    if not callable(previous):
        return

    def handler(signum, frame):
        action()
        previous(signum, frame)

    signal.signal(sig, handler)


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= (systemd's advice), or None when the unit has no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None


class ReadyNotifier(Middleware):
    """READY=1 once the worker threads and consumers run and Redis answers; WATCHDOG=1 while they all
    live (a dead consumer thread means a worker that no longer takes messages, and
    systemd restarts it); STOPPING=1 on shutdown.

    A SIGHUP (``systemctl reload``, whose ExecReload= sends it to Dramatiq's main
    process, or Dramatiq's own ``--watch``) is a reload, not a stop: Dramatiq drains
    this process and re-executes itself under the same main PID. The process says
    RELOADING=1 as soon as the signal arrives (so systemd keeps the reload job open
    until the new process's READY=1) and never STOPPING=1, which would put the unit in
    ``deactivating`` with no stop job while the worker comes back; it pings the
    watchdog through the drain, since systemd keeps it armed while the unit reloads
    (:meth:`_watchdog`).
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.reloading = False

    def after_worker_boot(self, broker, worker) -> None:
        queues = ",".join(sorted(getattr(worker, "consumers", None) or broker.get_declared_queues()))
        STATUS["consuming"] = f"consuming {queues} with {worker.worker_threads} threads"
        self._watch_reload()
        client = getattr(broker, "client", None)
        if client is None or not callable(getattr(client, "ping", None)):  # not Redis' broker: nothing to ask
            self._ready(worker)
            return
        # Off the boot's thread: a hung Redis must not hold up the boot (nor a stop during it).
        threading.Thread(target=self._ready_once_reachable, args=(client, worker), name="dramactl-ready", daemon=True).start()

    def _ready_once_reachable(self, client, worker) -> None:
        """READY=1 once the broker's Redis answers. Dramatiq's consumers retry a connection
        error for ever, so a process that cannot reach Redis (a wrong REDIS_* in a deploy,
        Redis down at boot) looked ready and consumed nothing: a rolling restart replaced a
        healthy fleet with it and said so with exit 0. Until Redis answers it stays
        activating, says why in its status line, and systemd's TimeoutStartSec= fails the
        start if it never does (the roll then stops, the instances not replaced serving)."""
        said = ""
        while not self.stopping.is_set():
            try:
                client.ping()
            except Exception as exc:  # noqa: BLE001 - any failure to answer: not ready yet
                why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                if why != said:
                    said = why
                    log.warning("dramactl: Redis does not answer (%s); READY=1 waits for it (TimeoutStartSec= fails the start if it never does)", why)
                    _notify_quietly(f"STATUS=waiting for Redis before READY=1: {why}")
                self.stopping.wait(1.0)
                continue
            self._ready(worker)
            return

    def _ready(self, worker) -> None:
        notify(f"READY=1\nSTATUS={STATUS['consuming']}")
        interval = watchdog_interval()
        if interval:
            threading.Thread(target=self._watchdog, args=(worker, interval), name="dramactl-watchdog", daemon=True).start()

    def _watch_reload(self) -> None:
        """Before Dramatiq's own SIGHUP handler (which begins the drain): RELOADING=1."""

        def reloading() -> None:
            if not self.reloading:
                self.reloading = True
                _notify_quietly("RELOADING=1\nSTATUS=reloading: draining, then Dramatiq starts again with the code on disk")

        _chain_signal("SIGHUP", reloading)

    def _watchdog(self, worker, interval: float) -> None:
        """WATCHDOG=1 every ``interval`` while every consumer and worker thread lives, the
        first right after READY=1. On a stop (STOPPING=1) the pings end: systemd disarms the
        watchdog. On a reload they go on through the drain, whatever the threads do: systemd
        keeps the watchdog armed while the unit reloads, and a drain without pings, then a
        new process whose first ping came ``interval`` after its READY=1, outlasted
        WatchdogSec= (SIGABRT: the tasks in hand cut off, run again elsewhere) whenever the
        tasks took longer to finish than the watchdog's slack. Dramatiq bounds the drain
        (--worker-shutdown-timeout), then this process exits and pings no more."""
        withheld = False
        while True:
            if self.stopping.is_set():
                if not self.reloading:
                    return
                _notify_quietly("WATCHDOG=1")
                time.sleep(interval)
                continue
            threads = list(getattr(worker, "consumers", {}).values()) + list(getattr(worker, "workers", []))
            workers = list(getattr(worker, "workers", []))
            # Every worker thread stuck past its time limit (Maintenance.check_stuck): alive, but
            # this process will never take another message. No ping: systemd restarts it.
            stuck = bool(workers) and all(t.ident in STUCK["threads"] for t in workers)
            if stuck and not withheld:
                log.error("dramactl: every worker thread is stuck past its time limit; no longer pinging systemd's watchdog, which restarts this instance")
            withheld = stuck
            if threads and all(t.is_alive() for t in threads) and not stuck:
                _notify_quietly("WATCHDOG=1")
            self.stopping.wait(interval)

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        if not self.reloading:
            notify("STOPPING=1\nSTATUS=draining: finishing or requeueing held messages")

    def after_worker_shutdown(self, broker, worker) -> None:
        if self.reloading and watchdog_interval():
            # The drain is over and the process execs again: one last ping, so the watchdog
            # counts only the new process's start until its first (right after READY=1).
            _notify_quietly("WATCHDOG=1")


STUCK = {"threads": frozenset()}  # idents of worker threads stuck past their time limit (Maintenance.check_stuck)
STATUS = {"consuming": "", "stuck": ""}  # the unit's STATUS= line while all is well (systemctl status shows it); stuck threads


class Unfinished(MiddlewareError):
    """Raised from ``before_ack``/``before_nack`` to keep a message unacked: Dramatiq
    logs it and leaves the message in this worker's ack set, and the stranded-message
    sweep (:class:`Maintenance`) hands it back to its queue."""


class _Work:
    """The message a worker thread processes, from ``before_process_message`` to its ack."""

    __slots__ = ("message", "pending", "unstored", "dropped", "phase", "complete", "tracking", "cut_short")

    def __init__(self, message) -> None:
        self.message = message
        self.pending: dict[int, tuple] = {}  # id(enqueued copy) -> (copy, delay, phase) not stored yet
        self.unstored: list[tuple[str, object, float]] = []  # (what, a write to try again, until when): a result Redis refused
        self.dropped = 0  # follow-ups a hold gave up on (never storable, or a result past its result_ttl)
        self.phase = "actor"  # then "after": Dramatiq's after_process_message hooks run
        self.complete = False  # every after_process_message hook ran (none was cut short)
        self.tracking = True
        self.cut_short = False  # an after-hook failed without an enqueue to hold (a second run, a group barrier, an interrupt past the actor)


class FollowUpGuard(Middleware):
    """No ack before everything the message's processing enqueued is stored in Redis.

    After an actor returns, Dramatiq's middleware enqueue *other* messages from the
    worker thread: Retries the retry, Pipelines the next step, Callbacks
    ``on_success``/``on_failure``, Retries ``on_retry_exhausted``. When Redis refuses
    one, Dramatiq logs it and acks the original anyway: the follow-up exists nowhere.
    This guard tracks every enqueue on the thread (``before_enqueue`` without
    ``after_enqueue``: not stored) and, in ``before_ack``/``before_nack``, holds the
    thread until Redis takes each one. Enqueues the actor itself made count too when
    the actor returned normally (it swallowed the error); when the actor raised, its
    retry makes them again.

    It must be the *last* middleware (its ``before_*`` hooks run last, its
    ``after_*`` hooks first) with :class:`_AfterHooksDone` first. At the start of the
    after-hooks it disarms TimeLimit's deadline and ShutdownNotifications' interrupt
    for the thread: Dramatiq's ``Interrupt`` is a BaseException that its
    ``emit_after`` does not catch, so one landing in Retries' enqueue would skip the
    retry and ack the message. If the after-hooks were cut short anyway (an
    interrupt already on its way), nothing tells which follow-ups are missing: the
    message is left unacked (:class:`Unfinished`) and comes back through the sweep;
    so is one whose interrupt landed after the actor returned, before that first
    after-hook (its traceback has no frame of the actor: :func:`_outside_actor`).
    An interrupt that reaches the hold itself is ignored: the hold goes on.

    The Results middleware writes the actor's return value (or, for a message that
    failed, its exception) the same way: a store Redis refused is held for too, the ack
    waiting until it is stored or its ``result_ttl`` has passed (a caller could no
    longer read it by then; the thread is not pinned for good by a results Redis that
    is gone).
    """

    def __init__(self, max_pause: float = 10.0, alarm_after: float = HOLD_ALARM_SECONDS) -> None:
        self.worker = None
        self.local = threading.local()
        self.lock = threading.Lock()
        self.running: dict[int, object] = {}  # thread ident -> message it processes, until acked
        self.works: dict[int, tuple[float, _Work]] = {}  # thread ident -> (monotonic start, its _Work), until acked
        self.threads: dict[int, threading.Thread] = {}  # thread ident -> the thread, while it runs a message
        self.max_pause = max_pause
        self.alarm_after = alarm_after
        self.held = 0  # holds ever (for tests and the log)
        self.results = None  # the Results middleware, when the app stores results
        self.failures_stored: set[str] = set()  # message ids whose exception the guard stored before their nack

    # -- what the process holds (the sweep reads it) ---------------------------------

    def in_progress(self) -> list:
        """The messages of worker threads that are alive. A thread an interrupt ended inside
        ``post_process_message`` (Dramatiq catches only Exception there) left its message
        unacked and never comes back for it: that message is no longer held by the process,
        so the sweep hands it back."""
        dead = []
        with self.lock:
            for ident in [i for i, t in self.threads.items() if not t.is_alive()]:
                del self.threads[ident]
                self.works.pop(ident, None)
                dead.append(self.running.pop(ident, None))
            held = list(self.running.values())
        for message in dead:
            if message is not None:
                self._release(message)  # nor does it count against its consumer's prefetch any more
        return held

    def _work(self, message) -> _Work | None:
        work = getattr(self.local, "work", None)
        return work if work is not None and work.message is message else None

    def in_actor(self) -> list[tuple[int, object, float]]:
        """(thread ident, message, monotonic start) of each thread still inside its actor."""
        with self.lock:
            return [(ident, work.message, began) for ident, (began, work) in self.works.items() if work.phase == "actor"]

    def _forget(self) -> None:
        self.local.work = None
        with self.lock:
            self.running.pop(threading.get_ident(), None)
            self.works.pop(threading.get_ident(), None)
            self.threads.pop(threading.get_ident(), None)

    # -- hooks -----------------------------------------------------------------------

    def before_worker_boot(self, broker, worker) -> None:
        # Before the worker threads start: none runs a message through an unwatched hook.
        self.worker = worker
        self._watch_writing_hooks(broker)

    def after_worker_boot(self, broker, worker) -> None:
        # Installed last; a middleware added after the hook whose after-hooks enqueue
        # would have its follow-ups judged as the actor's own.
        try:
            later = [type(m).__name__ for m in broker.middleware[broker.middleware.index(self) + 1 :] if type(m).after_process_message is not Middleware.after_process_message]
            if later:
                log.warning("dramactl: middleware added after dramactl_ready (%s): load dramactl_ready last so its guard sees their enqueues", ", ".join(later))
        except Exception:  # noqa: BLE001
            pass

    def track(self, broker, message) -> None:
        """Called by :class:`_AfterHooksDone`, first in the list: the message counts as held
        by the process from before any other middleware's before-hook."""
        self.local.work = work = _Work(message)
        with self.lock:
            self.running[threading.get_ident()] = message
            self.works[threading.get_ident()] = (time.monotonic(), work)
            self.threads[threading.get_ident()] = threading.current_thread()

    def _release(self, message) -> None:
        """A message left unacked on purpose no longer counts against its consumer's prefetch
        (Dramatiq forgets it in ``ack``'s ``finally``, which does not run)."""
        try:
            consumer = self.worker.consumers[message.queue_name].consumer
            consumer.queued_message_ids.discard(message.message_id)
        except Exception:  # noqa: BLE001 - another broker's consumer: nothing to release
            pass

    def before_enqueue(self, broker, message, delay) -> None:
        work = getattr(self.local, "work", None)
        if work is not None and work.tracking:
            work.pending[id(message)] = (message, delay, work.phase)

    def after_enqueue(self, broker, message, delay) -> None:
        work = getattr(self.local, "work", None)
        if work is None:
            return
        work.pending.pop(id(message), None)
        if work.phase == "actor" and work.pending:
            # The actor sent the same message again (it caught the refused send and retried it,
            # by hand or with a retry library): that one is stored, and the copy Redis refused
            # is not sent a second time by the hold.
            same = (message.queue_name, message.actor_name, message.args, message.kwargs)
            for key, (copy, _, phase) in list(work.pending.items()):
                if phase == "actor" and (copy.queue_name, copy.actor_name, copy.args, copy.kwargs) == same:
                    work.pending.pop(key, None)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        work = self._work(message)
        if work is None:
            return
        if work.phase != "actor":
            # Dramatiq runs the after-hooks a second time only when an interrupt escaped the
            # first run: that one was cut short, and this one treats a success as a failure.
            work.cut_short = True
        elif _outside_actor(exception):
            # An interrupt that landed after the actor returned (or before it began), before this
            # hook could disarm it: it escaped Dramatiq's first run of the after-hooks before any
            # ran, and this run takes a success for a failure (with no retry left, Retries would
            # dead-letter it and its next step would never be stored). Cut short as above.
            work.cut_short = True
        work.phase = "after"
        _disarm_interrupts(broker)
        if exception is not None and not work.cut_short:
            # The actor raised: its own failed sends are part of what its retry redoes.
            work.pending = {k: v for k, v in work.pending.items() if v[2] != "actor"}
        work.complete = False

    after_skip_message = after_process_message

    def _watch_writing_hooks(self, broker) -> None:
        """After-hooks that write to Redis other than by an enqueue, which the guard would
        not see fail (Dramatiq's ``emit_after`` logs the error and the ack goes ahead):

        - Results stores the actor's return value: a store Redis refused is kept and
          written again by the hold, before the ack (the actor does not run again);
        - GroupCallbacks counts a group's members down (a barrier) before it enqueues the
          completion: when Redis refuses the count, nothing was enqueued that could be
          held, so such a member is left unacked and runs again (its count with it).

        Only errors that a working Redis ends (:func:`_passing`): one that waiting cannot
        end (a result that cannot be encoded) is left to Dramatiq, which logs it and acks."""
        try:
            from dramatiq.middleware import GroupCallbacks
            from dramatiq.results import Results
        except ImportError:
            return
        for m in broker.middleware:
            if getattr(m, "_dramactl_watched", False):
                continue
            if isinstance(m, GroupCallbacks):
                original = m.after_process_message

                def counted(broker, message, *, result=None, exception=None, _original=original):
                    try:
                        return _original(broker, message, result=result, exception=exception)
                    except Exception as exc:
                        work = self._work(message)
                        if work is not None and _passing(exc):
                            work.cut_short = True
                        raise

                m.after_process_message = counted
            elif isinstance(m, Results):
                self.results = m
                after_process, after_skip, after_nack = m.after_process_message, m.after_skip_message, m.after_nack

                def stored(broker, message, *, result=None, exception=None, _original=after_process):
                    self._keep_refused(broker, message, lambda: _original(broker, message, result=result, exception=exception))

                def stored_none(broker, message, _original=after_skip):
                    self._keep_refused(broker, message, lambda: _original(broker, message))

                def nacked(broker, message, _original=after_nack):
                    if message.message_id in self.failures_stored:  # before the nack (before_nack)
                        self.failures_stored.discard(message.message_id)
                        return None
                    return _original(broker, message)

                m.after_process_message, m.after_skip_message, m.after_nack = stored, stored_none, nacked
            else:
                continue
            m._dramactl_watched = True

    def _keep_refused(self, broker, message, write, what: str = "the result", raises: bool = True) -> bool:
        """Run ``write`` (a Results store); when Redis refuses it for now, keep it for the
        hold, until the result's TTL has passed. True: stored or kept. ``raises``: any error
        goes on (to Dramatiq, which logs it from its own after-hooks)."""
        try:
            write()
            return True
        except Exception as exc:
            work = self._work(message)
            kept = work is not None and _passing(exc)
            if kept:
                ttl = _ttl_seconds(_result_options(self.results, broker, message)[1])
                work.unstored.append((f"{what} of {message.actor_name}@{message.queue_name}", write, time.monotonic() + ttl))
            if raises:
                raise
            return kept

    def _store_failure(self, broker, message) -> None:
        """A failed message's exception, stored before its nack (Results stores it after the
        nack, where a refusal can no longer keep the message): a refused store is held for."""
        store, ttl = _result_options(self.results, broker, message)
        if not store:
            return
        exception = message._exception or Exception("unknown")  # as Results.after_nack
        backend = self.results.backend
        if self._keep_refused(broker, message, lambda: backend.store_exception(message, exception, ttl), "the exception", raises=False):
            self.failures_stored.add(message.message_id)  # else Results tries (and logs) its own store after the nack

    def hooks_done(self, message) -> None:
        work = self._work(message)
        if work is not None:
            work.complete = True

    def before_ack(self, broker, message) -> None:
        work = self._work(message)
        if work is None:
            return  # not processed on this thread (a delayed message moved by its consumer)
        if not work.complete or work.cut_short:
            self._forget()
            self._release(message)
            log.error(
                "dramactl: message %s: Dramatiq's after-processing middleware was interrupted, so its follow-ups "
                "(a retry, a next step, a result) may not exist; leaving it unacked: it goes back to its queue within "
                "%.0fs (stranded-message sweep)",
                message.message_id, 3 * MAINTENANCE_SECONDS,
            )
            raise Unfinished(f"message {message.message_id} left unacked: its follow-ups are unknown")
        if work.pending or work.unstored:
            self._hold(broker, message, work)

    def before_nack(self, broker, message) -> None:
        work = self._work(message)
        try:
            if work is not None and work.complete and not work.cut_short and self.results is not None:
                self._store_failure(broker, message)
        except Exception:  # noqa: BLE001 - the follow-ups' hold below must run whatever the result store did
            log.exception("dramactl: message %s: storing its exception before the nack failed", message.message_id)
        finally:
            self.before_ack(broker, message)

    def after_ack(self, broker, message) -> None:
        if self._work(message) is not None:
            self._forget()

    after_nack = after_ack

    def ack_given_up(self, message) -> None:
        """Dramatiq gave up on this message's ack or nack (an error that is not a connection loss,
        nor a refusal a working Redis ends: :func:`_timeouts_as_connection_loss`). It stays in
        this worker's ack set, and no ``after_ack`` comes: counted as held by its (live, idle)
        thread, the sweep would never hand it back while the thread lives. No longer held, it goes
        back within two sweep rounds and runs again. The sweep moves an id only while it is in
        the ack set: an ack that Redis ran after all removed it, so at worst a duplicate. A later
        ``after_ack`` of the same message finds nothing to forget."""
        if self._work(message) is None:
            return  # not processed on this thread (a delayed message moved by its consumer): not held
        self._forget()
        self.failures_stored.discard(message.message_id)  # no after_nack will
        log.error(
            "dramactl: message %s: Dramatiq gives up on its %s (it logs the error next); the message stays in this "
            "worker's ack set: it goes back to its queue within %.0fs (stranded-message sweep) and runs again",
            message.message_id, "nack" if message.failed else "ack", 3 * MAINTENANCE_SECONDS,
        )

    def _hold(self, broker, message, work: _Work) -> None:
        """Write the follow-ups (and a refused result) again until Redis stores every one; the ack waits."""
        from dramatiq.middleware.threading import Interrupt

        self.held += 1
        HOLDS.add(1)
        work.tracking = False
        began = time.monotonic()
        alarm_at = began + self.alarm_after
        pause = 0.5
        names = ", ".join(sorted({f"{m.actor_name}@{m.queue_name}" for m, _, _ in work.pending.values()} | {what for what, _, _ in work.unstored}))
        log.warning(
            "dramactl: holding message %s unacked: %d follow-up(s) (%s) not stored in Redis; retrying until Redis takes them",
            message.message_id, len(work.pending) + len(work.unstored), names,
        )
        # systemctl status shows it even when Redis takes nothing (the per-instance report needs Redis).
        _notify_quietly(f"STATUS=holding {HOLDS.count()} message(s) unacked: Redis has not stored their follow-ups (a retry, a next step, a result)")
        try:
            while True:
                try:
                    error = self._write_again(broker, message, work)
                    if error is None:
                        break
                    if time.monotonic() >= alarm_at:
                        log.error(
                            "dramactl: message %s held unacked for %.0fs: Redis still refuses its follow-up(s) (%s); "
                            "holding keeps them (the message is not acked, so nothing is lost); fix Redis or stop this instance, "
                            "and the message goes back to its queue",
                            message.message_id, time.monotonic() - began, error,
                        )
                        alarm_at += HOLD_ALARM_REPEAT_SECONDS
                        _notify_quietly(f"STATUS=holding {HOLDS.count()} message(s) unacked: Redis refuses their follow-ups ({error})")
                    time.sleep(pause)
                    pause = min(self.max_pause, pause * 2)
                except Interrupt:
                    log.warning("dramactl: message %s: ignoring %s during the hold; the follow-ups are not stored yet", message.message_id, "an interrupt")
        finally:
            work.tracking = True
            HOLDS.add(-1)
            if HOLDS.count() == 0 and STATUS["consuming"]:
                _notify_quietly(f"STATUS={STATUS['stuck'] or STATUS['consuming']}")
        if work.dropped:
            log.warning(
                "dramactl: message %s: hold ended after %.1fs: %d follow-up(s) dropped (named above), the others stored; acking it",
                message.message_id, time.monotonic() - began, work.dropped,
            )
        else:
            log.warning("dramactl: message %s: follow-up(s) stored after holding it %.1fs; acking it", message.message_id, time.monotonic() - began)

    @staticmethod
    def _write_again(broker, message, work: _Work) -> str | None:
        """One more try at each write not stored yet, in order; the error that stopped it
        (one a working Redis ends), or None once every one is stored or dropped."""
        for key, (follow, delay, _) in list(work.pending.items()):
            stored, error = _try_write(message, follow.actor_name, lambda: broker.enqueue(follow, delay=delay))
            if error is not None:
                return error
            work.dropped += not stored
            work.pending.pop(key, None)
        while work.unstored:
            what, write, until = work.unstored[0]
            stored, error = _try_write(message, what, write)
            if error is not None and time.monotonic() < until:
                return error
            if error is not None:
                log.error(
                    "dramactl: message %s: dropping %s: Redis refused it until its result_ttl passed (%s); "
                    "a caller could no longer read it",
                    message.message_id, what, error,
                )
            work.dropped += not stored
            work.unstored.pop(0)
        return None


def _try_write(message, what: str, write) -> tuple[bool, str | None]:
    """``write()``: (True, None) once stored; (False, the error) when Redis refused it for now;
    (False, None) when it can never be stored (a body that cannot be encoded, a permission Redis
    denies: waiting cannot store it, so it is dropped, as plain Dramatiq does, and said so)."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - sorted just below
        if _passing(exc):
            return False, f"{type(exc).__name__}: {exc}"
        log.error(
            "dramactl: message %s: its follow-up %s can never be stored (%s: %s); dropping that follow-up as Dramatiq does",
            message.message_id, what, type(exc).__name__, exc,
        )
        return False, None
    return True, None


def _passing(exc: Exception) -> bool:
    """A write error that a working Redis ends: down, hung, read-only after a failover,
    full (OOM), loading, no quorum, a failed snapshot (MISCONF: its disk full). Anything
    else (an unencodable body, a permission, a wrong key type) would hold a thread forever."""
    import redis
    from dramatiq.errors import BrokerConnectionError

    transient = (
        redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
        redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError, BrokerConnectionError, OSError,
    )
    if isinstance(exc, transient):
        return True
    # redis-py prefixes an error inside a MULTI/EXEC pipeline ("Command # 1 (...) of pipeline caused error: ").
    reply = str(exc).rpartition("caused error: ")[2]
    codes = ("MASTERDOWN", "TRYAGAIN", "LOADING", "CLUSTERDOWN", "NOREPLICAS", "BUSY", "MISCONF")
    if reply.startswith("Error running script"):
        # Redis < 7.0 wraps an error redis.call raises inside a script (Dramatiq's dispatch.lua: every ack,
        # nack and requeue) in its own: "Error running script (call to f_...): @user_script:57: @user_script:
        # 57: -READONLY You can't write ...". Its code follows the first ": -"; READONLY and OOM are not
        # classes of their own there.
        reply = reply.partition(": -")[2]
        codes += ("READONLY", "OOM")
    return isinstance(exc, redis.ResponseError) and reply.split(" ", 1)[0] in codes


def _outside_actor(exception) -> bool:
    """Whether ``exception`` is an interrupt (TimeLimit's, a shutdown notification) that
    landed while no actor code ran: no frame of the actor's ``__call__`` (Dramatiq's
    ``Actor.__call__``, or an actor class's own) on its traceback. One raised inside the
    actor, or any other exception, is the actor's failure."""
    from dramatiq.actor import Actor
    from dramatiq.middleware import Interrupt

    if not isinstance(exception, Interrupt) or exception.__traceback__ is None:
        return False
    tb = exception.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__call__" and isinstance(frame.f_locals.get("self"), Actor):
            return False
        tb = tb.tb_next
    return True


def _result_options(results, broker, message) -> tuple[bool, object]:
    """(store_results, result_ttl: ms, or whatever the app set) of ``message``, as the Results middleware reads them."""
    try:
        return results._lookup_options(broker, message)
    except Exception:  # noqa: BLE001 - another Dramatiq's Results: store nothing of ours
        return False, 0


def _ttl_seconds(ttl) -> float:
    """A result_ttl as seconds: milliseconds, or a timedelta (redis-py's PEXPIRE takes both);
    anything else (None) is Dramatiq's default."""
    import datetime

    from dramatiq.results.middleware import DEFAULT_RESULT_TTL

    if isinstance(ttl, datetime.timedelta):
        return ttl.total_seconds()
    if isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        return ttl / 1000
    return DEFAULT_RESULT_TTL / 1000


class _AfterHooksDone(Middleware):
    """First in the middleware list: its ``before_process_message`` runs first (the
    message is held from then on) and its ``after_process_message`` last (every other
    after-hook ran without being cut short)."""

    def __init__(self, guard: FollowUpGuard) -> None:
        self.guard = guard

    def before_process_message(self, broker, message) -> None:
        self.guard.track(broker, message)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.guard.hooks_done(message)

    after_skip_message = after_process_message


def _time_limits(broker):
    """A function giving a message's time limit in seconds (None: unlimited), as Dramatiq's
    TimeLimit computes it; None when the broker has no TimeLimit."""
    import math

    from dramatiq.middleware import TimeLimit

    tl = next((m for m in broker.middleware if isinstance(m, TimeLimit)), None)
    if tl is None:
        return None

    def limit_of(message) -> float | None:
        try:
            actor = broker.get_actor(message.actor_name)
            ms = message.options.get("time_limit") or actor.options.get("time_limit", tl.time_limit)
            ms = float(ms)
        except Exception:  # noqa: BLE001 - an actor no longer declared, an odd option: no judgement
            return None
        return ms / 1000 if ms > 0 and math.isfinite(ms) else None

    return limit_of


def _prefetched(worker) -> int:
    queue = getattr(worker, "work_queue", None)
    try:
        return queue.qsize() if queue is not None else 0
    except Exception:  # noqa: BLE001
        return 0


def _disarm_interrupts(broker) -> None:
    """No TimeLimitExceeded or Shutdown for this thread from here on: the actor has
    returned, and an interrupt now could only cut Dramatiq's follow-ups short."""
    from dramatiq.middleware import ShutdownNotifications, TimeLimit

    ident = threading.get_ident()
    for m in broker.middleware:
        try:
            if isinstance(m, TimeLimit):
                m.manager.remove_timeout(ident)
            elif isinstance(m, ShutdownNotifications):
                m.manager.remove_notification()
        except Exception:  # noqa: BLE001 - a manager of another shape: the ack check still guards
            pass


def _timeouts_as_connection_loss() -> None:
    """Acks, nacks and requeues that time out, or that Redis refuses for a reason a working
    Redis ends (full, read-only, no quorum of replicas: :func:`_passing`, the same rule as
    the guard's holds), are retried or swallowed by Dramatiq like those that lose the
    connection; refused with NOREPLICAS, an ack was dropped and its message stranded.
    redis-py's TimeoutError is not a ConnectionError, so a hung Redis made Dramatiq
    drop the ack ("You've found a bug") and the message stayed in the ack set of a
    live worker; a requeue failing that way in a consumer's ``close()`` killed the
    consumer thread. Upstream: Bogdanp/dramatiq#894, fix proposed in #895 (timeouts);
    drop this once a released Dramatiq has it. Fetches are left as they are: on an
    unexpected error the consumer requeues its delayed messages, on a connection
    error it drops them (the sweep hands those back). An ack or nack that fails with any
    other error, which Dramatiq gives up on, is told to the guard (:func:`_ack_given_up`)."""
    try:
        import redis
        from dramatiq.brokers import redis as redis_broker
        from dramatiq.errors import BrokerConnectionError
    except ImportError:
        return
    consumer = redis_broker._RedisConsumer
    if getattr(consumer, "_dramactl_timeouts", False):
        return

    def wrap(original, acks: bool):
        def call(self, message):
            try:
                return original(self, message)
            except Exception as exc:
                if isinstance(exc, redis.RedisError) and _passing(exc):
                    raise redis_broker.ConnectionClosed(exc) from None
                if acks and not isinstance(exc, BrokerConnectionError):
                    _ack_given_up(self, message)  # Dramatiq gives up on it: no after_ack
                raise

        call.__doc__ = original.__doc__
        return call

    consumer._dramactl_unpatched = {"ack": consumer.ack, "nack": consumer.nack, "requeue": consumer.requeue}
    consumer.ack = wrap(consumer.ack, True)
    consumer.nack = wrap(consumer.nack, True)
    consumer.requeue = wrap(consumer.requeue, False)
    consumer._dramactl_timeouts = True


def _ack_given_up(consumer, message) -> None:
    """Dramatiq gives up on this ack or nack (its ``post_process_message`` retries only a
    connection error; it logs "Unhandled error" and runs no ``after_ack``): tell the guards of
    the consumer's broker (found by name: the consumer class is patched once per process,
    whichever copy of this module did it)."""
    for m in getattr(getattr(consumer, "broker", None), "middleware", ()):
        given_up = getattr(m, "ack_given_up", None)
        if given_up is not None:
            try:
                given_up(message)
            except Exception:  # noqa: BLE001 - Dramatiq's own error must reach it unchanged
                log.warning("dramactl: could not release message %s after its failed ack", getattr(message, "message_id", "?"), exc_info=True)


class Maintenance(Middleware):
    """Dramatiq's own maintenance, run on purpose instead of by chance, and the
    stranded-message sweep."""

    def __init__(self, guard: FollowUpGuard | None = None, interval: float = MAINTENANCE_SECONDS) -> None:
        self.interval = interval
        self.guard = guard
        self.stopping = threading.Event()
        self.suspects: dict[str, set[str]] = {}  # queue -> ids absent from the process in the last round
        self.stuck_grace = STUCK_GRACE_SECONDS
        self.stuck: dict[int, str] = {}  # thread ident -> message id it is stuck on (reported once)
        self.handed_back = 0  # ids requeued by the sweep, ever (tests and the log)

    def after_worker_boot(self, broker, worker) -> None:
        if not hasattr(broker, "scripts") or not hasattr(broker, "heartbeat_timeout"):
            return  # not the Redis broker: nothing to maintain
        threading.Thread(target=self._loop, args=(broker, worker), name="dramactl-maintenance", daemon=True).start()
        # Its own thread: the maintenance round waits on a hung Redis (redis-py's socket timeout times
        # its retries, or for ever without one), and the stuck check, which needs no Redis, matters most then.
        threading.Thread(target=self._stuck_loop, args=(broker, worker), name="dramactl-stuck", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()

    def run_once(self, broker, queues, maintain: bool = True) -> None:
        """Dramatiq's dispatch script with its maintenance flag on, per queue: the
        acks of dead workers go back to their queues; a read-only command (qsize).
        With ``maintain`` off it only refreshes this worker's heartbeat."""
        from dramatiq.common import current_millis

        broker.client.set(HEARTBEAT_KEY.format(namespace=broker.namespace), int(broker.heartbeat_timeout))
        dispatch = broker.scripts["dispatch"]
        for queue in queues:
            args = ["qsize", current_millis(), queue, broker.broker_id, broker.heartbeat_timeout, broker.dead_message_ttl, int(maintain), broker._max_unpack_size()]
            dispatch(args=args, keys=[broker.namespace])

    # -- the stranded-message sweep ----------------------------------------------------

    def held_ids(self, worker) -> dict[str, set[str]]:
        """Per queue, the Redis ids of the messages this process really holds: fetched
        and not yet decoded, prefetched in the work queue (while a worker thread lives to
        run them), delayed in memory, and in progress (until acked, on a live thread)."""
        from dramatiq.message import Message

        held: dict[str, set[str]] = {}

        def add(queue: str, message) -> None:
            if not hasattr(message, "options"):  # a queue item: Dramatiq 2's _WorkQueueItem, or 1.x's (priority, message)
                message = getattr(message, "message", None) or message[-1]
            rid = message.options.get("redis_message_id")
            if rid:
                held.setdefault(queue, set()).add(rid)

        work_queue = getattr(worker, "work_queue", None)
        threads = list(getattr(worker, "workers", None) or ())
        if threads and not any(t.is_alive() for t in threads):
            work_queue = None  # every worker thread has died (an interrupt in its ack): nothing here will run them
        if work_queue is not None:
            with work_queue.mutex:
                items = list(work_queue.queue)
            for item in items:
                message = getattr(item, "message", None) or item[-1]
                add(message.queue_name, message)
        for name, thread in list(getattr(worker, "consumers", {}).items()):
            delayed = thread.delay_queue
            with delayed.mutex:
                items = list(delayed.queue)
            for item in items:
                add(name, item)
            for data in list(getattr(thread.consumer, "message_cache", None) or ()):
                try:
                    add(name, Message.decode(data))
                except Exception:  # noqa: BLE001 - undecodable: Dramatiq will say so when it gets there
                    pass
        for message in self.guard.in_progress() if self.guard is not None else ():
            add(message.queue_name, message)
        return held

    def sweep(self, broker, worker, queues) -> int:
        """Compare this worker's ack sets with what the process holds; hand back, with
        Dramatiq's own requeue script, the ids missing from the process two rounds in a
        row (a fetch Redis ran after the client gave up on it, an ack that never
        happened). The ack set is read before the process is looked at, so a message
        acked in between is absent once, then gone from Redis: never handed back. An
        ack racing the requeue can cause a duplicate, never a loss. Returns the ids
        handed back."""
        pipe = broker.client.pipeline(transaction=False)
        for queue in queues:
            pipe.smembers(f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}")
        members = pipe.execute()
        held = self.held_ids(worker)
        handed = 0
        for queue, ids in zip(queues, members):
            absent = {i.decode() if isinstance(i, bytes) else i for i in ids} - held.get(queue, set())
            stranded = sorted(absent & self.suspects.get(queue, set()))
            self.suspects[queue] = absent - set(stranded)
            if not stranded:
                continue
            stranded = self._dead_letter_undecodable(broker, queue, stranded)
            for i in range(0, len(stranded), REQUEUE_CHUNK):
                broker.do_requeue(queue, *stranded[i : i + REQUEUE_CHUNK])
            handed += len(stranded)
            log.warning(
                "dramactl: handed %d message(s) back to queue %s: this worker's ack set held them but the process did not "
                "(a fetch Redis ran after the client had timed out, or a lost ack): %s",
                len(stranded), queue, " ".join(stranded[:5]) + (" ..." if len(stranded) > 5 else ""),
            )
        self.handed_back += handed
        return handed

    @staticmethod
    def _dead_letter_undecodable(broker, queue: str, ids: list[str]) -> list[str]:
        """The ids worth handing back. A body Dramatiq cannot decode (another encoder, a
        newer Dramatiq's fields) makes the consumer fail on every fetch of it: such a
        message is dead-lettered (Dramatiq's own nack script) and named instead."""
        from dramatiq.message import Message

        bodies = broker.client.hmget(f"{broker.namespace}:{queue}.msgs", ids)
        keep = []
        for rid, body in zip(ids, bodies):
            if body is None:
                keep.append(rid)  # already gone: the requeue script skips it
                continue
            try:
                Message.decode(body)
            except Exception as exc:  # noqa: BLE001 - any decode error
                broker.do_nack(queue, rid)
                log.error("dramactl: message %s in queue %s cannot be decoded (%s); dead-lettered it instead of handing it back", rid, queue, exc)
                continue
            keep.append(rid)
        return keep

    # -- threads stuck past their time limit ---------------------------------------------

    def check_stuck(self, broker, worker=None) -> list[str]:
        """Worker threads still inside their actor ``stuck_grace`` seconds after the actor's
        time limit: Dramatiq's TimeLimit raised its interrupt, which a thread blocked outside
        Python (a deadlocked lock, a write to a full pipe, a socket with no timeout) never
        sees. Such a thread keeps its message, and while the process heartbeats, Dramatiq
        never hands back the messages prefetched for it. Each is named once in the journal
        and in the unit's status line; its end is logged too. Needs no Redis. Returns the
        ids of the messages found stuck in this call."""
        limit_of = _time_limits(broker)
        if limit_of is None:
            return []  # no TimeLimit middleware: nothing says how long is too long
        now = time.monotonic()
        current: dict[int, str] = {}
        found: list[str] = []
        for ident, message, began in self.guard.in_actor() if self.guard is not None else ():
            limit = limit_of(message)
            if limit is None or now - began < limit + self.stuck_grace:
                continue
            current[ident] = message.message_id
            if self.stuck.get(ident) != message.message_id:
                found.append(message.message_id)
                log.error(
                    "dramactl: worker thread %d has run message %s (%s) for %.0fs, past its time limit of %.0fs: Dramatiq's "
                    "interrupt cannot reach it (blocked outside Python: a deadlock, a full pipe, a call with no timeout). "
                    "It holds that message, and the %d message(s) prefetched by this process wait; restart this instance "
                    "(systemctl restart dramatiq-worker@%s) and they go back to their queues",
                    ident, message.message_id, message.actor_name, now - began, limit, _prefetched(worker), os.environ.get("DRAMACTL_INSTANCE", "N"),
                )
        for ident, mid in self.stuck.items():
            if current.get(ident) != mid:
                log.warning("dramactl: worker thread %d is no longer stuck on message %s", ident, mid)
        changed = current != self.stuck
        self.stuck = current
        STUCK["threads"] = frozenset(current)
        if changed:
            STATUS["stuck"] = f"stuck: {len(current)} worker thread(s) past their time limit, not interruptible; restart this instance" if current else ""
            if current:
                _notify_quietly(f"STATUS={STATUS['stuck']}")
            elif HOLDS.count() == 0 and STATUS["consuming"]:
                _notify_quietly(f"STATUS={STATUS['consuming']}")
        return found

    def _stuck_loop(self, broker, worker) -> None:
        while True:
            try:
                self.check_stuck(broker, worker)
            except Exception:  # noqa: BLE001 - a report must never stop the checks
                log.warning("dramactl: could not check for stuck worker threads", exc_info=True)
            if self.stopping.wait(self.interval):
                return

    def _loop(self, broker, worker) -> None:
        queues = sorted(getattr(worker, "consumers", {}) or ())
        outage = False
        quiet_until = 0.0
        while True:
            try:
                # Right after an outage every worker's heartbeat looks stale until it
                # dispatches again: wait two rounds before judging anyone dead, or the
                # messages live workers hold would be handed out twice.
                self.run_once(broker, queues, maintain=time.monotonic() >= quiet_until)
                self.sweep(broker, worker, sorted(getattr(worker, "consumers", {}) or ()))
            except Exception as exc:  # noqa: BLE001 - Redis down or hung: try again next round
                if not outage:
                    log.warning("dramactl: maintenance could not reach Redis (%s); retrying every %.0fs", exc, self.interval)
                outage = True
                quiet_until = time.monotonic() + 2 * self.interval + 1
                self.suspects.clear()  # a round that could not read Redis breaks the "in a row"
            else:
                if outage:
                    log.warning("dramactl: maintenance reaches Redis again")
                outage = False
            if self.stopping.wait(self.interval):
                return


class WorkReporter(Middleware):
    """Completed messages, busy seconds and their squares per queue, batched to Redis once
    a second, and this process's report (what its threads run), in the same round trip.

    The per-message cost is a clock read and a dict update under a lock; Redis sees
    one pipeline per flush per worker process. Counts that could not be flushed
    (Redis down) are kept and sent with the next flush. Every hook swallows its own
    errors: reporting must never fail or slow down a message.
    """

    def __init__(self, interval: float = WORK_FLUSH_SECONDS) -> None:
        self.interval = interval
        self.local = threading.local()
        self.lock = threading.Lock()
        self.pending: dict[str, list] = {}  # queue -> [done, busy seconds, busy seconds squared]
        self.running: dict[int, float] = {}  # worker thread id -> epoch seconds its message began
        self.threads = 0
        self.instance = os.environ.get("DRAMACTL_INSTANCE", "")
        self.fleet = os.environ.get("FLEET_NAME", "")  # from dramactl.env (the unit's EnvironmentFile): the fleet counts its own
        self.report_key: str | None = None
        self.report_field = ""
        self.pause_key: str | None = None
        self.paused = threading.Event()  # the scaler paused this instance's intake (a scale-down waits for it)
        self.leaving = threading.Event()  # SIGTERM or SIGHUP arrived: the process drains (:meth:`_pause_on_signal`)
        self.pausable = False  # our fetch wrapper is installed (not when the app set its own do_fetch)
        self.gate: FreeThreads | None = None  # long tasks: fetch only for free threads (with the wrapper)
        self.done_total = 0  # this process's completed messages and their busy seconds, since boot
        self.busy_total = 0.0
        self.worker = None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.refused: set[tuple[str, str]] = set()  # (key, field) Redis refused, named once in the journal

    def before_process_message(self, broker, message) -> None:
        try:
            self.local.began = time.monotonic()
            with self.lock:
                self.running[threading.get_ident()] = time.time()
        except Exception:  # noqa: BLE001 - never break the app's chain
            pass

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self._count(message)

    def after_skip_message(self, broker, message) -> None:
        self._count(message)

    def _count(self, message) -> None:
        try:
            began = getattr(self.local, "began", None)
            self.local.began = None
            busy = time.monotonic() - began if began is not None else 0.0
            queue = message.queue_name
            if queue.endswith((".DQ", ".XQ")):
                queue = queue[:-3]
            with self.lock:
                self.running.pop(threading.get_ident(), None)
                self.done_total += 1
                self.busy_total += busy
                entry = self.pending.get(queue)
                if entry is None:
                    self.pending[queue] = [1, busy, busy * busy]
                else:
                    entry[0] += 1
                    entry[1] += busy
                    entry[2] += busy * busy
        except Exception:  # noqa: BLE001 - never break the app's chain
            with self.lock:
                self.running.pop(threading.get_ident(), None)

    def after_ack(self, broker, message) -> None:
        if self.gate is not None:
            self.gate.thread_freed()

    after_nack = after_ack

    def mean_task(self) -> float | None:
        """This process's mean task in seconds since boot (None before one completed)."""
        with self.lock:
            return self.busy_total / self.done_total if self.done_total else None

    def busy(self) -> int:
        with self.lock:
            return len(self.running)

    def after_worker_boot(self, broker, worker) -> None:
        try:
            if not hasattr(broker, "client") or not hasattr(broker, "namespace"):
                return  # not the Redis broker: nowhere to report
            self.threads = int(getattr(worker, "worker_threads", 0) or 0)
            self.worker = worker
            if self.instance.isdigit():
                self.report_key = INSTANCES_KEY.format(namespace=broker.namespace, host=host_identity())
                self.report_field = f"{self.instance}.{os.getpid()}"
            self.thread = threading.Thread(target=self._loop, args=(broker,), name="dramactl-work", daemon=True)
            self.thread.start()
        except Exception:  # noqa: BLE001
            log.warning("dramactl: work reporting could not start", exc_info=True)

    def before_worker_boot(self, broker, worker) -> None:
        """Before the consumers start: make their fetch pausable and, for long tasks, only
        for free threads (:class:`FreeThreads`); read this instance's pause once, so a
        process that boots while its instance is paused (a restart during a scale-down's
        wait) fetches nothing rather than a whole prefetch first."""
        try:
            if not hasattr(broker, "client") or not hasattr(broker, "namespace"):
                return
            if not self.pausable:
                gate = FreeThreads(worker, self)
                self.pausable = _pausable_fetch(broker, self.paused, self.leaving, gate=gate)
                self.gate = gate if self.pausable else None
            if not self.pausable:
                return
            self._pause_on_signal()
            if not self.instance.isdigit():
                return
            self.pause_key = PAUSE_KEY.format(namespace=broker.namespace, host=host_identity())
            read: list = []

            def hget() -> None:
                try:
                    read.append(broker.client.hget(self.pause_key, self.instance))
                except Exception:  # noqa: BLE001 - Redis down at boot: the consumers cannot fetch either; the flush reads it
                    pass

            # On a thread of its own: the app's client may have no socket timeout, and a hung Redis
            # must not hold up the boot (READY=1); the flush reads the mark again anyway.
            reader = threading.Thread(target=hget, name="dramactl-pause-read", daemon=True)
            reader.start()
            reader.join(BOOT_READ_SECONDS)
            if read:
                self._set_paused(self._pause_mark(read[0]))
        except Exception:  # noqa: BLE001
            log.warning("dramactl: could not make the intake pausable", exc_info=True)

    def _pause_on_signal(self) -> None:
        """SIGTERM (a stop) or SIGHUP (a reload) pauses the intake at once. Dramatiq's worker
        process notices the signal only at its next one-second poll, then stops its worker
        threads; until then its consumers fetch and its threads start what they fetch,
        so an instance the scaler stopped as idle could take a task in that second and
        have it cut off after GRACEFUL_SHUTDOWN_TIMEOUT."""
        for name in ("SIGTERM", "SIGHUP"):
            _chain_signal(name, self.leaving.set)

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        self.leaving.set()

    def after_worker_shutdown(self, broker, worker) -> None:
        try:
            if self.thread is not None:
                self.thread.join(timeout=2 * self.interval + 1)
                if self.thread.is_alive():
                    return  # its flush waits on a hung Redis: so would ours; the stop must not wait
                self.flush(broker)  # what finished during the drain, after the loop's last flush
            if self.report_key:
                broker.client.hdel(self.report_key, self.report_field)  # a clean stop leaves nothing behind
        except Exception:  # noqa: BLE001
            pass

    def report(self) -> str:
        """This process's report, as JSON: threads, busy threads, oldest start (ms), held, at (ms),
        whether its intake is paused, and the messages it fetched that wait for a free thread."""
        with self.lock:
            starts = list(self.running.values())
        try:
            queued = int(self.worker.work_queue.qsize()) if self.worker is not None else 0
        except Exception:  # noqa: BLE001 - a Worker without Dramatiq's work queue: nothing known
            queued = 0
        now = time.time()
        oldest = int(min(starts) * 1000) if starts else None
        return json.dumps({"threads": self.threads, "busy": len(starts), "oldest": oldest, "held": HOLDS.count(), "at": int(now * 1000), "paused": self.paused.is_set(), "queued": queued, "fleet": self.fleet}, separators=(",", ":"))

    def _forget_earlier(self, broker) -> None:
        """At boot: drop the reports an earlier process of this instance left (a crash)."""
        if not self.report_key:
            return
        prefix = f"{self.instance}."
        stale = [f for f in (x.decode() if isinstance(x, bytes) else x for x in broker.client.hkeys(self.report_key)) if f.startswith(prefix) and f != self.report_field]
        if stale:
            broker.client.hdel(self.report_key, *stale)

    def flush(self, broker) -> bool:
        """Send what accumulated since the last flush and this process's report (one round
        trip, also when nothing completed: the report is a heartbeat). The counts are kept
        for the next flush only when the round trip itself failed (Redis down, a timeout).
        A command Redis refused (a damaged field, a key of the wrong type) is named once in
        the journal and its part dropped: the pipeline's other commands were applied, and
        sending them again would count the same work twice."""
        with self.lock:
            batch, self.pending = self.pending, {}
        if not batch and not self.report_key:
            return True
        try:
            pipe = broker.client.pipeline(transaction=False)
            at = int(time.time() * 1000)
            sent: list[tuple[str, str]] = []  # (key, field) of each command, in order
            for queue, (done, busy, squares) in batch.items():
                key = WORK_KEY.format(namespace=broker.namespace, queue=queue)
                pipe.hincrby(key, "done", done)
                pipe.hincrbyfloat(key, "busy", busy)
                pipe.hincrbyfloat(key, "busy_sq", squares)
                pipe.hset(key, "at", at)
                sent += [(key, "done"), (key, "busy"), (key, "busy_sq"), (key, "at")]
            if self.report_key and not self.stopping.is_set():
                pipe.hset(self.report_key, self.report_field, self.report())
                # By Redis' clock, the HASH lives while a process of this host reports: the other hosts
                # of a fleet count these processes when this host's ticks stop (dramactl.claims).
                pipe.pexpire(self.report_key, REPORTS_TTL_MS)
                sent += [(self.report_key, self.report_field), (self.report_key, "(expiry)")]
                if self.pause_key and self.pausable:
                    pipe.hget(self.pause_key, self.instance)
                    sent.append((self.pause_key, self.instance))
            results = pipe.execute(raise_on_error=False)
        except Exception:  # noqa: BLE001 - Redis down: keep the counts for the next flush
            with self.lock:
                for queue, (done, busy, squares) in batch.items():
                    entry = self.pending.setdefault(queue, [0, 0.0, 0.0])
                    entry[0] += done
                    entry[1] += busy
                    entry[2] += squares
            return False
        if self.pause_key and sent and sent[-1][0] == self.pause_key:
            self._set_paused(self._pause_mark(results[-1]))
        for (key, field), result in zip(sent, results):
            if key == self.pause_key and isinstance(result, Exception) and (key, field) not in self.refused:
                self.refused.add((key, field))
                log.warning(
                    "dramactl: Redis refused to read this instance's intake pause, field %s of key %s (%s); the instance "
                    "keeps taking messages. Fix: redis-cli DEL %s (dramactl's tick writes it again when it needs it)",
                    field, key, result, key,
                )
            elif isinstance(result, Exception) and (key, field) not in self.refused:
                self.refused.add((key, field))
                log.warning(
                    "dramactl: Redis refused the work report's update of field %s of key %s (%s); that part is dropped, "
                    "the rest is counted. Fix: redis-cli HDEL %s %s (or DEL %s if it is not a hash)",
                    field, key, result, key, field, key,
                )
        return True

    def _pause_mark(self, value) -> bool:
        """Whether the mark read from Redis pauses this instance: the epoch ms dramactl's tick
        writes. Anything else is ignored (the instance keeps taking messages) and named once."""
        if value is None or isinstance(value, Exception):
            return False
        try:
            int(value)
        except (TypeError, ValueError):
            if (self.pause_key, "value") not in self.refused:
                self.refused.add((self.pause_key, "value"))
                log.warning(
                    "dramactl: the intake pause for this instance, field %s of key %s, is %r, not the epoch ms dramactl's "
                    "tick writes; ignored, the instance keeps taking messages. Fix: redis-cli HDEL %s %s",
                    self.instance, self.pause_key, value, self.pause_key, self.instance,
                )
            return False
        return True

    def _set_paused(self, paused: bool) -> None:
        if paused == self.paused.is_set():
            return
        if paused:
            self.paused.set()
            log.info("dramactl: intake paused: a scale-down waits for this instance's running tasks; it takes no new messages until they end (then it is stopped) or the scale-down is called off")
        else:
            self.paused.clear()
            log.info("dramactl: intake resumed: this instance takes messages again")

    def _loop(self, broker) -> None:
        failed = False
        try:
            self._forget_earlier(broker)
        except Exception:  # noqa: BLE001 - Redis down at boot: the stale fields are ignored by dramactl anyway
            pass
        while True:
            stopping = self.stopping.wait(self.interval)
            try:
                ok = self.flush(broker)
                if not ok and not failed:
                    log.warning("dramactl: could not report work to Redis; keeping the counts and retrying every %.0fs", self.interval)
                failed = not ok
            except Exception:  # noqa: BLE001 - the reporter thread must not die
                pass
            if stopping:
                return


def _install(broker) -> None:
    _timeouts_as_connection_loss()
    guard = FollowUpGuard()
    # First in the list: its after-hooks run last and tell the guard none was cut short.
    if broker.middleware:
        broker.add_middleware(_AfterHooksDone(guard), before=type(broker.middleware[0]))
    else:
        broker.add_middleware(_AfterHooksDone(guard))
    broker.add_middleware(ReadyNotifier())
    broker.add_middleware(Maintenance(guard))
    broker.add_middleware(WorkReporter())
    # Last: its before-hooks (before_ack) run after every other one, its after-hooks first.
    broker.add_middleware(guard)


_install(dramatiq.get_broker())
