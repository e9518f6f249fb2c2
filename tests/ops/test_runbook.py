"""docs/runbook.md and the README's Operations section: the commands they give are ones the
`wks` parser accepts and name compose services that exist, and the sections the alerts and
operators need are there."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.ops import files
from wks.cli.__main__ import build_parser

# compose options that take a value
VALUED = {"--tail", "--entrypoint", "--name", "--scale", "-f", "--file", "-e", "--env", "-u",
          "--user", "-w", "--workdir"}
# the placeholders the docs use, with values of the right type
PLACEHOLDERS = {"BACKUP_ID": "7", "EXECUTION_ID": "exec-1", "DEAD_ENTRY_ID": "1700000000000-0"}
SECTIONS = ("operating", "scaling-consumers", "redis-outage", "dead-letters", "backup-failure",
            "restore", "standard-restore", "emergency-restore")


def command_lines(markdown: str) -> list[str]:
    """Shell lines of the fenced blocks, with `$( ... )` bodies as lines of their own."""
    lines = []
    for block in files.code_blocks(markdown):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split("  #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            lines.extend(re.findall(r"\$\(([^)]*)\)", line))
            lines.append(re.sub(r"\$\([^)]*\)", "X", line))
    return [segment.strip() for line in lines for segment in line.split("|")]


def compose_calls(lines: list[str]) -> list[list[str]]:
    """Argument lists after `docker compose` (and the `wksc` alias, which is `run --rm tool`)."""
    calls = []
    for line in lines:
        if not line.startswith(("docker compose", "wksc")):
            continue
        words = shlex.split(line)
        if words[:2] == ["docker", "compose"]:
            calls.append(words[2:])
        elif words and words[0] == "wksc":
            calls.append(["run", "--rm", "tool", *words[1:]])
    return calls


def split_call(args: list[str]) -> tuple[str, list[str], list[str]]:
    """(compose subcommand, service names, the rest after the service for run/exec)."""
    sub, rest = args[0], args[1:]
    positional: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if sub in ("run", "exec") and positional:
            return sub, positional, rest[i:]
        if word in VALUED:
            i += 2
            continue
        if not word.startswith("-"):
            positional.append(word)
        i += 1
    return sub, positional, []


DOCS = {"runbook": files.RUNBOOK, "readme": files.README}


@pytest.mark.parametrize("doc", DOCS)
def test_wks_commands_parse(doc: str) -> None:
    """Every `wks` command run through the compose tool service is accepted by the CLI."""
    text = DOCS[doc].read_text()
    if doc == "readme":
        text = text.split("## Operations", 1)[1].split("\n## ", 1)[0]
    parser = build_parser()
    checked = 0
    for call in compose_calls(command_lines(text)):
        sub, services, rest = split_call(call)
        if sub == "run" and services == ["tool"] and "--entrypoint" not in call:
            args = parser.parse_args([PLACEHOLDERS.get(word, word) for word in rest])
            assert callable(args.func), call
            checked += 1
    assert checked >= (10 if doc == "runbook" else 1)


@pytest.mark.parametrize("doc", DOCS)
def test_compose_commands_name_existing_services(doc: str) -> None:
    """Every service a `docker compose` command names is defined in docker-compose.yml."""
    defined = set(files.load_compose({"JWT_SECRET": "x" * 64})["services"])
    calls = compose_calls(command_lines(DOCS[doc].read_text()))
    assert calls
    for call in calls:
        sub, services, _ = split_call(call)
        if sub in ("config", "version", "build", "down", "pull"):
            continue
        named = services[:1] if sub in ("run", "exec") else services
        for service in named:
            assert service.split("=")[0] in defined, f"{call}: no service {service}"


def test_the_parser_check_can_fail() -> None:
    """A misspelt subcommand in a runbook line is rejected by the parser."""
    call = compose_calls(command_lines("```sh\ndocker compose run --rm tool bakup list\n```"))
    _, _, rest = split_call(call[0])
    with pytest.raises(SystemExit):
        build_parser().parse_args(rest)


def test_runbook_has_the_operator_sections() -> None:
    """Operating, scaling, Redis outage, dead letters, backup failure and both restores are
    sections, and the restore details link to docs/restore.md."""
    text = files.RUNBOOK.read_text()
    have = files.anchors(text)
    assert set(SECTIONS) <= have, set(SECTIONS) - have
    assert "(restore.md)" in text
    assert "(docs/runbook.md)" in files.README.read_text()


def test_links_between_the_docs_resolve() -> None:
    """Every link from the runbook to a section of itself or of restore.md names a heading."""
    text = files.RUNBOOK.read_text()
    targets = {"": files.RUNBOOK, "restore.md": files.RUNBOOK.parent / "restore.md"}
    links = re.findall(r"\]\((restore\.md|)#([\w-]+)\)", text)
    assert links
    for page, anchor in links:
        assert targets[page].exists(), page
        assert anchor in files.anchors(targets[page].read_text()), f"{page}#{anchor}"
