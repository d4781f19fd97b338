"""What dramactl adds to every worker instance: readiness, a watchdog, and no lost messages.

Dramatiq imports this module in each worker process after the app's broker
(``dramatiq app dramactl_ready``). It lives alone in its directory and needs only
Dramatiq and the stdlib, so it can be put on the path of an app's own virtualenv.

Four middlewares:

* :class:`ReadyNotifier`: ``READY=1`` for ``Type=notify`` once the consumers run,
  ``WATCHDOG=1`` while every consumer and worker thread lives, ``STOPPING=1``.
* :class:`RetryGuard`: Dramatiq's Retries middleware enqueues a failed message's
  retry and the worker then acks the original. When that enqueue fails (Redis
  down) Dramatiq logs it and acks anyway, once Redis is back: the message is gone.
  The guard sees the enqueue that never finished and retries it, holding the
  worker thread (and with it the ack) until Redis takes the retry.
* :class:`Maintenance`: Dramatiq redelivers the messages of a dead worker (one
  whose heartbeat expired) only when a dispatch happens to draw maintenance
  (0.1 % of calls). Every few seconds this runs Dramatiq's own dispatch script
  with maintenance on, for each queue the worker consumes; once at boot, too. It
  also publishes the broker's heartbeat timeout, so ``dramactl`` can tell orphaned
  messages from in-flight ones. After a Redis outage it checks the delay queues:
  Dramatiq drops a consumer's in-memory delayed messages on a connection error
  while they stay in this worker's ack set; when that happened it asks Dramatiq to
  reload the worker (SIGHUP to its main process), so the held messages come back
  through Dramatiq's requeue and maintenance.
* :class:`WorkReporter`: per queue, messages completed and seconds spent on them,
  added up in memory and flushed by a background thread at most once a second in
  one pipelined round trip (HINCRBY done, HINCRBYFLOAT busy, HSET at) into
  ``<ns>:__dramactl__.work.<queue>``, the cumulative counters dramactl's probe
  reads to size the fleet by work. In the same round trip it publishes this worker
  process's report (threads, busy threads, start of the oldest running task, held
  messages) into ``<ns>:__dramactl__.instances.<host>``, field ``<instance>.<pid>``:
  what dramactl's scale-down reads to stop the least busy instance first. It never
  raises into the app's middleware chain.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

import dramatiq
from dramatiq.middleware import Middleware

log = logging.getLogger("dramactl.hook")

MAINTENANCE_SECONDS = 5.0
HEARTBEAT_KEY = "{namespace}:__dramactl__.heartbeat_timeout"  # read by dramactl's probe
WORK_KEY = "{namespace}:__dramactl__.work.{queue}"  # done / busy / at, read by dramactl's probe
WORK_FLUSH_SECONDS = 1.0
INSTANCES_KEY = "{namespace}:__dramactl__.instances.{host}"  # field "<instance>.<pid>", read by dramactl's probe


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


def host_identity() -> str:
    """This host's identity, as dramactl computes it: /etc/machine-id, else the hostname."""
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            ident = f.read().strip()
        if ident:
            return ident
    except (OSError, ValueError):
        pass
    return socket.gethostname()


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


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= (systemd's advice), or None when the unit has no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None


class ReadyNotifier(Middleware):
    """READY=1 once the worker threads and consumers run; WATCHDOG=1 while they all
    live (a dead consumer thread means a worker that no longer takes messages, and
    systemd restarts it); STOPPING=1 on shutdown."""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def after_worker_boot(self, broker, worker) -> None:
        queues = ",".join(sorted(getattr(worker, "consumers", None) or broker.get_declared_queues()))
        notify(f"READY=1\nSTATUS=consuming {queues} with {worker.worker_threads} threads")
        interval = watchdog_interval()
        if interval:
            threading.Thread(target=self._watchdog, args=(worker, interval), name="dramactl-watchdog", daemon=True).start()

    def _watchdog(self, worker, interval: float) -> None:
        while not self.stopping.wait(interval):
            threads = list(getattr(worker, "consumers", {}).values()) + list(getattr(worker, "workers", []))
            if threads and all(t.is_alive() for t in threads):
                notify("WATCHDOG=1")

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        notify("STOPPING=1\nSTATUS=draining: finishing or requeueing held messages")


class RetryGuard(Middleware):
    """Keeps a failed message whose retry could not be enqueued (at-least-once).

    Must sit before Retries in the middleware list: ``after_*`` hooks run in
    reverse order, so this one then runs after Retries has tried its enqueue.
    """

    def __init__(self, max_pause: float = 10.0) -> None:
        self.local = threading.local()
        self.max_pause = max_pause
        self.held = 0  # retries that needed holding (for tests and the log)

    def before_process_message(self, broker, message) -> None:
        self.local.message_id = message.message_id
        self.local.pending = None

    def before_enqueue(self, broker, message, delay) -> None:
        if getattr(self.local, "message_id", None) == message.message_id:
            self.local.pending = delay  # a retry of the message this thread processes

    def after_enqueue(self, broker, message, delay) -> None:
        if getattr(self.local, "message_id", None) == message.message_id:
            self.local.pending = None

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.local.message_id = None
        delay, self.local.pending = getattr(self.local, "pending", None), None
        if exception is None or delay is None or message.failed:
            return
        # Retries' enqueue raised: the retry exists nowhere. Hold the message (it is
        # not acked while this thread waits) until Redis takes the retry.
        self.held += 1
        pause = 0.5
        while True:
            log.warning("dramactl: retry of message %s could not be enqueued; holding it and trying again in %.1fs", message.message_id, pause)
            time.sleep(pause)
            try:
                broker.enqueue(message, delay=delay)
            except Exception:  # noqa: BLE001 - any broker error: keep holding
                pause = min(self.max_pause, pause * 2)
                continue
            log.warning("dramactl: retry of message %s enqueued after holding it", message.message_id)
            return


class Maintenance(Middleware):
    """Dramatiq's own maintenance, run on purpose instead of by chance."""

    def __init__(self, interval: float = MAINTENANCE_SECONDS) -> None:
        self.interval = interval
        self.stopping = threading.Event()

    def after_worker_boot(self, broker, worker) -> None:
        if not hasattr(broker, "scripts") or not hasattr(broker, "heartbeat_timeout"):
            return  # not the Redis broker: nothing to maintain
        threading.Thread(target=self._loop, args=(broker, worker), name="dramactl-maintenance", daemon=True).start()

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

    def _loop(self, broker, worker) -> None:
        queues = sorted(getattr(worker, "consumers", {}) or ())
        outage = False
        leaked_before = False
        quiet_until = 0.0
        while True:
            try:
                # Right after an outage every worker's heartbeat looks stale until it
                # dispatches again: wait two rounds before judging anyone dead, or the
                # messages live workers hold would be handed out twice.
                self.run_once(broker, queues, maintain=time.monotonic() >= quiet_until)
            except Exception as exc:  # noqa: BLE001 - Redis down: try again next round
                if not outage:
                    log.warning("dramactl: maintenance could not reach Redis (%s); retrying every %.0fs", exc, self.interval)
                outage = True
                quiet_until = time.monotonic() + 2 * self.interval + 1
            else:
                if outage:
                    leaked = self._leaked_delayed(broker, worker)
                    if leaked and leaked_before:
                        log.warning("dramactl: %d delayed message(s) dropped from memory during the Redis outage; reloading the worker so they come back", leaked)
                        os.kill(os.getppid(), signal.SIGHUP)
                        return
                    outage, leaked_before = bool(leaked), bool(leaked)
            if self.stopping.wait(self.interval):
                return

    @staticmethod
    def _leaked_delayed(broker, worker) -> int:
        """Delayed messages this worker holds in Redis (its ack set) but no longer in memory."""
        leaked = 0
        for name, thread in list(getattr(worker, "consumers", {}).items()):
            if not name.endswith(".DQ"):
                continue
            consumer = getattr(thread, "consumer", None)
            in_memory = thread.delay_queue.qsize() + len(getattr(consumer, "message_cache", ()) or ()) + 1  # +1: one in hand
            held = broker.client.scard(f"{broker.namespace}:__acks__.{broker.broker_id}.{name}")
            leaked += max(0, held - in_memory)
        return leaked


class WorkReporter(Middleware):
    """Completed messages and busy seconds per queue, batched to Redis once a second,
    and this process's report (what its threads run), in the same round trip.

    The per-message cost is a clock read and a dict update under a lock; Redis sees
    one pipeline per flush per worker process. Counts that could not be flushed
    (Redis down) are kept and sent with the next flush. Every hook swallows its own
    errors: reporting must never fail or slow down a message.
    """

    def __init__(self, interval: float = WORK_FLUSH_SECONDS) -> None:
        self.interval = interval
        self.local = threading.local()
        self.lock = threading.Lock()
        self.pending: dict[str, list] = {}  # queue -> [done, busy seconds]
        self.running: dict[int, float] = {}  # worker thread id -> epoch seconds its message began
        self.threads = 0
        self.instance = os.environ.get("DRAMACTL_INSTANCE", "")
        self.report_key: str | None = None
        self.report_field = ""
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

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
                entry = self.pending.get(queue)
                if entry is None:
                    self.pending[queue] = [1, busy]
                else:
                    entry[0] += 1
                    entry[1] += busy
        except Exception:  # noqa: BLE001 - never break the app's chain
            with self.lock:
                self.running.pop(threading.get_ident(), None)

    def after_worker_boot(self, broker, worker) -> None:
        try:
            if not hasattr(broker, "client") or not hasattr(broker, "namespace"):
                return  # not the Redis broker: nowhere to report
            self.threads = int(getattr(worker, "worker_threads", 0) or 0)
            if self.instance.isdigit():
                self.report_key = INSTANCES_KEY.format(namespace=broker.namespace, host=host_identity())
                self.report_field = f"{self.instance}.{os.getpid()}"
            self.thread = threading.Thread(target=self._loop, args=(broker,), name="dramactl-work", daemon=True)
            self.thread.start()
        except Exception:  # noqa: BLE001
            log.warning("dramactl: work reporting could not start", exc_info=True)

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()

    def after_worker_shutdown(self, broker, worker) -> None:
        try:
            if self.thread is not None:
                self.thread.join(timeout=2 * self.interval + 1)
            if self.report_key:
                broker.client.hdel(self.report_key, self.report_field)  # a clean stop leaves nothing behind
        except Exception:  # noqa: BLE001
            pass

    def report(self) -> str:
        """This process's report, as JSON: threads, busy threads, oldest start (ms), held, at (ms)."""
        with self.lock:
            starts = list(self.running.values())
        now = time.time()
        oldest = int(min(starts) * 1000) if starts else None
        return json.dumps({"threads": self.threads, "busy": len(starts), "oldest": oldest, "held": HOLDS.count(), "at": int(now * 1000)}, separators=(",", ":"))

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
        trip, also when nothing completed: the report is a heartbeat); keep the counts on failure."""
        with self.lock:
            batch, self.pending = self.pending, {}
        if not batch and not self.report_key:
            return True
        try:
            pipe = broker.client.pipeline(transaction=False)
            at = int(time.time() * 1000)
            for queue, (done, busy) in batch.items():
                key = WORK_KEY.format(namespace=broker.namespace, queue=queue)
                pipe.hincrby(key, "done", done)
                pipe.hincrbyfloat(key, "busy", round(busy, 6))
                pipe.hset(key, "at", at)
            if self.report_key and not self.stopping.is_set():
                pipe.hset(self.report_key, self.report_field, self.report())
            pipe.execute()
            return True
        except Exception:  # noqa: BLE001 - Redis down: keep the counts for the next flush
            with self.lock:
                for queue, (done, busy) in batch.items():
                    entry = self.pending.setdefault(queue, [0, 0.0])
                    entry[0] += done
                    entry[1] += busy
            return False

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
    from dramatiq.middleware import Retries

    broker.add_middleware(ReadyNotifier())
    guard = RetryGuard()
    if any(isinstance(m, Retries) for m in broker.middleware):
        broker.add_middleware(guard, before=Retries)
    else:
        broker.add_middleware(guard)
    broker.add_middleware(Maintenance())
    broker.add_middleware(WorkReporter())


_install(dramatiq.get_broker())
