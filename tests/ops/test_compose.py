"""docker-compose.yml: the services, images, commands and settings it gives wks are ones the
code accepts, its files exist, Redis runs with AOF, and the README agrees on ports."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.helpers import wait_for
from tests.ops import files
from tests.redis_servers import redis_binary
from wks.cli.__main__ import build_parser
from wks.config import Settings
from wks.redis import bundled_redis_server, free_port

SECRET = "s" * 64
CONFIG_SOURCE = (files.ROOT / "wks" / "config.py").read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    return files.load_compose({"JWT_SECRET": SECRET})


def wks_env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def test_services_and_images(compose: dict) -> None:
    """Redis, api, worker, prometheus and grafana are there; wks services build ops/Dockerfile
    and third-party images are pinned to a version."""
    services = compose["services"]
    assert {"redis", "api", "worker", "prometheus", "grafana"} <= set(services)
    for name in files.WKS_SERVICES:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "ops/Dockerfile"}
        assert service["image"].startswith("wks:")
        assert (files.ROOT / service["build"]["dockerfile"]).exists()
    for name in set(services) - set(files.WKS_SERVICES):
        image = services[name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, image
        assert tag not in ("", "latest"), f"{name}: pin the image version ({image})"


def test_worker_is_scalable(compose: dict) -> None:
    """The worker can run as N replicas: no fixed container name, no published host port."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_environment_names_are_read_by_the_settings(compose: dict) -> None:
    """Every variable given to a wks service is a name wks/config.py reads (WKS_* or seed)."""
    for name in files.WKS_SERVICES:
        for key in compose["services"][name]["environment"]:
            assert f'"{key}"' in CONFIG_SOURCE, f"{name}: {key} is not read by wks/config.py"


def test_seed_names_configure_the_services(compose: dict) -> None:
    """The compose environment, in the seed's names, loads into the intended settings."""
    settings = Settings.load(wks_env(compose["services"]["api"]), cwd=Path("/nonexistent"))
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.db_path == Path("/data/workstation.db")
    assert settings.backup_dir == Path("/data/backups")
    assert settings.host == "0.0.0.0"
    assert settings.port == 3000
    assert settings.jwt_secret == SECRET
    assert settings.auto_backup_enabled is True
    assert settings.auto_backup_interval == 86400.0
    assert settings.compression == "gzip"
    assert settings.rate_limit == (600, 60.0)
    assert settings.log_format == "json"
    for name in ("worker", "tool"):
        other = Settings.load(wks_env(compose["services"][name]), cwd=Path("/nonexistent"))
        assert other.db_path == settings.db_path
        assert other.redis_url == settings.redis_url


def test_operator_overrides_reach_the_settings() -> None:
    """Seed-named variables set by the operator flow through compose into the settings."""
    compose = files.load_compose({"JWT_SECRET": SECRET, "MAX_BACKUPS": "3",
                                  "AUTO_BACKUP_INTERVAL": "3600000", "LOG_LEVEL": "debug"})
    settings = Settings.load(wks_env(compose["services"]["worker"]), cwd=Path("/nonexistent"))
    assert (settings.max_backups, settings.auto_backup_interval, settings.log_level) == (
        3, 3600.0, "DEBUG")


def test_jwt_secret_is_required() -> None:
    """Compose refuses to start without JWT_SECRET instead of running with no secret."""
    with pytest.raises(KeyError, match="JWT_SECRET"):
        files.load_compose({})


def test_commands_parse_with_the_cli(compose: dict) -> None:
    """Each wks service's command is accepted by the `wks` parser after the image entrypoint."""
    parser = build_parser()
    entry = next(files.exec_form(a) for i, a in files.dockerfile_instructions()
                 if i == "ENTRYPOINT")
    assert entry == ["wks"]
    api = parser.parse_args(compose["services"]["api"]["command"])
    assert api.command == "api"
    worker = parser.parse_args(compose["services"]["worker"]["command"])
    assert worker.command == "worker"
    assert worker.group is None, "the worker service runs every group"
    assert worker.metrics_port == 9464
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(compose["services"]["tool"]["command"])  # --help
    assert exc.value.code == 0


