"""Readers for the deployment files under test: compose interpolation, Dockerfile
instructions, PromQL metric references, Markdown anchors, Prometheus exposition text."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = OPS / "Dockerfile"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERTS_TEST = OPS / "prometheus" / "alerts_test.yml"
PROMETHEUS = OPS / "prometheus" / "prometheus.yml"
DASHBOARDS = OPS / "grafana" / "dashboards"
RUNBOOK = ROOT / "docs" / "runbook.md"
README = ROOT / "README.md"

# the compose services that run the wks image
WKS_SERVICES = ("api", "worker", "tool")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- compose -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` forms."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-", ":?") and value == "":
            value = None
        if value is not None:
            return value
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    # compose rejects `$(`, `$ ` and the like (outside comments) as invalid templates
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    bare = _VAR.sub(lambda m: m.group("arg") or "", code.replace("$$", ""))  # defaults too
    stray = re.search(r"\$(?![A-Za-z_]).{0,20}", bare)
    if stray:
        raise ValueError(f"invalid interpolation near {stray.group()!r}")
    return _VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def compose_vars(text: str) -> set[str]:
    """Names of the variables the compose file interpolates."""
    return {m.group("name") for m in _VAR.finditer(text)}


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


# -- Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        word, _, rest = logical.partition(" ")
        yield word.upper(), rest.strip()
        logical = ""


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; shell form is split like a shell would."""
    arguments = arguments.strip()
    if arguments.startswith("["):
        value = json.loads(arguments)
        assert isinstance(value, list)
        assert all(isinstance(v, str) for v in value)
        return value
    return shlex.split(arguments)


def healthcheck_command(arguments: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD ...`."""
    options, sep, command = arguments.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {arguments}"
    assert all(o.startswith("--") for o in options.split()), options
    return exec_form(command)


# -- PromQL --------------------------------------------------------------------------------

_IDENT = re.compile(r"(?<![A-Za-z0-9_:\"'$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')


def metric_refs(expr: str) -> dict[str, set[str]]:
    """Metric names an expression selects (`wks_*` and `up`) -> label names it matches on."""
    refs: dict[str, set[str]] = {}
    for m in _IDENT.finditer(expr):
        name, selector = m.group(1), m.group(2)
        if not (name.startswith("wks_") or name == "up"):
            continue
        labels = refs.setdefault(name, set())
        if selector:
            labels.update(lm.group(1) for lm in _LABEL.finditer(_STRING.sub('""', selector)))
    return refs


def grouping_labels(expr: str) -> set[str]:
    """Label names named in by/without/on/ignoring/group_* clauses."""
    out: set[str] = set()
    for m in _GROUPING.finditer(expr):
        out.update(part.strip() for part in m.group(1).split(",") if part.strip())
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]
            if "alert" in rule]


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every Prometheus query of every dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((path.name, panel.get("title", ""), target["expr"]))
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's interval variables so promtool can parse the query."""
    for var in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(var, "5m")
    return expr


# -- Markdown ------------------------------------------------------------------------------


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings: lowercase, punctuation dropped, spaces to '-'."""
    out = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        out.add(slug)
    return out


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text."""
    return re.findall(r"```[a-z]*\n(.*?)```", markdown, flags=re.S)


# -- Prometheus exposition -----------------------------------------------------------------


def exposed(text: str) -> dict[str, set[str]]:
    """Names a scrape of this text can select -> label names seen on their samples.

    A declared family counts even with no sample yet (a labelled metric before its first
    use): counters select as NAME_total, histograms as NAME_bucket/_sum/_count.
    """
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"histogram": ("_bucket", "_sum", "_count"),
                        "summary": ("", "_sum", "_count")}.get(kind.strip(), ("",))
            for suffix in suffixes:
                names.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            sample = line.split(" ", 1)[0]
            name, _, labels = sample.partition("{")
            found = names.setdefault(name, set())
            found.update(lm.group(1) for lm in _LABEL.finditer(_STRING.sub('""', labels)))
    return names
