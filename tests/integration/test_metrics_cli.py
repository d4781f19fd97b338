"""`dramactl metrics` from a real Redis, read by prometheus_client's own parser; `history` options."""

from __future__ import annotations

import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from dramactl.cli import EXIT_CONFIG, EXIT_SYSTEMD
from dramactl.metrics import METRICS, OPTIONAL
from tests.integration.test_cli import run  # noqa: F401 - the fixture


def test_metrics_parse_and_show_the_queue(run, redis: redis_lib.Redis) -> None:  # noqa: F811
    redis.rpush("dramatiq:email_processing", "a", "b", "c")
    redis.hset("dramatiq:email_processing.msgs", mapping={k: "{}" for k in "abcd"})
    res = run("metrics")
    assert res.exit_code == EXIT_SYSTEMD, res.output  # the run fixture has no system bus: metrics exits as status does
    families = {f.name: f for f in text_string_to_metric_families(res.stdout)}  # stderr names what was not read
    # the parser names a counter without its _total suffix
    # One host (no FLEET_NAME): the fleet figures are absent, not zeros.
    fleet = {n for n, _, _ in METRICS if n.startswith("dramactl_fleet_")}
    # systemd was not read: no dramactl_instances (0s would claim nothing runs).
    assert set(families) == {n.removesuffix("_total") for n, _, _ in METRICS} - {"dramactl_target_instances", "dramactl_tick_duration_seconds", "dramactl_last_tick_timestamp_seconds", "dramactl_instance_memory_bytes", "dramactl_instances"} - fleet - OPTIONAL
    ready = {s.labels["queue_name"]: s.value for s in families["dramactl_queue_ready_messages"].samples}
    flight = {s.labels["queue_name"]: s.value for s in families["dramactl_queue_in_flight_messages"].samples}
    assert (ready["email_processing"], flight["email_processing"], ready["ocr_processing"]) == (3, 1, 0)
    assert families["dramactl_scaling_actions"].type == "counter"
    assert {s.labels["direction"]: s.value for s in families["dramactl_scaling_actions"].samples} == {"up": 0, "down": 0}


def test_history_refuses_a_time_it_cannot_read(run) -> None:  # noqa: F811
    res = run("history", "--since", "soon")
    assert res.exit_code == EXIT_CONFIG
    assert res.output.strip().startswith("dramactl: cannot read time 'soon'")


def test_dashboard_serves_the_same_metrics(run, redis: redis_lib.Redis, settings_env) -> None:  # noqa: F811
    import threading
    import urllib.request

    from dramactl import dashboard, settings as settings_mod

    redis.rpush("dramatiq:email_processing", "a")
    server = dashboard.make_server(settings_mod.parse(settings_env), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(server.url + "metrics", timeout=10) as r:
            ctype, body = r.headers["Content-Type"], r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body)}
    ready = {s.labels["queue_name"]: s.value for s in families["dramactl_queue_ready_messages"].samples}
    assert ready["email_processing"] == 1
