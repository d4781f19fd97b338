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
    assert (s["dramactl_tick_duration_seconds"], s["dramactl_last_tick_timestamp_seconds"], s["dramactl_paused"]) == ("0.2", "1700000000.25", "1")
    assert s["dramactl_recycles_total"] == "2" and s['dramactl_instance_memory_bytes{instance="1"}'] == str(612 * 2**20)
    assert 'dramactl_instance_memory_bytes{instance="2"}' not in s  # not read: left out, not 0
    assert "# TYPE dramactl_scaling_actions_total counter" in text
    assert text.count("# HELP") == len(metrics.METRICS) and text.endswith("\n")


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
