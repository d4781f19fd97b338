"""Issue 19 in a booted systemd: a scale-down stops the idle instance, never a long task."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.system.conftest import PYTHON, System, wait_until

pytestmark = pytest.mark.system

LONG = 30.0  # seconds a long task runs: longer than GRACEFUL_SHUTDOWN_TIMEOUT, so a drain would cut it off


def reported(system: System) -> dict[int, dict]:
    """Instance number -> its work report, from `dramactl status --json`."""
    return {u["number"]: u["work"] for u in system.status()["instances"] if u.get("work")}


def test_scale_down_stops_the_idle_instance_and_the_long_tasks_finish_once(system: System) -> None:
    # One thread and one prefetched message per instance: each runs exactly the message it took.
    system.configure(WORKER_THREADS="1", GRACEFUL_SHUTDOWN_TIMEOUT="10", dramatiq_queue_prefetch="1")
    system.dramactl("scale-to", "1")
    system.send(1, LONG, prefix="a")
    wait_until(lambda: system.redis_counter("sys:started") == 1, 20, "@1 running the first long task")
    # @3 up next (started directly, as an operator might), so it takes the second long task ...
    system.sh("systemctl start dramatiq-worker@3.service")
    system.send(1, LONG, prefix="b")
    wait_until(lambda: system.redis_counter("sys:started") == 2, 20, "@3 running the second long task")
    # ... and @2, started last, is idle: the highest number is busy, the idle one is in the middle.
    system.dramactl("scale-to", "3")
    assert system.active() == [f"dramatiq-worker@{n}.service" for n in (1, 2, 3)]
    work = wait_until(lambda: (w := reported(system)) and len(w) == 3 and w, 15, "all three instances reporting")
    assert (work[1]["busy"], work[2]["busy"], work[3]["busy"]) == (1, 0, 1), work
    assert work[1]["threads"] == 1 and work[1]["oldest_age"] > 0 and work[2]["oldest_age"] is None
    text = system.dramactl("status").stdout
    assert "1/1" in text and "0/1" in text, text

    out = system.dramactl("scale-down").stdout
    assert "stop @2 (idle)" in out and "stopped @2:done" in out, out
    assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@3.service"]
    entry = json.loads(system.sh("journalctl -o json -n 1 SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=scale-down").stdout)
    assert json.loads(entry["DRAMACTL_VICTIMS"]) == [{"instance": 2, "why": "idle", "chosen": "idle"}], entry

    wait_until(lambda: system.redis()["count"] == 2, LONG + 20, "both long tasks finished")
    r = system.redis()
    assert system.redis_counter("sys:started") == 2, "neither long task was cut off and started again"
    assert (r["processed"], r["duplicates"], r["ready"], r["acks"]) == (2, 0, 0, 0), r


# README's tour: the migration guide's OCR call on the class, with the guide's payload. The guide's file
# exists here (an operator's document), so the task does its work rather than fail.
DOCUMENT = "/path/to/document.pdf"
DOCUMENT_TEXT = "Invoice 42\nTotal due: 99 EUR\nPay by Friday\n"
OCR_SECONDS = 30  # EXAMPLE_TASK_SECONDS, the operator's setting for how long an example task takes


def send_ocr(system: System, task_id: str) -> str:
    """TaskDispatcher.send_ocr_task as README's tour writes it; the message id it returns."""
    code = (
        "import json\n"
        "from dramactl.example.tasks import TaskDispatcher\n"
        f"print(json.dumps(TaskDispatcher.send_ocr_task({{'task_id': {task_id!r}, 'file_path': {DOCUMENT!r}}})))"
    )
    return system.c.python(PYTHON, code)  # type: ignore[return-value]


def ocr_record(system: System) -> dict:
    """The example app's own record of its OCR actor (dramactl.example.tasks.counts / processed_ids)."""
    code = (
        "import json, redis\n"
        "from dramactl.example import tasks\n"
        "r = redis.Redis()\n"
        "print(json.dumps({**tasks.counts(r, 'process_ocr_task'), 'ids': sorted(tasks.processed_ids(r, 'process_ocr_task'))}))"
    )
    return system.c.python(PYTHON, code)  # type: ignore[return-value]


def ocr_results(system: System, ids: list[str]) -> list[dict]:
    """What each OCR task returned, from the example app's results backend."""
    code = (
        "import json, dramatiq\n"
        "from dramatiq.results import Results\n"
        "from dramactl.example import tasks\n"
        "[backend] = [m.backend for m in tasks.get_broker().middleware if isinstance(m, Results)]\n"
        f"msgs = [dramatiq.Message(queue_name='ocr_processing', actor_name='process_ocr_task', args=(), kwargs={{}}, options={{}}, message_id=i) for i in {ids!r}]\n"
        "print(json.dumps([m.get_result(backend=backend) for m in msgs]))"
    )
    return system.c.python(PYTHON, code)  # type: ignore[return-value]


