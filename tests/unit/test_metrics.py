"""The exposition text (pure) and its atomic textfile."""

from __future__ import annotations

import os
import stat

from dramactl import metrics
from dramactl.instance import WorkerUnit
from dramactl.policy import ScalingDecision
from dramactl.scaler import Outcome
from dramactl.stats import QueueStats


def outcome() -> Outcome:
    return Outcome(
        ScalingDecision(2, 3, "up"),
        [QueueStats("a", ready=30, delayed=4, due=1, in_flight=6, orphaned=2, dead=1, oldest_age=12.5), QueueStats('we"ird', ready=0)],
        instances=[WorkerUnit(1, "active", "running", memory=612 * 2**20), WorkerUnit(2, "activating", "start")],
        at=1_700_000_000.25,
        duration=0.2,
        actions={"up": 7, "down": 4},
        stopped_by={"idle": 3, "busy": 1, "unreported": 0},
        paused=True,
        recycles=2,
    )


def samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_render_names_units_labels_and_values() -> None:
    text = metrics.render(metrics.from_outcome(outcome()))
    s = samples(text)
    assert s['dramactl_queue_ready_messages{queue_name="a"}'] == "30"
    assert s['dramactl_queue_due_messages{queue_name="a"}'] == "1"
    assert s['dramactl_queue_orphaned_messages{queue_name="a"}'] == "2"
    assert s['dramactl_queue_oldest_message_age_seconds{queue_name="a"}'] == "12.5"
    assert s['dramactl_queue_oldest_message_age_seconds{queue_name="we\\"ird"}'] == "0.0"
    assert s['dramactl_instances{state="active"}'] == "1" and s['dramactl_instances{state="failed"}'] == "0"
    assert s["dramactl_target_instances"] == "3"
    assert (s['dramactl_scaling_actions_total{direction="up"}'], s['dramactl_scaling_actions_total{direction="down"}']) == ("7", "4")
    assert [s[f'dramactl_scale_down_stops_total{{chosen="{k}"}}'] for k in ("idle", "busy", "unreported")] == ["3", "1", "0"]
    assert (s["dramactl_tick_duration_seconds"], s["dramactl_last_tick_timestamp_seconds"], s["dramactl_paused"]) == ("0.2", "1700000000.25", "1")
    assert s["dramactl_recycles_total"] == "2" and s['dramactl_instance_memory_bytes{instance="1"}'] == str(612 * 2**20)
    assert 'dramactl_instance_memory_bytes{instance="2"}' not in s  # not read: left out, not 0
    assert "# TYPE dramactl_scaling_actions_total counter" in text
    fleet = [n for n, _, _ in metrics.METRICS if n.startswith("dramactl_fleet_")]
    assert text.count("# HELP") == len(metrics.METRICS) - len(fleet) - len(metrics.OPTIONAL) and text.endswith("\n")
    assert not any(name in text for name in fleet)  # one host: no fleet figures at all


def fleet_outcome() -> Outcome:
    from dramactl.share import Coordinated, FleetDecision, HostEntry

    o = outcome()
    decision = FleetDecision(1.0, "1" * 32, 5, 6, "step", ("1" * 32, "3" * 32), {"1" * 32: 2, "2" * 32: 0, "3" * 32: 3}, failing=("2" * 32,))
    hosts = (
        HostEntry("1" * 32, 4, up=2, claim=2, label="web"),
        HostEntry("2" * 32, 4, up=1, claim=1, label="web", failing=True, working=0),
        HostEntry("3" * 32, 4, up=3, claim=3, label='o"dd'),
    )
    o.fleet = Coordinated(o.decision, decision, hosts, 2, 1, True)
    return o


def by_host(s: dict[str, str], family: str) -> dict[tuple[str, str], int]:
    """(host, first digit of host_id) -> value, the label values unescaped as the text format writes them
    (the .deb's build runs these tests without prometheus_client; the integration tests parse with it)."""
    import re

    out = {}
    for key, value in s.items():
        if key.startswith(family + "{"):
            labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', key)}
            out[(labels["host"], labels["host_id"][:1])] = int(float(value))
    return out


