"""The documentation's `cosmicai ...` commands exist: each command, subcommand and flag a
Markdown file names (inline code, fenced blocks, the README's command table) is one the real
argparse parser (cosmicai.cli.main.build_parser) accepts, so a renamed command or flag fails here
instead of in a user's shell.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from cosmicai.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
INLINE = re.compile(r"`((?:\.venv/bin/)?cosmicai [^`]+)`")
# Shell code: fenced blocks marked as such, and indented (4 spaces) code blocks' lines.
FENCED = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
INDENTED = re.compile(r"^(?: {4}|\t)((?:\.venv/bin/)?cosmicai .*)$", re.M)


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [ROOT / name for name in listed.stdout.split()]


def documented_commands(text: str) -> list[str]:
    """Every `cosmicai ...` command in a Markdown text; `a / b` table cells give one each."""
    found = [" ".join(span.split()) for span in INLINE.findall(text)]
    for block in FENCED.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            if re.match(r"\s*(\.venv/bin/)?cosmicai ", line):
                found.append(" ".join(line.split()))
    found += [" ".join(line.split()) for line in INDENTED.findall(text)]
    commands = []
    for command in found:
        first, *others = command.split(" / ")
        if all(len(other.split()) == 1 for other in others):
            commands += [first] + [first.rsplit(" ", 1)[0] + " " + other for other in others]
        else:
            commands.append(command)
    return commands


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def problems(command: str, parser: argparse.ArgumentParser) -> list[str]:
    """What in `command` the parser does not know: a (sub)command or an option flag."""
    words = re.sub(r"[\[\]]", " ", command).split()[1:]
    found = []
    while (choices := subparsers(parser)) and words and not words[0].startswith("-"):
        if words[0] not in choices.choices:
            return [f"no command {words[0]!r} (known: {', '.join(choices.choices)})"]
        parser = choices.choices[words.pop(0)]
    if choices and not words:
        return []  # a command group named on its own, as in "cosmicai bench"
    if choices:
        found.append(f"{parser.prog} needs a subcommand before {words[0]!r}")
    for word in words:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in parser._option_string_actions:
            found.append(f"{parser.prog} has no option {flag}")
    return found


def test_the_readme_names_the_commands_it_documents() -> None:
    """The extraction is not vacuous: the main README's command table yields its commands."""
    commands = set(documented_commands((ROOT / "README.md").read_text()))
    table = {f"cosmicai {c}" for c in ("status", "compare", "bench cost", "rendezvous check")}
    assert table <= commands, table - commands


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_and_flag_exists(path: Path) -> None:
    parser, unavailable = build_parser()
    assert not unavailable, f"the dev environment lacks packages for {sorted(unavailable)}"
    wrong = {
        command: found
        for command in documented_commands(path.read_text())
        if (found := problems(command, parser))
    }
    assert not wrong, f"{path.relative_to(ROOT)} documents what the CLI lacks: {wrong}"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("cosmicai frobnicate RUN_ID", "no command 'frobnicate'"),
        ("cosmicai run payload.json --no-such-flag", "has no option --no-such-flag"),
        ("cosmicai bench nothing", "no command 'nothing'"),
        ("cosmicai bench --json", "needs a subcommand"),
    ],
)
def test_the_check_rejects_commands_the_cli_lacks(command: str, says: str) -> None:
    found = problems(command, build_parser()[0])
    assert found and says in found[0], found