def monitor_events(system: System, instance: int, message_id: str) -> list[str]:
    """The example app's monitor lines (event=start/finish/retry/fail) for one message, in one instance's journal."""
    text = system.c.journal(f"dramatiq-worker@{instance}.service")
    return [word for line in text.splitlines() if f"message_id={message_id}" in line for word in line.split() if word.startswith("event=")]


def test_scale_down_spares_the_example_apps_ocr_tasks_from_the_readme_tour(system: System) -> None:
    """The built-in example app (no DRAMATIQ_COMMAND), the guide's OCR call: a scale-down by one of three
    instances, two of them in an OCR task that outlasts GRACEFUL_SHUTDOWN_TIMEOUT, stops the idle one, and
    each OCR task runs once, to the end, on the instance that took it."""
    system.configure(
        DRAMATIQ_COMMAND=None, DRAMATIQ_QUEUE_NAME=None, WORKER_DIRECTORY=None,
        WORKER_THREADS="1", GRACEFUL_SHUTDOWN_TIMEOUT="10", dramatiq_queue_prefetch="1", EXAMPLE_TASK_SECONDS=str(OCR_SECONDS),
    )
    system.sh(f"mkdir -p {DOCUMENT.rsplit('/', 1)[0]} && printf '{DOCUMENT_TEXT}' > {DOCUMENT} && chmod 644 {DOCUMENT}")
    try:
        assert "ocr_processing" in {q["name"] for q in system.status()["queues"]}
        system.dramactl("scale-to", "1")
        first = send_ocr(system, "ocr-001")
        wait_until(lambda: ocr_record(system)["attempts"] == 1, 20, "@1 running the first OCR task")
        # @3 up next (started directly, as an operator might), so it takes the second OCR task ...
        system.sh("systemctl start dramatiq-worker@3.service")
        second = send_ocr(system, "ocr-002")
        wait_until(lambda: ocr_record(system)["attempts"] == 2, 20, "@3 running the second OCR task")
        # ... and @2, started last, is idle: the highest number is busy, the idle one is in the middle.
        system.dramactl("scale-to", "3")
        assert system.active() == [f"dramatiq-worker@{n}.service" for n in (1, 2, 3)]
        work = wait_until(lambda: (w := reported(system)) and len(w) == 3 and w, 15, "all three instances reporting")
        assert (work[1]["busy"], work[2]["busy"], work[3]["busy"]) == (1, 0, 1), work
        assert monitor_events(system, 1, first) == ["event=start"] and monitor_events(system, 3, second) == ["event=start"]

        out = system.dramactl("scale-down").stdout
        assert "stop @2 (idle)" in out and "stopped @2:done" in out, out
        assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@3.service"]
        entry = json.loads(system.sh("journalctl -o json -n 1 SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=scale-down").stdout)
        assert "stop @2 (idle)" in entry["MESSAGE"], entry
        assert json.loads(entry["DRAMACTL_VICTIMS"]) == [{"instance": 2, "why": "idle", "chosen": "idle"}], entry

        wait_until(lambda: ocr_record(system)["processed"] == 2, OCR_SECONDS + 20, "both OCR tasks finished")
        record = ocr_record(system)
        assert record == {"processed": 2, "unique": 2, "attempts": 2, "failures": 0, "ids": sorted([first, second])}, record
        assert monitor_events(system, 1, first) == ["event=start", "event=finish"]
        assert monitor_events(system, 3, second) == ["event=start", "event=finish"]
        results = ocr_results(system, [first, second])
        assert [(r["task_id"], r["source"], r["words"], r["attempt"]) for r in results] == [("ocr-001", DOCUMENT, 9, 1), ("ocr-002", DOCUMENT, 9, 1)], results
    finally:
        system.sh("rm -rf /path", check=False)  # DOCUMENT's tree, made above


