"""Samples the fleet once a second from inside the container, independently of dramactl's
own view: systemd's unit states and pending jobs (systemctl), and Redis' queue (the probe).

Run as ``python sampler.py OUT.jsonl``; one JSON object per line:
``{"t": epoch, "units": {"dramatiq-worker@1.service": "active/running/-"}, "jobs": {unit: type},
"ready": .., "in_flight": .., "orphaned": .., "error": ..}``. Stops when OUT.jsonl.stop exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from dramactl import queue, settings


def systemd_view() -> tuple[dict[str, str], dict[str, str]]:
    units: dict[str, str] = {}
    out = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "dramatiq-worker@*.service"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            units[parts[0]] = f"{parts[2]}/{parts[3]}"
    jobs: dict[str, str] = {}
    out = subprocess.run(["systemctl", "list-jobs", "--plain", "--no-legend"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith("dramatiq-worker@"):
            jobs[parts[1]] = parts[2]
    return units, jobs


def main(path: str) -> None:
    conf = settings.load()
    with open(path, "a", buffering=1) as out:
        while not os.path.exists(path + ".stop"):
            started = time.time()
            units, jobs = systemd_view()
            row: dict = {"t": started, "units": units, "jobs": jobs}
            try:
                (q,) = queue.read(conf)
                row.update(ready=q.ready, in_flight=q.in_flight, orphaned=getattr(q, "orphaned", 0), error=None)
            except Exception as exc:  # noqa: BLE001 - Redis stopped on purpose: note it, keep sampling
                row["error"] = str(exc)
            out.write(json.dumps(row) + "\n")
            time.sleep(max(0.0, 1.0 - (time.time() - started)))


if __name__ == "__main__":
    main(sys.argv[1])