def test_healthchecks_match_the_ports(compose: dict) -> None:
    """The worker's healthcheck asks its metrics port; the api relies on the image's /health."""
    worker = compose["services"]["worker"]
    port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/metrics" in " ".join(worker["healthcheck"]["test"])
    assert "healthcheck" not in compose["services"]["api"]


def test_mounted_files_and_volumes_exist(compose: dict) -> None:
    """Every bind-mounted path exists in the repository; named volumes are declared."""
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (files.ROOT / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
            assert target.startswith("/")
    for name in files.WKS_SERVICES:
        assert "wks-data:/data" in compose["services"][name]["volumes"]


def redis_binaries() -> list[Path]:
    """The redis-server the tests use, and the bundled 6.2 one when it is another binary."""
    found = [redis_binary()]
    bundled = bundled_redis_server()
    if bundled is not None and bundled.resolve() != found[0].resolve():
        found.append(bundled)
    return found


@pytest.mark.parametrize("binary", redis_binaries(), ids=lambda p: p.parent.name)
async def test_redis_config_runs_with_aof(compose: dict, binary: Path, tmp_path: Path) -> None:
    """ops/redis.conf starts a real redis-server (each version at hand) with AOF on and no
    eviction."""
    service = compose["services"]["redis"]
    conf_target = service["command"][-1]
    assert f"./ops/redis.conf:{conf_target}:ro" in service["volumes"]
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(binary), str(files.OPS / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    conn = aioredis.Redis(port=port, socket_timeout=5, decode_responses=True)

    async def answers() -> bool:
        assert proc.returncode is None, "redis-server refused ops/redis.conf"
        try:
            return bool(await conn.ping())
        except aioredis.ConnectionError:
            return False

    try:
        await wait_for(answers, timeout=10, what="redis-server with ops/redis.conf")
        assert await conn.config_get("appendonly") == {"appendonly": "yes"}
        assert await conn.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert await conn.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        await conn.set("k", "v")
        assert any(name.startswith("appendonly") for name in os.listdir(tmp_path))
    finally:
        await conn.aclose()
        proc.terminate()
        await proc.wait()


def test_readme_and_compose_agree_on_ports_and_settings(compose: dict) -> None:
    """The ports and settings the README's quick start and Operations section name are the
    ones compose publishes and the code defaults to."""
    readme = files.README.read_text()
    ops = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    published = {}
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            host, container = mapping.rsplit(":", 1)
            published[int(host)] = (name, int(container))
    assert published[3000] == ("api", Settings().port), "API: host 3000 -> container 3000"
    assert published[9090] == ("prometheus", 9090)
    assert published[3001][0] == "grafana"
    urls = {int(p) for p in re.findall(r"https?://localhost:(\d+)", readme)}
    assert urls, "the README names no localhost URL"
    assert urls <= set(published), f"README ports not published by compose: {urls - set(published)}"
    assert "docker compose up" in ops
    assert "JWT_SECRET" in ops
    assert "--scale worker=" in ops
    for variable in ("REDIS_URL", "DATABASE_PATH", "BACKUP_DIR"):
        assert variable in ops
        assert variable in compose["services"]["api"]["environment"]
    assert "docs/runbook.md" in ops


def compose_client() -> list[str] | None:
    """`docker compose` (v2) when installed, else the legacy `docker-compose`, else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_parses(tmp_path: Path) -> None:
    """A compose client parses and validates the file (`config` needs no engine)."""
    client = compose_client()
    if client is None:
        pytest.skip("no compose client here; the YAML checks above still ran")
    path = files.COMPOSE
    if client[0].endswith("docker-compose"):
        # the legacy client predates the top-level `name`; validate everything else
        path = tmp_path / "docker-compose.yml"
        path.write_text(COMPOSE_NAME.sub("", files.COMPOSE.read_text(), count=1))
    done = subprocess.run(
        [*client, "-f", str(path), "--project-directory", str(files.ROOT), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, cwd=files.ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JWT_SECRET": SECRET},
    )
    assert done.returncode == 0, done.stderr


COMPOSE_NAME = re.compile(r"^name: .*\n", re.M)