def test_a_tick_waits_for_long_tasks_then_stops_the_instance_once_idle(system: System) -> None:
    """Every candidate busy with a task older than G/2: the tick's scale-down waits and says so;
    once the tasks are done the next tick stops one, and no task ran twice."""
    system.configure(POLICY="step", WORKER_THREADS="1", GRACEFUL_SHUTDOWN_TIMEOUT="10", dramatiq_queue_prefetch="1")
    system.sh("systemctl stop dramactl.timer")  # the ticks of this test are run by hand
    system.dramactl("scale-to", "2")
    system.send(2, LONG, prefix="t")
    wait_until(lambda: system.redis_counter("sys:started") == 2, 20, "both instances running a long task")
    wait_until(lambda: (w := reported(system)) and len(w) == 2 and all(x["busy"] == 1 and x["oldest_age"] > 6 for x in w.values()), 20, "both tasks older than G/2")
    system.dramactl("resume")

    out = system.dramactl("tick").stdout
    assert "workers 2 -> 1" in out and "scale-down waits for long tasks: @" in out and "stopped" not in out, out
    assert len(system.active()) == 2
    entry = json.loads(system.sh("journalctl -o json -n 1 SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=tick").stdout)
    assert json.loads(entry["DRAMACTL_VICTIMS"]) == [] and len(json.loads(entry["DRAMACTL_WAITING"])) == 1, entry
    since = system.status()["last_tick"]["waiting_since"]
    assert since is not None
    metrics = system.dramactl("metrics").stdout
    assert f"dramactl_scale_down_waiting_since_timestamp_seconds {since!r}" in metrics, metrics
    idle_stops = int(re.search(r'dramactl_scale_down_stops_total\{chosen="idle"\} (\d+)', metrics).group(1))

    wait_until(lambda: system.redis()["count"] == 2, LONG + 20, "both long tasks finished")
    wait_until(lambda: all(x["busy"] == 0 for x in reported(system).values()), 10, "both instances reporting idle")
    out = system.dramactl("tick").stdout
    assert "stop @2 (idle)" in out and "stopped @2:done" in out, out
    assert system.active() == ["dramatiq-worker@1.service"]
    assert system.redis_counter("sys:started") == 2, "no long task was cut off and started again"
    assert system.status()["last_tick"]["waiting_since"] is None
    metrics = system.dramactl("metrics").stdout
    assert "dramactl_scale_down_waiting_since" not in metrics, metrics
    assert f'dramactl_scale_down_stops_total{{chosen="idle"}} {idle_stops + 1}' in metrics, metrics


def test_an_instance_the_scale_down_waits_for_takes_no_new_message_then_stops_idle(system: System) -> None:
    """The app's tasks outlast the drain (mean 12 s > G 10 s), so a tick that would stop one of
    two busy instances waits for the one whose task began last and pauses its intake
    (dramactl/intake.py). Its task ends; though idle, it takes none of the messages waiting in
    Redis (unpaused, its consumer would fetch them at once); the next tick stops it as idle, the
    other instance runs them, and nothing ran twice."""
    system.configure(POLICY="step", WORKER_THREADS="1", GRACEFUL_SHUTDOWN_TIMEOUT="10", dramatiq_queue_prefetch="1")
    system.sh("systemctl stop dramactl.timer")  # the ticks of this test are run by hand
    system.dramactl("scale-to", "2")
    wait_until(lambda: len(reported(system)) == 2, 30, "both instances reporting")
    system.send(2, 12, prefix="w")  # one each: the app's mean task becomes 12 s
    wait_until(lambda: system.redis_counter("sys:count") == 2, 40, "the two 12 s tasks done")
    system.send(1, LONG, prefix="a")
    wait_until(lambda: system.redis_counter("sys:started") == 3, 20, "the first long task running")
    system.send(1, 15, prefix="b")  # on the other instance (prefetch 1): it begins last and ends first
    wait_until(lambda: system.redis_counter("sys:started") == 4, 20, "the second long task running")
    ran_on = lambda ident: system.sh(f"redis-cli hget sys:ran_on {ident}").stdout.strip()  # noqa: E731
    keep, waited = int(ran_on("a0")), int(ran_on("b0"))
    assert keep != waited
    wait_until(lambda: (w := reported(system)) and all(w[n]["busy"] == 1 for n in (keep, waited)), 10, "both instances reporting their task")
    system.dramactl("resume")

    out = system.dramactl("tick").stdout
    assert "workers 2 -> 1" in out and f"scale-down waits for long tasks: @{waited} (busy 1/1" in out and "stopped" not in out, out
    assert f"; intake paused: @{waited}" in out, out
    wait_until(lambda: reported(system)[waited].get("paused") is True, 10, f"@{waited} reporting its intake paused")
    assert reported(system)[keep].get("paused") is False
    system.send(2, 1, prefix="s")
    wait_until(lambda: reported(system)[waited]["busy"] == 0, 25, f"@{waited}'s task done")
    for _ in range(6):  # three seconds: an unpaused consumer fetches within its 1 s backoff
        assert int(system.sh("redis-cli llen dramatiq:sys").stdout) == 2, f"the idle paused @{waited} took a message"
        time.sleep(0.5)
    journal = system.sh(f"journalctl -u dramatiq-worker@{waited}.service -g 'intake paused' -o cat").stdout
    assert "it takes no new messages" in journal, journal

    out = system.dramactl("tick").stdout
    assert f"stop @{waited} (idle)" in out and f"stopped @{waited}:done" in out, out
    assert system.active() == [f"dramatiq-worker@{keep}.service"]
    assert system.sh("redis-cli --scan --pattern 'dramatiq:__dramactl__.pause.*'").stdout.strip() == "", "the tick that waits for none removes the marks"
    wait_until(lambda: system.redis()["count"] == 6, LONG + 20, "the long task and the two short ones done")
    assert [ran_on("s0"), ran_on("s1")] == [str(keep)] * 2
    assert system.redis_counter("sys:started") == 6 and system.redis_counter("sys:duplicates") == 0, "nothing cut off or run twice"