def test_the_fleet_figures_target_cap_each_hosts_instances_and_share_live_and_failing_hosts() -> None:
    text = metrics.render(metrics.from_outcome(fleet_outcome()))
    assert text.count("# HELP") == len(metrics.METRICS) - len(metrics.OPTIONAL)  # no instance reported
    s = samples(text)
    assert (s["dramactl_fleet_target_instances"], s["dramactl_fleet_cap_instances"]) == ("5", "6")
    assert (s["dramactl_fleet_live_hosts"], s["dramactl_fleet_failing_hosts"]) == ("3", "1")
    up, share = by_host(s, "dramactl_fleet_host_instances"), by_host(s, "dramactl_fleet_host_share_instances")
    assert up == {("web", "1"): 2, ("web", "2"): 1, ('o"dd', "3"): 3}  # two hosts named web: two series
    assert share == {("web", "1"): 2, ("web", "2"): 0, ('o"dd', "3"): 3}
    # `dramactl metrics` (from status) says the same of the live hosts.
    status = {
        "fleet": {"target": 5, "cap": 6},
        "hosts": [
            {"name": "web", "id": "1" * 32, "up": 2, "share": 2, "live": True, "failing": False},
            {"name": "web", "id": "2" * 32, "up": 1, "share": 0, "live": True, "failing": True},
            {"name": 'o"dd', "id": "3" * 32, "up": 3, "share": 3, "live": True, "failing": False},
            {"name": "gone", "id": "4" * 32, "up": 4, "share": 0, "live": False, "failing": False},
        ],
    }
    fleet_lines = [line for line in text.splitlines() if "dramactl_fleet_" in line]
    from_status = [line for line in metrics.render(metrics.from_status(status)).splitlines() if "dramactl_fleet_" in line]
    assert from_status == fleet_lines


def test_instance_reports_are_exported() -> None:
    from dataclasses import replace

    from dramactl.stats import InstanceReport

    o = replace(outcome(), reports={
        2: InstanceReport(2, threads=4, busy=1, oldest=1_700_000_000.25 - 90.0, held=1, at=1_700_000_000.0),
        3: InstanceReport(3, threads=4, busy=1, oldest=1_700_000_000.25 - 90.0, at=1_700_000_000.0, paused=True),
    })
    s = samples(metrics.render(metrics.from_outcome(o)))
    assert (s['dramactl_instance_intake_paused{instance="2"}'], s['dramactl_instance_intake_paused{instance="3"}']) == ("0", "1")
    assert (s['dramactl_instance_threads{instance="2"}'], s['dramactl_instance_busy_threads{instance="2"}']) == ("4", "1")
    assert s['dramactl_instance_oldest_task_age_seconds{instance="2"}'] == "90.0"
    assert s['dramactl_instance_held_messages{instance="2"}'] == "1"  # a retry Redis has not stored yet
    assert 'dramactl_instance_threads{instance="1"}' not in s


def test_before_any_tick_the_tick_figures_are_absent_not_zero() -> None:
    text = metrics.render(metrics.from_status({"queues": [], "instances": [], "last_tick": None, "paused": False}))
    assert "dramactl_target_instances" not in text and "dramactl_last_tick_timestamp_seconds" not in text
    assert samples(text)["dramactl_paused"] == "0"


def test_status_and_outcome_give_the_same_text() -> None:
    o = outcome()
    status = {
        "queues": [q.to_dict() for q in o.queues],
        "instances": [u.to_dict() for u in o.instances],
        "last_tick": {"at": o.at, "target": 3, "duration": 0.2},
        "scaling_actions": {"up": 7, "down": 4},
        "scale_down_stops": {"idle": 3, "busy": 1, "unreported": 0},
        "recycles": 2,
        "paused": True,
    }
    assert metrics.render(metrics.from_status(status)) == metrics.render(metrics.from_outcome(o))


def test_textfile_is_replaced_whole_readable_by_node_exporter(tmp_path) -> None:
    (tmp_path / "dramactl.prom").write_text("old\n")
    path = metrics.write_textfile(tmp_path, "new\n")
    assert path == tmp_path / "dramactl.prom" and path.read_text() == "new\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["dramactl.prom"]


def test_an_unwritable_directory_is_logged_not_raised(tmp_path, caplog) -> None:
    metrics.publish(str(tmp_path / "missing"), outcome())
    assert "METRICS_TEXTFILE_DIR: cannot write" in caplog.text


def test_a_scale_down_waiting_for_long_tasks_shows_since_when() -> None:
    """While the last tick's scale-down waits for long tasks (issue 19), the metrics say since when, from
    the tick's Outcome and from status alike; no wait, no series (0 would read as 1970)."""
    o = outcome()
    assert "dramactl_scale_down_waiting_since" not in metrics.render(metrics.from_outcome(o))
    o.waiting_since = 1_699_999_000.5
    text = metrics.render(metrics.from_outcome(o))
    assert samples(text)["dramactl_scale_down_waiting_since_timestamp_seconds"] == "1699999000.5"
    status = {"last_tick": {"at": o.at, "target": 3, "waiting_since": 1_699_999_000.5}}
    assert samples(metrics.render(metrics.from_status(status)))["dramactl_scale_down_waiting_since_timestamp_seconds"] == "1699999000.5"
