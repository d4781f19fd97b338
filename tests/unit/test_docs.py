"""README.md and docs/*.md: every relative link resolves (file and #anchor), and every `dramactl …` command they
show exists with the options it is shown with (checked against click's own command tree)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from dramactl.cli import main

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
# A command as shown: `dramactl NAME ...`, `$ dramactl ...`, `sudo /opt/dramactl/venv/bin/dramactl ...`.
COMMAND = re.compile(r"(?:^|[\s$`(]|bin/)dramactl ([a-z][a-z-]*(?=\s|$)[^`|\n;)&]*)")
SHELL = ("sh", "bash", "shell", "console")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_pages_exist_and_each_says_what_the_reader_can_do() -> None:
    names = {p.name for p in PAGES}
    for page in ("operations.md", "reliability.md", "policy.md", "observability.md", "fleet.md", "debian.md", "configuration.md", "benchmarks.md"):
        assert page in names, page
    for page in PAGES[1:]:
        first_paragraph = page.read_text().split("\n\n")[1]
        assert first_paragraph.startswith("After this page you will be able to") or first_paragraph.startswith("After this page you will know"), page.name


def test_readme_is_a_front_page() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "./manage_dramatiq.sh setup" in text and "./manage_dramatiq.sh test" in text  # .ci/run runs the latter
    assert text.index("./manage_dramatiq.sh setup") < text.index("## A five-minute tour")
    assert "](docs/dashboard.png)" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text())
    targets = [a or b for a, b in LINK.findall(text)]
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: {broken}"


def shown_commands(page: Path) -> list[str]:
    """Commands in inline code, in sh code blocks, and on `$ ` prompt lines of output blocks (not the output)."""
    text = page.read_text()
    lines = SPAN.findall(FENCE.sub("", text))
    for fence in FENCE.finditer(text):
        body = fence.group(0).splitlines()
        shell = body[0].removeprefix("```").strip() in SHELL
        lines += [line for line in body[1:-1] if shell or line.startswith("$ ")]
    found = []
    for line in lines:
        found += [m.group(1).strip() for m in COMMAND.finditer(line)]
    return found


def check(shown: str) -> str | None:
    """Why the command as shown would not parse, or None."""
    words = shlex.split(shown.replace("[", " ").replace("]", " ").replace("…", " "))
    name, args = words[0], words[1:]
    command = main.commands.get(name)
    if command is None:
        return f"no command {name!r}"
    options: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in [*param.opts, *param.secondary_opts]:
                options[opt] = param
    for word in args:
        if word.startswith("-") and "<" not in word and not re.fullmatch(r"-\d+\w*", word):  # -2h, -10min are values; --<Tab> a keystroke
            opt = word.split("=", 1)[0]
            if opt not in options:
                return f"{name} has no option {opt!r} (it has {sorted(options)})"
    return None


def test_every_command_shown_exists_with_its_options() -> None:
    seen, wrong = 0, []
    for page in PAGES:
        for shown in shown_commands(page):
            seen += 1
            why = check(shown)
            if why:
                wrong.append(f"{page.name}: `dramactl {shown}`: {why}")
    assert seen > 40, seen  # the extraction finds the commands
    assert not wrong, "\n".join(wrong)


def test_the_command_check_catches_a_wrong_option_and_a_wrong_command() -> None:
    assert check("status --json") is None and check("history --since -10min") is None
    assert check("status --yaml") is not None
    assert check("scale-sideways 2") is not None
