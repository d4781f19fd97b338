"""The click CLI against a real Redis (systemd-dependent behaviour is in tests/system)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib
from click.testing import CliRunner

from dramactl.cli import EXIT_BUSY, EXIT_CONFIG, EXIT_SYSTEMD, main
from dramactl.state import StateStore

README = Path(__file__).resolve().parents[2] / "README.md"
# sd-bus reads DBUS_SYSTEM_BUS_ADDRESS: a socket that does not exist makes "systemd unreachable" the same on every
# host, with or without systemd as PID 1 (what a reachable systemd does is tested in tests/system).
NO_SYSTEM_BUS = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/dramactl-test/system_bus_socket"}


@pytest.fixture
def run(settings_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DRAMATIQ_COMMAND", "DRAMATIQ_QUEUE_NAME", "MIN_PROCESSES", "MAX_PROCESSES", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str, **env: str):
        return CliRunner().invoke(main, list(args), env={**NO_SYSTEM_BUS, **settings_env, **env}, catch_exceptions=False)

    return invoke


def test_status_json_reports_queues_and_says_why_systemd_is_missing(run, redis: redis_lib.Redis) -> None:
    redis.rpush("dramatiq:email_processing", "a", "b")
    redis.hset("dramatiq:email_processing.msgs", mapping={"a": '{"message_timestamp": 1}', "b": "{}", "c": "{}"})
    res = run("status", "--json")
    assert res.exit_code == EXIT_SYSTEMD, res.output  # printed in full, but systemd could not be read
    data = json.loads(res.output)
    assert data["unread"] == ["systemd"]
    q = {x["name"]: x for x in data["queues"]}["email_processing"]
    assert (q["ready"], q["in_flight"], q["backlog"]) == (2, 1, 3)
    assert data["totals"]["backlog"] == 3
    assert data["limits"]["min"] == 1 and data["limits"]["max"] == 10
    assert data["paused"] is False
    assert [e for e in data["errors"] if e.startswith("systemd: ")] == [
        "systemd: cannot reach systemd on the system bus ([err -2]: Could not open a bus to DBus); dramactl needs systemd as PID 1"
    ]


@pytest.mark.parametrize("redis_up", [True, False])
def test_manage_status_passes_the_exit_code_on(settings_env: dict[str, str], redis_server, tmp_path: Path, redis_up: bool) -> None:
    """manage_dramatiq.sh status exits with dramactl status's code, output unchanged: 3 when only systemd could not
    be read, 2 when Redis could not be either."""
    from tests.conftest import free_port

    env = {**os.environ, **NO_SYSTEM_BUS, **settings_env, "DRAMACTL": str(Path(sys.executable).with_name("dramactl"))}
    if not redis_up:
        env["REDIS_PORT"] = str(free_port())
    for name in ("DRAMATIQ_COMMAND", "DRAMATIQ_QUEUE_NAME", "REDIS_URL"):
        env.pop(name, None)
    repo = Path(__file__).resolve().parents[2]
    for args in (["status"], ["status", "--json"]):
        res = subprocess.run([str(repo / "manage_dramatiq.sh"), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert res.returncode == (EXIT_SYSTEMD if redis_up else EXIT_CONFIG), res.stdout + res.stderr
        assert "systemd: cannot reach systemd on the system bus" in res.stdout, res.stdout
        assert ("cannot reach Redis" in res.stdout) is not redis_up, res.stdout


def test_status_shows_the_default_policys_measured_figures(run, redis: redis_lib.Redis) -> None:
    """Workers have reported work (the hook's counters in Redis): status shows the figures the default policy sizes
    by, as text and as --json fields, and no step thresholds."""
    redis.hset("dramatiq:__dramactl__.work.email_processing", mapping={"done": 100, "busy": 250.0, "at": time.time()})
    for i in range(6):
        redis.rpush("dramatiq:email_processing", f"m{i}")
        redis.hset("dramatiq:email_processing.msgs", f"m{i}", json.dumps({"message_timestamp": int(time.time() * 1000) - 2000}))
    data = json.loads(run("status", "--json").output)
    policy = data["policy"]
    assert (policy["name"], policy["by"], policy["service_time"], policy["waiting"]) == ("default", "work", 2.5, 6), policy
    assert policy["needs"]["arrivals"] is not None and policy["needs"]["drain"] >= 1 and policy["target"] >= 1
    assert "E[S] 2.50s" in policy["reason"] and f"6 waiting drain in {policy['drain_seconds']:.0f}s with {policy['needs']['drain']}" in policy["reason"]
    text = run("status").output
    assert "policy default, by work: arrivals - x E[S] 2.50s = 0.0 busy threads; start-up 5s" in text, text
    assert f"needs: arrivals {policy['needs']['arrivals']}, drain {policy['needs']['drain']} (6 waiting," in text
    assert "step" not in text


def test_status_text(run, redis: redis_lib.Redis) -> None:
    res = run("status")
    assert res.exit_code == EXIT_SYSTEMD, res.output
    assert re.search(r"^QUEUE\s+READY\s+DELAYED\s+DUE\s+IN-FLIGHT\s+ORPHANED\s+DEAD\s+OLDEST$", res.output, re.M), res.output
    assert re.search(r"^email_processing\s+0\s+0\s+0\s+0\s+0\s+0\s+-$", res.output, re.M), res.output
    assert "autoscaling: on" in res.output
    # The default policy's own view, not the step rule's thresholds (which it does not use).
    assert "limits: min 1 max 10  policy default  threads/worker 8\n" in res.output, res.output
    assert "policy default, by count until workers report work: 8 per worker; start-up 5s (assumed until a start is timed)" in res.output
    assert "step" not in res.output and "threshold" not in res.output
    step = run("status", POLICY="step")
    assert "policy step: up above 0, down below 0 (depth 0, 0 workers" in step.output and "E[S]" not in step.output, step.output
    data = json.loads(run("status", "--json", POLICY="step").output)
    assert data["policy"] == {"name": "step", "workers": 0, "depth": 0, "scale_up_above": 0.0, "scale_down_below": 0.0}
    data = json.loads(run("status", "--json").output)
    assert (data["policy"]["name"], data["policy"]["by"], data["policy"]["target"]) == ("default", "count", 1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MIN_PROCESSES": "4", "MAX_PROCESSES": "2"}, "MIN_PROCESSES: 4 is above MAX_PROCESSES=2"),
        ({"CHECK_INTERVAL": "soon"}, "CHECK_INTERVAL: 'soon' is not a whole number"),
        ({"DRAMATIQ_COMMAND": "python worker.py"}, "DRAMATIQ_COMMAND: 'python' is not the dramatiq command"),
    ],
)
@pytest.mark.parametrize("command", [["tick"], ["status"], ["scale-to", "2"], ["pause"], ["check"]])
def test_bad_config_is_one_line_and_exit_2(run, command: list[str], env: dict[str, str], message: str) -> None:
    res = run(*command, **env)
    assert res.exit_code == EXIT_CONFIG
    assert res.output.strip().splitlines() == [f"dramactl: {message}" + res.output.split(message, 1)[1].strip()]


def test_tick_with_redis_down_exits_2_naming_redis(run) -> None:
    from tests.conftest import free_port

    res = run("tick", REDIS_PORT=str(free_port()))
    assert res.exit_code == EXIT_CONFIG
    assert res.output.startswith("dramactl: REDIS_HOST: cannot reach Redis at 127.0.0.1:")
    assert len(res.output.strip().splitlines()) == 1


def test_tick_without_systemd_exits_3(run, redis: redis_lib.Redis) -> None:
    # NO_SYSTEM_BUS makes systemd unreachable on every host, so this runs (and can fail) everywhere.
    res = run("tick", "--dry-run")
    assert res.exit_code == EXIT_SYSTEMD
    assert res.output.strip().splitlines() == [
        "dramactl: cannot reach systemd on the system bus ([err -2]: Could not open a bus to DBus); dramactl needs systemd as PID 1"
    ]


WRONG_TYPE = (
    "redis: DRAMATIQ_QUEUE_NAME: queue '__heartbeats__': dramatiq:__heartbeats__ is a zset, not a Dramatiq queue list; "
    "remove it from DRAMATIQ_QUEUE_NAME or fix the key"
)


def test_status_shows_the_readable_queues_and_the_bad_one_in_errors(run, redis: redis_lib.Redis) -> None:
    redis.zadd("dramatiq:__heartbeats__", {"some-worker": 1})
    redis.rpush("dramatiq:email_processing", "a")
    redis.hset("dramatiq:email_processing.msgs", "a", "{}")
    env = {"DRAMATIQ_QUEUE_NAME": "email_processing,__heartbeats__"}
    res = run("status", "--json", **env)
    assert res.exit_code == EXIT_CONFIG, res.output  # one queue could not be read: Redis was not read in full
    data = json.loads(res.output)
    assert data["unread"] == ["redis", "systemd"]
    assert [q["name"] for q in data["queues"]] == ["email_processing"]
    assert data["queues"][0]["ready"] == 1 and data["totals"]["ready"] == 1
    assert WRONG_TYPE in data["errors"]
    res = run("status", **env)
    assert res.exit_code == EXIT_CONFIG, res.output
    assert re.search(r"^email_processing\s+1\s", res.output, re.M), res.output
    assert f"error: {WRONG_TYPE}" in res.output.splitlines()
    assert "Traceback" not in res.output


def test_tick_with_a_queue_key_of_the_wrong_type_exits_2_in_one_line(run, redis: redis_lib.Redis) -> None:
    redis.zadd("dramatiq:__heartbeats__", {"some-worker": 1})
    for command in (["tick"], ["tick", "--dry-run"], ["check"]):
        res = run(*command, DRAMATIQ_QUEUE_NAME="email_processing,__heartbeats__")
        assert res.exit_code == EXIT_CONFIG, res.output
        assert res.output.splitlines() == [f"dramactl: {WRONG_TYPE.removeprefix('redis: ')}"]


def test_status_shows_orphaned_messages_of_a_dead_worker(run, redis: redis_lib.Redis, settings_env: dict[str, str]) -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(host="127.0.0.1", port=int(settings_env["REDIS_PORT"]))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="email_processing")
    def task(i: int) -> None: ...

    for i in range(5):
        task.send(i)
    consumer = broker.consume("email_processing", prefetch=2, timeout=1000)
    next(consumer)
    redis.zadd("dramatiq:__heartbeats__", {broker.broker_id: 1})  # its last heartbeat: 1970
    try:
        res = run("status", DRAMATIQ_QUEUE_NAME="email_processing")
        assert re.search(r"^email_processing\s+3\s+0\s+0\s+0\s+2\s+0\s", res.output, re.M), res.output
        data = json.loads(run("status", "--json", DRAMATIQ_QUEUE_NAME="email_processing").output)
        assert (data["totals"]["in_flight"], data["totals"]["orphaned"], data["totals"]["backlog"]) == (0, 2, 5)
    finally:
        consumer.close()
        broker.close()


def test_pause_and_resume_persist(run, settings_env: dict[str, str], redis: redis_lib.Redis) -> None:
    store = StateStore(settings_env["DRAMACTL_STATE_DIR"])
    assert run("pause").exit_code == 0
    assert store.load().paused is True
    assert json.loads(run("status", "--json").output)["paused"] is True
    assert "PAUSED" in run("status").output
    assert run("resume").exit_code == 0
    assert store.load().paused is False


def test_a_busy_lock_is_reported(run, settings_env: dict[str, str], redis: redis_lib.Redis) -> None:
    store = StateStore(settings_env["DRAMACTL_STATE_DIR"])
    with store.lock():
        res = run("tick")
    assert res.exit_code == 0 and res.output.startswith("skipped: another dramactl tick")
    assert EXIT_BUSY == 4


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(state_dir: str, seconds: float) -> subprocess.Popen:
    """Another process holding the tick lock, as a running tick or manual change does."""
    os.makedirs(state_dir, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, os.path.join(state_dir, "tick.lock"), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


@pytest.mark.parametrize("command", [["scale-to", "2"], ["scale-up"], ["scale-down", "-n", "2"], ["pause"], ["resume"]])
def test_a_manual_change_gives_up_after_wait_with_exit_4(run, settings_env: dict[str, str], command: list[str]) -> None:
    state_dir = settings_env["DRAMACTL_STATE_DIR"]
    holder = hold_lock(state_dir, 60)
    try:
        started = time.monotonic()
        res = run(*command, "--wait", "1")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == EXIT_BUSY == 4
    assert res.output.splitlines() == [
        f"dramactl: another dramactl tick or manual change holds {state_dir}/tick.lock; try again or raise --wait"
    ]
    assert 1.0 <= waited < 10.0
    assert sorted(os.listdir(state_dir)) == ["tick.lock"]  # no state written: nothing changed


def test_a_manual_change_waits_for_the_lock_to_be_released(run, settings_env: dict[str, str]) -> None:
    store = StateStore(settings_env["DRAMACTL_STATE_DIR"])
    holder = hold_lock(settings_env["DRAMACTL_STATE_DIR"], 1.0)
    try:
        res = run("pause", "--wait", "20")
    finally:
        holder.wait(20)
    assert res.exit_code == 0, res.output
    assert store.load().paused is True


def test_scale_to_beyond_max_is_refused_before_systemd(run) -> None:
    res = run("scale-to", "11")
    assert res.exit_code == EXIT_CONFIG
    assert "MAX_PROCESSES: cannot scale to 11: allowed 0..10" in res.output


def test_check_reaches_redis_and_shows_the_worker_command(run, redis: redis_lib.Redis) -> None:
    res = run("check", DRAMATIQ_COMMAND="dramatiq app.tasks", WORKER_THREADS="3")
    assert res.exit_code == 0, res.output
    assert "redis ok at 127.0.0.1:" in res.output
    assert re.search(r"worker command: (\S+ -m |\S+/)dramatiq app\.tasks dramactl_ready --processes 1 --threads 3 --worker-shutdown-timeout 30000", res.output)


def test_check_names_what_it_did_not_read_and_a_password_every_user_can_read(run, redis: redis_lib.Redis, tmp_path: Path) -> None:
    """Root's commands skip ./.env beside an installed file and never read DRAMACTL_STATE_DIR from
    it (tests/unit/test_settings.py); `check` says so, and warns when that file holds the Redis
    password with mode 0644."""
    import os

    system = tmp_path / "dramactl.env"
    system.write_text("DRAMACTL_STATE_DIR=/srv/dstate\nREDIS_URL=redis://:pw-in-file@127.0.0.1:1/0\n")
    os.chmod(system, 0o644)
    (tmp_path / ".env").write_text("MAX_PROCESSES=3\n")  # run() runs in tmp_path
    url = f"redis://127.0.0.1:{redis.connection_pool.connection_kwargs['port']}/0"  # the environment's wins over the file's
    res = run("check", DRAMATIQ_COMMAND="dramatiq app.tasks", DRAMACTL_ENV_FILE=str(system), REDIS_URL=url)
    assert res.exit_code == 0, res.output
    assert f"note: {tmp_path / '.env'} not read: root's commands use {system}, the file the units read" in res.output
    assert f"note: DRAMACTL_STATE_DIR in {system} not read" in res.output
    assert f"dramactl: warning: {system} holds the Redis password and every user can read it (mode 0644); chmod 0640 it and chgrp it to dramactl" in res.output
    assert "pw-in-file" not in res.output
    os.chmod(system, 0o640)
    assert "warning" not in run("check", DRAMATIQ_COMMAND="dramatiq app.tasks", DRAMACTL_ENV_FILE=str(system), REDIS_URL=url).output


def test_debug_log_level_reaches_the_worker(run, redis: redis_lib.Redis) -> None:
    res = run("check", DRAMATIQ_COMMAND="dramatiq app.tasks", LOG_LEVEL="debug")
    assert res.exit_code == 0 and res.output.rstrip().endswith("--verbose"), res.output


def test_check_refuses_a_missing_executable(run, redis: redis_lib.Redis) -> None:
    res = run("check", DRAMATIQ_COMMAND="/nonexistent/bin/dramatiq app")
    assert res.exit_code == EXIT_CONFIG
    assert "DRAMATIQ_COMMAND: '/nonexistent/bin/dramatiq' is not an executable" in res.output


def test_load_enqueues_example_messages(run, redis: redis_lib.Redis) -> None:
    res = run("load", "7", "--kind", "email", "--seconds", "0")
    assert res.exit_code == 0, res.output
    assert "enqueued 7 email messages" in res.output
    q = {x["name"]: x for x in json.loads(run("status", "--json").output)["queues"]}["email_processing"]
    assert q["ready"] == 7


def test_every_command_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [name for name, cmd in main.commands.items() if not cmd.hidden and f"dramactl {name}" not in text]
    assert not missing, f"README.md does not document: {missing}"


@pytest.mark.parametrize("text", ["[]", '{"history": [{"at": "x", "backlog": 1, "workers": 1, "target": 1}]}', '{"threads": "abc"}'])
def test_damaged_state_file_is_set_aside_and_commands_carry_on(run, settings_env: dict[str, str], redis: redis_lib.Redis, text: str) -> None:
    """status and pause against real Redis with a state file of the wrong shape: no traceback,
    one warning line naming the file, the file set aside, and the command does its job."""
    state_dir = Path(settings_env["DRAMACTL_STATE_DIR"])
    state_dir.mkdir(parents=True)
    path = state_dir / "state.json"
    path.write_text(text)
    res = run("status", "--json")
    assert res.exit_code == EXIT_SYSTEMD, res.output  # no systemd here; the damaged file is no reason to fail
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"dramactl: warning: {path} is damaged ("), res.stderr
    assert "Traceback" not in res.output
    data = json.loads(res.stdout)
    assert (data["paused"], data["threads"], data["last_tick"]) == (False, 8, None)
    assert not path.exists() and len(list(state_dir.glob("state.json.damaged-*"))) == 1

    path.write_text(text)
    res = run("pause")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert res.stderr.startswith(f"dramactl: warning: {path} is damaged (") and "autoscaling paused" in res.stdout
    assert StateStore(state_dir).load().paused is True


# ---- bad input from the fuzzing review: one line naming the setting or option, a non-zero exit, nothing half done ----

PW = "pw-Secret-4711"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PW}@127.0.0.1:notaport/0",
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:-5/0",
        f"redis://:{PW}@[bad/0",
        f"redis://127.0.0.1:6379/0?socket_timeout=abc&password={PW}",
        "redis://127.0.0.1:6379/0?db=abc",
    ],
)
@pytest.mark.parametrize("command", [["check"], ["status"], ["metrics"]])
def test_a_redis_url_redis_py_cannot_read_is_one_line(run, command: list[str], url: str) -> None:
    """queue.connect called redis.from_url outside redis_errors: a ~40-line ValueError traceback."""
    res = run(*command, REDIS_URL=url)
    assert res.exit_code == EXIT_CONFIG, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dramactl: REDIS_URL: "), res.output
    assert PW not in res.output


def test_the_redis_url_hint_is_printed_whole(run) -> None:
    res = run("check", REDIS_URL="http://x")
    assert res.exit_code == EXIT_CONFIG
    assert res.output == "dramactl: REDIS_URL: 'http' is not a Redis URL; use redis://host:port/db, with ':password@' before the host when Redis needs one\n"


def test_a_relative_state_dir_is_refused_and_nothing_is_written_here(run, tmp_path: Path) -> None:
    """DRAMACTL_STATE_DIR=state (or empty, before) made `dramactl pause` exit 0 writing ./state.json."""
    here = sorted(p.name for p in tmp_path.iterdir())
    res = run("pause", DRAMACTL_STATE_DIR="state")
    assert res.exit_code == EXIT_CONFIG
    assert res.output == "dramactl: DRAMACTL_STATE_DIR: 'state' is relative; give an absolute path, or leave it empty for /var/lib/dramactl\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == here


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["metrics"], ["pause"], ["tick", "--dry-run"]])
def test_a_state_dir_that_cannot_be_used_is_one_line(run, redis: redis_lib.Redis, tmp_path: Path, command: list[str]) -> None:
    """A state directory that is a file, or a state.json that is a directory: NotADirectoryError/IsADirectoryError tracebacks."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    res = run(*command, DRAMACTL_STATE_DIR=str(blocker))
    assert res.exit_code == EXIT_CONFIG, res.output
    assert len(res.output.strip().splitlines()) == 1 and res.output.startswith(f"dramactl: state directory {blocker} "), res.output
    (tmp_path / "s" / "state.json").mkdir(parents=True)
    res = run(*command, DRAMACTL_STATE_DIR=str(tmp_path / "s"))
    assert res.exit_code == EXIT_CONFIG, res.output
    assert res.output == f"dramactl: state file {tmp_path / 's' / 'state.json'} is a directory; remove it (the next change writes a fresh state file)\n"


@pytest.mark.parametrize("since", ["-9999999999h", "-99999999999999999h", "+99999999999999h"])
@pytest.mark.parametrize("command", [["history"], ["replay"], ["tune", "--p95", "10"]])
def test_a_since_outside_the_journals_range_is_one_line(run, command: list[str], since: str) -> None:
    """datetime.fromtimestamp / seek_realtime raised ValueError, OverflowError or OSError: tracebacks."""
    res = run(*command, "--since", since)
    assert res.exit_code == EXIT_CONFIG, res.output
    assert res.output == f"dramactl: cannot read time '{since}' (--since): it is out of range; use a time from 1970 to 9999, e.g. -2h or '2026-11-24 12:00'\n"


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_dashboard_port_out_of_range_is_one_line(run, port: str) -> None:
    """make_server raised ValueError and the command caught only OSError: a traceback."""
    res = run("dashboard", DASHBOARD_PORT=port)
    assert res.exit_code == EXIT_CONFIG
    assert res.output == f"dramactl: --port/DASHBOARD_PORT: {port} is not a port; use one from 1 to 65535 (0: any free one)\n"


def test_a_dashboard_host_a_socket_cannot_take_is_one_line(run) -> None:
    res = run("dashboard", DASHBOARD_HOST="ünï..", DASHBOARD_PORT="0")
    assert res.exit_code == EXIT_CONFIG
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith("dramactl: --host/DASHBOARD_HOST: 'ünï..' is not a host name or address (")


def test_load_with_a_rate_too_low_sends_nothing(run, redis: redis_lib.Redis) -> None:
    """--rate 1e-300 enqueued one message, then time.sleep(1e300) raised OverflowError."""
    res = run("load", "3", "--rate", "1e-300")
    assert res.exit_code == EXIT_CONFIG
    assert res.output == "dramactl: rate (--rate) must be at least 0.001 messages per second, not 1e-300\n"
    assert list(redis.scan_iter("dramatiq:*")) == []


def test_metrics_say_what_they_could_not_read_and_exit_like_status(run, redis: redis_lib.Redis) -> None:
    """metrics exited 0 with nothing on stderr when Redis or systemd could not be read, and printed
    dramactl_instances{state="active"} 0 though systemd was never asked. Now: what was read on stdout,
    one stderr line per problem, exit 2 (Redis, or one of its queues) or 3 (only systemd), as `status`."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import free_port

    redis.rpush("dramatiq:email_processing", "a")
    redis.hset("dramatiq:email_processing.msgs", "a", json.dumps({"message_timestamp": int(time.time() * 1000)}))
    res = run("metrics")  # Redis read, systemd not (NO_SYSTEM_BUS)
    assert res.exit_code == EXIT_SYSTEMD
    families = {f.name: f for f in text_string_to_metric_families(res.stdout)}
    assert "dramactl_instances" not in families and "dramactl_paused" in families
    assert {s.labels["queue_name"]: s.value for s in families["dramactl_queue_ready_messages"].samples}["email_processing"] == 1
    assert res.stderr.splitlines() == [
        "dramactl: systemd: cannot reach systemd on the system bus ([err -2]: Could not open a bus to DBus); dramactl needs systemd as PID 1"
    ]

    redis.set("dramatiq:ocr_processing", "x")  # one queue's key of the wrong type: the others are still printed
    res = run("metrics")
    assert res.exit_code == EXIT_CONFIG
    families = {f.name: f for f in text_string_to_metric_families(res.stdout)}
    assert {s.labels["queue_name"] for s in families["dramactl_queue_ready_messages"].samples} == {"email_processing", "high_priority", "low_priority"}
    assert "dramactl: redis: DRAMATIQ_QUEUE_NAME: queue 'ocr_processing': dramatiq:ocr_processing is a string" in res.stderr

    res = run("metrics", REDIS_PORT=str(free_port()))  # Redis down
    assert res.exit_code == EXIT_CONFIG
    families = {f.name for f in text_string_to_metric_families(res.stdout)}
    assert not {n for n in families if n.startswith("dramactl_queue_")} and "dramactl_instances" not in families
    assert "dramactl_paused" in families and "dramactl_scaling_actions" in families
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("dramactl: redis: REDIS_HOST: cannot reach Redis at 127.0.0.1:"), res.stderr
    assert "Traceback" not in res.output
