"""`dramactl restart`'s options: a value it cannot use is one line naming the option and what to use, exit 2, as
for --batch above MAX_PROCESSES (--batch 0, --batch x and --wait -1 printed click's four-line usage block)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dramactl.cli import EXIT_CONFIG, main


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--batch", "9"], "dramactl: --batch: 9 is out of range; use 1 to MAX_PROCESSES=4"),
        (["--batch", "0"], "dramactl: --batch: 0 is out of range; use 1 to MAX_PROCESSES=4"),
        (["--batch", "-2"], "dramactl: --batch: -2 is out of range; use 1 to MAX_PROCESSES=4"),
        (["--batch", "x"], "dramactl: --batch: 'x' is not a whole number; use 1 to MAX_PROCESSES=4"),
        (["--batch", "1.5"], "dramactl: --batch: '1.5' is not a whole number; use 1 to MAX_PROCESSES=4"),
        (["--wait", "-1"], "dramactl: --wait: -1 is out of range; use 0 seconds or more"),
        (["--wait", "nan"], "dramactl: --wait: nan is out of range; use 0 seconds or more"),
        (["--wait", "x"], "dramactl: --wait: 'x' is not a number of seconds; use 0 or more"),
    ],
)
def test_a_bad_batch_or_wait_is_one_line_and_exit_2(args: list[str], line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env
    env = {"DRAMACTL_ENV_FILE": str(tmp_path / "none.env"), "DRAMACTL_STATE_DIR": str(tmp_path / "state"), "MAX_PROCESSES": "4"}
    res = CliRunner().invoke(main, ["restart", *args], env=env, catch_exceptions=False)
    assert res.exit_code == EXIT_CONFIG == 2
    assert res.output.splitlines() == [line]
    assert not (tmp_path / "state").exists()  # refused before anything: no lock, no state


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["scale-to", "2", "--wait", "-1"], "dramactl: Invalid value for '--wait': -1.0 is not in the range x>=0; see 'dramactl scale-to --help'"),
        (["scale-up", "-n", "0"], "dramactl: Invalid value for '-n': 0 is not in the range x>=1; see 'dramactl scale-up --help'"),
        (["scale-to"], "dramactl: Missing argument 'COUNT'; see 'dramactl scale-to --help'"),
        (["status", "--bogus"], "--bogus"),
    ],
)
def test_any_commands_bad_option_or_argument_is_one_line_and_exit_2(args: list[str], line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command, not only restart: click printed a four-line usage block for these."""
    monkeypatch.chdir(tmp_path)
    env = {"DRAMACTL_ENV_FILE": str(tmp_path / "none.env"), "DRAMACTL_STATE_DIR": str(tmp_path / "state")}
    res = CliRunner().invoke(main, args, env=env, catch_exceptions=False, prog_name="dramactl")
    assert res.exit_code == EXIT_CONFIG == 2
    if line.startswith("dramactl: "):
        assert res.output.splitlines() == [line]
    else:  # click's own words for an unknown option differ between versions (Debian's: "No such option: --bogus")
        [only] = res.output.splitlines()
        assert only.startswith("dramactl: No such option") and line in only and only.endswith("; see 'dramactl status --help'"), only
    assert not (tmp_path / "state").exists()
    assert CliRunner().invoke(main, ["scale-to", "--help"]).exit_code == 0
