"""The polkit rule and dramactl agree on what a worker is: ``dramatiq-worker@N.service``, N = 1, 2, ...

Against the real polkitd of the booted systemd, as the ``dramactl`` user, through
dramactl's own Fleet: the names dramactl manages are allowed, every other one is
refused, so no instance can run that dramactl would not see (instance.py ignores
``@0``, ``@007`` and ``@x``).
"""

from __future__ import annotations

import json

import pytest

from tests.system.conftest import PYTHON, System

pytestmark = pytest.mark.system

ALLOWED = ["dramatiq-worker@1.service", "dramatiq-worker@12.service"]
# Names systemd accepts but dramactl does not know: root starts them (they run, or fail), dramactl may not touch them.
REFUSED = ["dramatiq-worker@0.service", "dramatiq-worker@007.service", "dramatiq-worker@x.service", "redis-server.service", "dramatiq-workers.target"]

# Not a unit name at all (the rule refuses it too; systemd rejects it before asking polkit).
INVALID = "dramatiq-worker@1.service.d"

PROBE = """
import json, sys
from dramactl.fleet import Fleet, FleetError


def reset_failed(f, name):
    f._call(b"ResetFailedUnit", b"s", [name.encode()])
    return "done"


out = {}
with Fleet() as f:
    verbs = (("start", lambda n: f.start_unit(n).result), ("reset-failed", lambda n: reset_failed(f, n)), ("stop", lambda n: f.stop_unit(n).result))
    for name in json.loads(sys.argv[1]):
        for verb, call in verbs:
            try:
                out[name + " " + verb] = call(name)
            except FleetError as e:
                out[name + " " + verb] = str(e)
print(json.dumps(out))
"""


def state(system: System, unit: str) -> str:
    return system.sh(f"systemctl show -P ActiveState {unit}").stdout.strip()


def test_polkit_allows_exactly_the_instances_dramactl_knows(system: System) -> None:
    # Units dramactl would not see, started by root: two running workers and one that fails at once.
    system.sh("systemctl start dramatiq-worker@0.service dramatiq-worker@007.service")
    system.sh("systemctl start dramatiq-worker@x.service", check=False)
    assert [state(system, u) for u in ("dramatiq-worker@0", "dramatiq-worker@007", "dramatiq-worker@x")] == ["active", "active", "failed"]

    proc = system.c.run([PYTHON, "-c", PROBE, json.dumps(ALLOWED + REFUSED + [INVALID])], user="dramactl")
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    for name in ALLOWED:
        assert [out[f"{name} {verb}"] for verb in ("start", "reset-failed", "stop")] == ["done", "done", "done"], (name, out)
    for name in REFUSED:
        for verb in ("start", "reset-failed", "stop"):
            msg = out[f"{name} {verb}"]
            assert msg.startswith("systemd refused ") and "polkit lets the dramactl user start/stop only dramatiq-worker@N.service" in msg, (name, verb, msg)
    for verb in ("start", "reset-failed", "stop"):  # not even a unit name: systemd refuses it before asking polkit
        assert out[f"{INVALID} {verb}"].startswith("systemd refused "), out[f"{INVALID} {verb}"]

    # Nothing dramactl was refused happened: root's units run (or stay failed) as root left them.
    assert [state(system, u) for u in ("dramatiq-worker@0", "dramatiq-worker@007", "dramatiq-worker@x")] == ["active", "active", "failed"]
    assert state(system, "redis-server") == "active"
    assert [state(system, u) for u in ("dramatiq-worker@1", "dramatiq-worker@12")] == ["inactive", "inactive"]
