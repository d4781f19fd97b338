"""`dramactl install` refuses an interpreter the service users cannot reach, before changing anything.

The case from the field: a venv made from a pyenv Python under /root. install and
check said ok, then every unit failed with status=203/EXEC (the dramatiq and dramactl
users cannot search /root). Rebuilt in the booted systemd: a copy of this Python
under /root/.pyenv (with /root 0700), a venv made from it that can import dramactl.
"""

from __future__ import annotations

import os
import sys
import sysconfig

import pytest

from tests.system.conftest import REPO, System

pytestmark = pytest.mark.system

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
PREFIX = f"/root/.pyenv/versions/{VERSION}"
VENV = "/opt/pyenv-venv"
WATCHED = "/etc/systemd/system /etc/polkit-1/rules.d /etc/dramactl /etc/sysusers.d /usr/local/bin"


def snapshot(system: System) -> str:
    """Every file install writes, with content hash, mode and mtime."""
    return system.sh(f"find {WATCHED} -xdev \\( -type f -o -type l \\) -printf '%p %m %T@ ' -exec sh -c 'md5sum < \"$1\" 2>/dev/null || echo -' _ {{}} \\; | sort").stdout


def test_install_refuses_a_pyenv_python_under_root_and_changes_nothing(system: System) -> None:
    base_python = os.path.realpath(sys.executable)
    root_mode = system.sh("stat -c %a /root").stdout.strip()
    system.sh(
        "set -e; chmod 0700 /root; "
        f"mkdir -p {PREFIX}/bin {PREFIX}/lib; cp {base_python} {PREFIX}/bin/python{VERSION}; "
        f"ln -s {sysconfig.get_path('stdlib')} {PREFIX}/lib/python{VERSION}; "
        f"{PREFIX}/bin/python{VERSION} -m venv --without-pip {VENV}; "
        # dramactl and its dependencies from the checkout and the test venv (editable finder included)
        f"printf '%s\\n' 'import site; site.addsitedir(\"{sysconfig.get_path('purelib')}\")' '{REPO}' "
        f"> {VENV}/lib/python{VERSION}/site-packages/dramactl-test.pth"
    )
    try:
        assert system.sh(f"readlink -f {VENV}/bin/python").stdout.strip() == f"{PREFIX}/bin/python{VERSION}"
        before = snapshot(system)
        assert "dramatiq-worker@.service" in before
        run = system.sh(f"{VENV}/bin/python -m dramactl.cli install", check=False)
        assert (run.returncode, run.stdout) == (2, ""), run
        assert run.stderr.splitlines() == [
            f"dramactl: interpreter: {PREFIX}/bin/python{VERSION} is not reachable by user dramatiq (/root is mode 0700); "
            "make the venv with /usr/bin/python3"
        ]
        assert snapshot(system) == before
    finally:
        system.sh(f"rm -rf {VENV} /root/.pyenv; chmod {root_mode} /root")
