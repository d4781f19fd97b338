"""docs/configuration.md is the settings reference: checked against dramactl/settings.py and the env template.

A setting read in settings.py (or by the CLI through a click envvar, or by the example app) without a row in
docs/configuration.md, with its default and range as the code has them, fails here; so does a name in
packaging/env/dramactl.env without a row, or a row of the reference that the template does not list.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from dramactl import settings as settings_mod
from dramactl.cli import main
from dramactl.example import work

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
SETTINGS_SRC = (REPO / "dramactl" / "settings.py").read_text()
TEMPLATE = REPO / "packaging" / "env" / "dramactl.env"
OUTSIDE = "## Set outside the env file"
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \|(.*)\|$")


def doc_rows(text: str) -> dict[str, list[str]]:
    """NAME -> [default, range, who reads it, example, meaning] for every row of the reference tables."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            cells = [c.strip() for c in m.group(2).split(" | ")]
            assert m.group(1) not in rows, f"{m.group(1)} has two rows"
            rows[m.group(1)] = cells
    return rows


def names_read_by_the_code() -> set[str]:
    names = set(re.findall(r'get\.(?:text|integer|number|size)\("([A-Z][A-Z0-9_]+)"', SETTINGS_SRC))
    names |= set(re.findall(r'env\.get\("([A-Z][A-Z0-9_]+)"\)', SETTINGS_SRC))
    for command in main.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                names |= {param.envvar} if isinstance(param.envvar, str) else set(param.envvar)
    names.add(work.TASK_SECONDS_ENV)
    return names


def template_names() -> set[str]:
    return set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", TEMPLATE.read_text(), re.M))


def first_value(cell: str) -> str:
    m = re.match(r"`([^`]*)`", cell)
    return m.group(1) if m else cell.split(" ")[0]


def test_every_setting_the_code_reads_has_a_complete_row() -> None:
    rows = doc_rows(DOC.read_text())
    names = names_read_by_the_code()
    assert len(names) > 25, names  # the extraction itself works
    missing = sorted(names - set(rows))
    assert not missing, f"docs/configuration.md has no row for {missing}: add one (default, range, who reads it, example)"
    stale = sorted(set(rows) - names)
    assert not stale, f"docs/configuration.md documents settings nothing reads: {stale}"
    for name, cells in rows.items():
        assert len(cells) == 5 and all(cells), f"{name}: every column needs a value: {cells}"
        assert f"{name}=" in cells[3], f"{name}: the example must set it ({cells[3]})"
        assert re.search(r"tick|worker|install/configure|dashboard|every command", cells[2]), f"{name}: who reads it? ({cells[2]})"


def test_documented_defaults_and_ranges_are_the_codes() -> None:
    rows = doc_rows(DOC.read_text())
    defaults = settings_mod.Settings()
    fields = dict(re.findall(r'(\w+)=get\.\w+\("([A-Z][A-Z0-9_]+)", d\.\w+', SETTINGS_SRC))
    fields = {name: field for field, name in fields.items()}
    checked = 0
    for name, field in fields.items():
        default, written = getattr(defaults, field), first_value(rows[name][0])
        if isinstance(default, (int, float)):
            assert float(written) == float(default), f"{name}: documented default {written!r}, settings.py has {default!r}"
        else:
            assert written == str(default), f"{name}: documented default {written!r}, settings.py has {default!r}"
        checked += 1
    for name, low, high in re.findall(r'get\.integer\("([A-Z][A-Z0-9_]+)", d\.\w+, low=(\d+), high=(\d+)\)', SETTINGS_SRC):
        assert rows[name][1].startswith(f"{low} to {high}"), f"{name}: range is {low} to {high} in settings.py, the doc says {rows[name][1]!r}"
        checked += 1
    for name, low, above in re.findall(r'get\.number\("([A-Z][A-Z0-9_]+)", d\.\w+, low=([\d.]+)(, above=True)?\)', SETTINGS_SRC):
        expected = f"above {float(low):g}" if above else f"{float(low):g}"
        assert rows[name][1].startswith(expected), f"{name}: range starts {expected!r} in settings.py, the doc says {rows[name][1]!r}"
        checked += 1
    assert checked > 35, checked
    # Those that are not plain get.X(NAME, d.field) calls.
    assert first_value(rows["DRAMATIQ_COMMAND"][0]) == settings_mod.EXAMPLE_COMMAND
    assert first_value(rows["DRAMACTL_STATE_DIR"][0]) == settings_mod.DEFAULT_STATE_DIR
    assert first_value(rows["DRAMACTL_ENV_FILE"][0]) == str(settings_mod.DEFAULT_ENV_FILE)
    assert float(first_value(rows[work.TASK_SECONDS_ENV][0])) == work.DEFAULT_TASK_SECONDS
    assert rows["SCALE_DOWN_STABILIZATION"][1].startswith(f"0 to {settings_mod.MAX_STABILIZATION:g}")
    assert rows["WATCHDOG_SEC"][1].startswith(f"{settings_mod.WATCHDOG_MIN} to ")
    for option in ("host", "port"):
        param = next(p for p in main.commands["dashboard"].params if p.name == option)
        assert first_value(rows[param.envvar][0]) == str(param.default)


def test_the_env_template_lists_the_documented_settings() -> None:
    text = DOC.read_text()
    assert OUTSIDE in text
    in_file, outside = (doc_rows(part) for part in text.split(OUTSIDE, 1))
    template = template_names()
    undocumented = sorted(template - set(in_file))
    assert not undocumented, f"packaging/env/dramactl.env sets {undocumented}, which docs/configuration.md's reference does not document"
    absent = sorted(set(in_file) - template)
    assert not absent, f"packaging/env/dramactl.env does not list {absent} (add a commented line with the default)"
    assert not template & set(outside), sorted(template & set(outside))


def test_the_check_catches_an_undocumented_setting() -> None:
    """The check above, on a doc with one row removed and a template with an extra name: both are caught."""
    text = DOC.read_text()
    without = "\n".join(line for line in text.splitlines() if not line.startswith("| `FLEET_HOST_TTL` |"))
    assert "FLEET_HOST_TTL" in names_read_by_the_code() - set(doc_rows(without))
    assert "NEW_SETTING" in {"NEW_SETTING", *template_names()} - set(doc_rows(text))
