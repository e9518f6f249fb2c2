"""ops/Dockerfile: a slim non-root image whose entrypoint, command, settings and healthcheck
are the ones the code accepts; the healthcheck is run against live servers."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path

import pytest
from aiohttp import web

from tests.ops import files
from wks.cli.__main__ import build_parser
from wks.config import Settings
from wks.redis import free_port

CONFIG_SOURCE = (files.ROOT / "wks" / "config.py").read_text()


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return list(files.dockerfile_instructions())


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:]


def image_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage(instructions):
        if word == "ENV":
            for item in files.exec_form(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def only(instructions: list[tuple[str, str]], word: str) -> str:
    found = [args for w, args in final_stage(instructions) if w == word]
    assert len(found) == 1, f"expected one {word} in the final stage, found {found}"
    return found[0]


def test_slim_python_base_matching_the_project(instructions: list[tuple[str, str]]) -> None:
    """Every stage builds from a slim Python image of the version the project requires."""
    project = tomllib.loads((files.ROOT / "pyproject.toml").read_text())["project"]
    minimum = project["requires-python"].removeprefix(">=")
    bases = [args.split()[0] for word, args in instructions if word == "FROM"]
    assert bases
    for base in bases:
        assert base.startswith(f"python:{minimum}-slim"), base


def test_installs_the_project_with_pip(instructions: list[tuple[str, str]]) -> None:
    """The build copies the packages and pyproject, installs with `pip install .`, and the
    build context (.dockerignore) keeps what the build copies."""
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "pip install ." in runs
    # COPY SRC... DEST: every word but the last is a path of the build context
    copied = [files.exec_form(args)[:-1] for word, args in instructions
              if word == "COPY" and not args.startswith("--from")]
    ignored = {line.strip() for line in (files.ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    readme = tomllib.loads((files.ROOT / "pyproject.toml").read_text())["project"]["readme"]
    names = {name for sources in copied for name in sources}
    for needed in ("wks", "consumers", "producers", "pyproject.toml", readme):
        assert needed in names, f"the build does not copy {needed}"
    for name in names:
        assert (files.ROOT / name).exists(), name
        assert name not in ignored, f"{name} is copied but excluded by .dockerignore"


def test_runs_as_a_non_root_user(instructions: list[tuple[str, str]]) -> None:
    """The final stage switches to a named non-root user."""
    users = [args for word, args in final_stage(instructions) if word == "USER"]
    assert users
    assert users[-1] not in ("root", "0")


def test_data_volume_and_settings(instructions: list[tuple[str, str]]) -> None:
    """/data is a volume holding the database and backups; the image's settings are read by the
    code, listen on every interface, and a deployment's seed-named variables still win."""
    assert files.exec_form(only(instructions, "VOLUME")) == ["/data"]
    env = image_env(instructions)
    for key in env:
        if key.startswith(("WKS_", "DATABASE_", "BACKUP_")):
            assert f'"{key}"' in CONFIG_SOURCE, key
    settings = Settings.load(env, cwd=Path("/nonexistent"))
    assert settings.host == "0.0.0.0"
    assert settings.db_path == Path("/data/workstation.db")
    assert settings.backup_dir == Path("/data/backups")
    overridden = Settings.load({**env, "DATABASE_PATH": "/srv/seed.db", "BACKUP_DIR": "/b"},
                               cwd=Path("/nonexistent"))
    assert overridden.db_path == Path("/srv/seed.db")
    assert overridden.backup_dir == Path("/b")
    exposed = {int(p) for p in only(instructions, "EXPOSE").split()}
    assert settings.port in exposed
    assert 9464 in exposed


def test_entrypoint_and_command_parse_with_the_cli(instructions: list[tuple[str, str]]) -> None:
    """ENTRYPOINT is the `wks` console script and CMD a command its parser accepts."""
    entry = files.exec_form(only(instructions, "ENTRYPOINT"))
    scripts = tomllib.loads((files.ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["wks"]
    assert "wks" in scripts
    args = build_parser().parse_args(files.exec_form(only(instructions, "CMD")))
    assert args.command == "api"
    assert callable(args.func)


async def run_healthcheck(instructions: list[tuple[str, str]], env: dict[str, str]) -> int:
    command = files.healthcheck_command(only(instructions, "HEALTHCHECK"))
    assert command[0] == "python", "slim has no curl: the check must use python"
    env = {**image_env(instructions), **env, "PATH": "/usr/bin:/bin"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), timeout=60)


async def test_healthcheck_follows_the_health_status(
    instructions: list[tuple[str, str]], aiohttp_server
) -> None:
    """The HEALTHCHECK command exits 0 on 200 from /health at the configured PORT, non-zero on
    503 (unhealthy) and when nothing listens."""
    status = {"code": 200}
    seen: list[str] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"status": "x"}, status=status["code"])

    app = web.Application()
    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    assert await run_healthcheck(instructions, {"PORT": str(server.port)}) == 0
    assert seen == ["/health"]
    status["code"] = 503
    assert await run_healthcheck(instructions, {"PORT": str(server.port)}) != 0
    assert await run_healthcheck(instructions, {"PORT": str(free_port())}) != 0


async def test_healthcheck_against_the_real_api(
    instructions: list[tuple[str, str]], aiohttp_server, settings: Settings, r
) -> None:
    """The HEALTHCHECK passes against the real API application's /health."""
    from wks.http.app import create_app

    server = await aiohttp_server(create_app(settings, r))
    assert await run_healthcheck(instructions, {"WKS_PORT": str(server.port)}) == 0
