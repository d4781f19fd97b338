"""The example app against a real Redis, run by real Dramatiq workers.

In-process ``dramatiq.Worker``s for the actor behaviour; one test runs the real
``dramatiq dramactl.example.tasks`` command, which is what DRAMATIQ_COMMAND defaults to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dramatiq
from dramatiq.brokers.stub import StubBroker
import pytest
from dramatiq.results import ResultFailure, Results

from dramactl import settings as settings_mod
from dramactl.example import tasks, work

EMAIL = {"to": "Ada Lovelace <Ada@Example.org>", "subject": " Invoice 42 ", "body": "Hello Ada,\nyour invoice is ready: https://example.org/i/42\nThanks"}


@pytest.fixture
def app_settings(settings_env, redis):
    return settings_mod.parse(settings_env)


@pytest.fixture
def broker(app_settings):
    broker = tasks.setup(app_settings, task_seconds=0)
    yield broker
    tasks.setup(app_settings, task_seconds=0)  # undo a test's namespace change for the next one


@pytest.fixture
def worker(broker):
    w = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    w.start()
    yield w
    w.stop()


def join(broker, *queues, timeout=30_000):
    for q in queues or tasks.QUEUES.values():
        broker.join(q, timeout=timeout)


def test_pure_work_is_deterministic(tmp_path):
    assert work.parse_email(EMAIL) == {
        "to": "ada@example.org",
        "name": "Ada Lovelace",
        "domain": "example.org",
        "user_id": None,
        "sender": "",
        "subject": "Invoice 42",
        "words": 12,  # Hello Ada your invoice is ready https example org i 42 Thanks
        "lines": 3,
        "links": 1,
        "attachments": 0,
        "digest": hashlib.sha256(EMAIL["body"].encode()).hexdigest()[:16],
    }
    doc = tmp_path / "scan.txt"
    doc.write_text("The cat saw the dog.\nThe end\n")
    assert work.ocr_document({"path": str(doc)}) == {
        "source": str(doc), "words": 7, "lines": 2, "chars": 29, "top_words": [["the", 3], ["cat", 1], ["dog", 1]],
    }
    assert work.build_report({"values": [1, 2, 3, 6]}) == {"count": 4, "sum": 12, "min": 1, "max": 6, "mean": 3.0}
    with pytest.raises(work.InvalidInput, match="'values'"):
        work.build_report({"values": ["x"]})
    with pytest.raises(work.InvalidInput, match="'seconds'"):
        work.parse_email({**EMAIL, "seconds": -1})
    assert work.default_seconds({}) == work.DEFAULT_TASK_SECONDS
    assert work.default_seconds({"EXAMPLE_TASK_SECONDS": "0.25"}) == 0.25
    assert work.default_seconds({"EXAMPLE_TASK_SECONDS": "soon"}) == work.DEFAULT_TASK_SECONDS


def test_email_result_is_returned_and_counted(broker, worker, redis):
    message = tasks.process_email_task.send(EMAIL)
    result = message.get_result(block=True, timeout=10_000)
    assert result == {**work.parse_email(EMAIL), "attempt": 1}
    join(broker, "email_processing")
    assert tasks.counts(redis, "process_email_task") == {"processed": 1, "unique": 1, "attempts": 1, "failures": 0}
    assert tasks.processed_ids(redis, "process_email_task") == {message.message_id}


def test_transient_failure_is_retried_with_the_actor_backoff(broker, worker, redis, caplog):
    caplog.set_level(logging.INFO, logger="dramactl.example.monitor")
    assert tasks.process_email_task.options["max_retries"] == 3
    assert (tasks.process_email_task.options["min_backoff"], tasks.process_email_task.options["max_backoff"]) == (1000, 60000)
    start = time.monotonic()
    message = tasks.process_email_task.send({**EMAIL, "fail_times": 1})
    result = message.get_result(block=True, timeout=15_000)
    elapsed = time.monotonic() - start
    assert result["attempt"] == 2
    assert elapsed >= 1.0, "the retry came before min_backoff=1000 ms"
    join(broker, "email_processing")
    assert tasks.counts(redis, "process_email_task") == {"processed": 1, "unique": 1, "attempts": 2, "failures": 1}
    lines = [r.getMessage() for r in caplog.records if message.message_id in r.getMessage()]
    events = [line.split()[0] for line in lines]
    assert events == ["event=start", "event=retry", "event=start", "event=finish"], lines
    assert "retry=1/3" in lines[1] and "TransientError" in lines[1] and "attempt=1" in lines[1]
    assert "attempt=2" in lines[3] and "duration=" in lines[3]
    assert all("\n" not in line for line in lines)


def test_retries_then_success_counts_every_attempt(broker, worker, redis):
    # Same actor, shorter backoff per message so two retries take well under a second.
    message = tasks.process_email_task.send_with_options(args=({**EMAIL, "fail_times": 2},), min_backoff=50, max_backoff=200)
    assert message.get_result(block=True, timeout=15_000)["attempt"] == 3
    join(broker, "email_processing")
    assert tasks.counts(redis, "process_email_task") == {"processed": 1, "unique": 1, "attempts": 3, "failures": 2}


def test_retries_run_out_after_max_retries(broker, worker, redis, caplog):
    caplog.set_level(logging.INFO, logger="dramactl.example.monitor")
    message = tasks.process_email_task.send_with_options(args=({**EMAIL, "fail_times": 10},), min_backoff=20, max_backoff=50)
    with pytest.raises(ResultFailure, match="simulated transient failure"):
        message.get_result(block=True, timeout=15_000)
    join(broker, "email_processing")
    # max_retries=3: the first attempt and three retries, then dead-lettered.
    assert tasks.counts(redis, "process_email_task") == {"processed": 0, "unique": 0, "attempts": 4, "failures": 4}
    assert redis.zcard("dramatiq:email_processing.XQ") == 1
    fails = [r.getMessage() for r in caplog.records if "event=fail" in r.getMessage()]
    assert len(fails) == 1 and "retries=3/3" in fails[0] and "attempt=4" in fails[0]


def test_invalid_input_fails_at_once_without_retries(broker, worker, redis):
    message = tasks.process_email_task.send({"to": "someone@example.com"})
    with pytest.raises(ResultFailure, match="missing the field 'subject'"):
        message.get_result(block=True, timeout=10_000)
    join(broker, "email_processing")
    assert tasks.counts(redis, "process_email_task")["attempts"] == 1


def test_dispatcher_validates_before_enqueueing(broker, redis):
    d = tasks.TaskDispatcher()
    cases = [
        (d.send_email_task, {"subject": "hi"}, "'to'"),
        (d.send_email_task, {"to": "a@example.com", "subject": ""}, "'subject'"),
        (d.send_email_task, {"to": "not-an-address", "subject": "hi"}, "'to' is not an email address"),
        (d.send_email_task, ["to", "subject"], "must be a dict"),
        (d.send_ocr_task, {}, "'file_path'"),
        (d.send_email_task, {"user_id": "u1", "subject": "hi", "sender": "nobody"}, "'sender' is not an email address"),
        (d.send_email_task, {"user_id": "u1", "subject": "hi", "attachments": "a.pdf"}, "'attachments' must be a list"),
        (d.send_ocr_task, {"text": 7}, "'text' must be a string"),
        (d.send_email_task, {**EMAIL, "fail_times": -1}, "'fail_times'"),
        (d.send_notification_task, {"user_id": 1}, "'message'"),
        (d.send_report_task, {"values": []}, "'values'"),
    ]
    for send, data, match in cases:
        with pytest.raises(ValueError, match=match):
            send(data)
    assert [k for k in redis.scan_iter("dramatiq:*")] == [], "an invalid task was enqueued"


def test_dispatcher_enqueues_and_every_message_runs_exactly_once(broker, worker, redis, tmp_path):
    d = tasks.TaskDispatcher()
    doc = tmp_path / "page.txt"
    doc.write_text("one two three four\n")
    sent: dict[str, set[str]] = {name: set() for name in tasks.ACTORS}
    for i in range(12):
        sent["process_email_task"].add(d.send_email_task({"to": f"u{i}@example.com", "subject": f"s{i}", "body": "x " * i}))
        sent["process_ocr_task"].add(d.send_ocr_task({"path": str(doc)} if i % 2 else {"text": "a b c"}))
        sent["send_notification_task"].add(d.send_notification_task({"user_id": i, "message": "code 1234"}))
        sent["generate_report_task"].add(d.send_report_task({"values": list(range(i + 1))}))
    assert all(len(ids) == 12 for ids in sent.values())
    join(broker)
    for name, ids in sent.items():
        assert tasks.counts(redis, name) == {"processed": 12, "unique": 12, "attempts": 12, "failures": 0}, name
        assert tasks.processed_ids(redis, name) == ids, name


def test_dispatcher_is_called_on_the_class_as_the_migration_guide_writes_it(broker, worker, redis, tmp_path):
    doc = tmp_path / "scan.txt"
    doc.write_text("alpha beta gamma\n")
    task_id = tasks.TaskDispatcher.send_email_task(EMAIL)
    ocr_id = tasks.TaskDispatcher.send_ocr_task({"path": str(doc)})
    instance_id = tasks.TaskDispatcher().send_email_task({"to": "b@example.com", "subject": "still works"})
    with pytest.raises(ValueError, match="'subject'"):
        tasks.TaskDispatcher.send_email_task({"to": "a@example.com"})
    with pytest.raises(ValueError, match="'file_path'"):
        tasks.TaskDispatcher.send_ocr_task({})
    join(broker, "email_processing", "ocr_processing")
    assert tasks.processed_ids(redis, "process_email_task") == {task_id, instance_id}
    assert tasks.processed_ids(redis, "process_ocr_task") == {ocr_id}
    assert tasks.counts(redis, "process_email_task")["attempts"] == 2  # the invalid ones never reached Redis
    assert tasks.counts(redis, "process_ocr_task")["attempts"] == 1


def test_ocr_reads_the_file_and_returns_the_word_count(broker, worker, tmp_path):
    doc = tmp_path / "scan.txt"
    doc.write_text("Dramatiq runs tasks.\nWorkers scale with the queue.\n")
    assert tasks.process_ocr_task.send({"path": str(doc)}).get_result(block=True, timeout=10_000)["words"] == 8
    result = tasks.process_ocr_task.send({"task_id": "ocr-7", "file_path": str(doc)}).get_result(block=True, timeout=10_000)
    assert (result["words"], result["task_id"], result["source"]) == (8, "ocr-7", str(doc))
    missing = tasks.process_ocr_task.send_with_options(args=({"path": str(tmp_path / "nope.txt")},), min_backoff=20, max_backoff=50)
    with pytest.raises(ResultFailure, match="does not exist"):
        missing.get_result(block=True, timeout=10_000)


def test_the_migration_guides_calls_work_verbatim(broker, worker, redis, caplog):
    """The guide's quick start, exactly as it writes it (README's tour uses the same two calls): the email is
    processed; the OCR task is enqueued, and its missing file is the task's failure: retried with the actor's
    backoff (max_retries=3), then dead-lettered like any other failure."""
    from dramactl.example.tasks import TaskDispatcher

    caplog.set_level(logging.INFO, logger="dramactl.example.monitor")
    email_id = TaskDispatcher.send_email_task({"user_id": "test-user", "sender": "test@example.com", "subject": "Test Email", "body": "Test content", "attachments": []})
    ocr_id = TaskDispatcher.send_ocr_task({"task_id": "ocr-001", "file_path": "/path/to/document.pdf"})
    assert isinstance(email_id, str) and isinstance(ocr_id, str) and email_id != ocr_id

    email = dramatiq.Message(queue_name="email_processing", actor_name="process_email_task", args=(), kwargs={}, options={}, message_id=email_id)
    [backend] = [m.backend for m in broker.middleware if isinstance(m, Results)]
    result = email.get_result(backend=backend, block=True, timeout=10_000)
    assert (result["user_id"], result["sender"], result["subject"], result["words"], result["attachments"]) == ("test-user", "test@example.com", "Test Email", 2, 0)
    join(broker, "email_processing", timeout=10_000)
    assert tasks.processed_ids(redis, "process_email_task") == {email_id}
    deadline = time.monotonic() + 40
    while redis.zcard("dramatiq:ocr_processing.XQ") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tasks.counts(redis, "process_ocr_task") == {"processed": 0, "unique": 0, "attempts": 4, "failures": 4}
    assert redis.zcard("dramatiq:ocr_processing.XQ") == 1
    [dead] = [json.loads(body) for body in redis.hvals("dramatiq:ocr_processing.XQ.msgs")]
    assert (dead["message_id"], dead["args"]) == (ocr_id, [{"task_id": "ocr-001", "file_path": "/path/to/document.pdf"}])
    lines = [r.getMessage() for r in caplog.records if ocr_id in r.getMessage() and r.getMessage().startswith("event=")]
    assert [line.split()[0] for line in lines if not line.startswith("event=start")] == ["event=retry"] * 3 + ["event=fail"], lines
    assert "ocr task file does not exist: /path/to/document.pdf" in lines[-1] and "retries=3/3" in lines[-1], lines


def test_task_seconds_makes_the_task_take_that_long(broker, worker):
    start = time.monotonic()
    tasks.send_notification_task.send({"user_id": 1, "message": "hi", "seconds": 0.6}).get_result(block=True, timeout=10_000)
    assert time.monotonic() - start >= 0.6


def test_setup_uses_the_namespace_and_keeps_a_broker_for_the_same_settings(app_settings, settings_env, redis):
    first = tasks.setup(app_settings, task_seconds=0)
    dramatiq.set_broker(StubBroker())  # another test or library set its own global broker since
    assert tasks.setup(app_settings, task_seconds=0) is first
    assert dramatiq.get_broker() is first, "the kept broker is the global one again (get_result reads the global)"
    other = settings_mod.parse({**settings_env, "REDIS_NAMESPACE": "shop"})
    broker = tasks.setup(other, task_seconds=0)
    assert broker is not first and dramatiq.get_broker() is broker
    assert all(actor.broker is broker for actor in tasks.ACTORS.values())
    message = tasks.process_ocr_task.send({"text": "x"})
    assert redis.llen("shop:ocr_processing") == 1
    [body] = redis.hvals("shop:ocr_processing.msgs")
    assert json.loads(body)["message_id"] == message.message_id
    assert redis.llen("dramatiq:ocr_processing") == 0


def test_the_dramatiq_command_runs_the_example_app(redis_server, redis, tmp_path):
    """What DRAMATIQ_COMMAND defaults to: the real CLI, configured only by the environment."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DRAMATIQ_"))},
        **redis_server.env,
        "DRAMACTL_ENV_FILE": str(tmp_path / "none.env"),
        "EXAMPLE_TASK_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
    }
    dramatiq_bin = Path(sys.executable).with_name("dramatiq")
    argv = settings_mod.check_command(settings_mod.EXAMPLE_COMMAND)
    argv[0] = str(dramatiq_bin)
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*argv, "--processes", "1", "--threads", "2"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        app_settings = settings_mod.parse(redis_server.env)
        tasks.setup(app_settings, task_seconds=0)
        ids = {tasks.TaskDispatcher().send_email_task({"to": f"x{i}@example.com", "subject": "s"}) for i in range(5)}
        flaky = tasks.process_email_task.send_with_options(args=({**EMAIL, "fail_times": 1},), min_backoff=50, max_backoff=100)
        ids.add(flaky.message_id)
        deadline = time.monotonic() + 30
        while tasks.counts(redis, "process_email_task")["processed"] < 6 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert tasks.processed_ids(redis, "process_email_task") == ids, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert text.count("event=finish actor=process_email_task") == 6, text
    assert text.count("event=retry actor=process_email_task") == 1, text
    assert "Traceback" not in text, "an injected failure logged a traceback"
