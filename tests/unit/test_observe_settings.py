"""METRICS_TEXTFILE_DIR (its drop-in) and DRAMATIQ_PROM_PORT_BASE (each instance's port and directory)."""

from __future__ import annotations

import pytest

from dramactl.install import drop_ins
from dramactl.settings import SettingsError, parse
from dramactl.worker import worker_environment

BASE = {"DRAMATIQ_COMMAND": "dramatiq app.tasks"}


def test_metrics_dir_gets_a_read_write_drop_in_only_when_set() -> None:
    assert not [k for k in drop_ins(parse(BASE)) if "metrics" in k]
    files = drop_ins(parse({**BASE, "METRICS_TEXTFILE_DIR": "/var/lib/prometheus/node-exporter"}))
    assert files["dramactl.service.d/50-metrics.conf"].endswith("[Service]\nReadWritePaths=-/var/lib/prometheus/node-exporter\n")  # "-": a missing directory must not stop the tick
    with pytest.raises(SettingsError, match="METRICS_TEXTFILE_DIR: 'metrics' is relative"):
        parse({**BASE, "METRICS_TEXTFILE_DIR": "metrics"})


def test_each_instance_gets_its_own_prometheus_port_and_directory() -> None:
    s = parse({**BASE, "DRAMATIQ_PROM_PORT_BASE": "9300"})
    envs = [worker_environment(s, {}, n) for n in (1, 2, 3)]
    assert [e["dramatiq_prom_port"] for e in envs] == ["9300", "9301", "9302"]
    assert len({e["dramatiq_prom_db"] for e in envs}) == 3
    assert worker_environment(parse(BASE), {}, 1)["dramatiq_prom_port"] == "9191"  # Dramatiq's own default for the first
    assert worker_environment(s, {"dramatiq_prom_db": "/srv/prom"}, 2)["dramatiq_prom_db"] == "/srv/prom/instance-2"
    with pytest.raises(SettingsError, match="DRAMATIQ_PROM_PORT_BASE: 65530 \\+ MAX_PROCESSES=10 - 1 is above 65535"):
        parse({**BASE, "DRAMATIQ_PROM_PORT_BASE": "65530"})
