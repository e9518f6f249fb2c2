"""Settings: WKS_* names, the seed's names, wks.toml, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from wks.config import Settings, parse_duration
from wks.errors import ConfigError


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings.load(env, cwd=tmp_path)


class TestDefaults:
    def test_defaults_match_the_contract(self, tmp_path: Path) -> None:
        """With nothing set, every default is the one SPEC section 10 lists."""
        s = load(tmp_path)
        assert (s.prefix, s.port, s.host, s.max_backups, s.compression) == (
            "wks", 3000, "127.0.0.1", 10, "none")
        assert s.db_path == Path("var/workstation.db")
        assert s.backup_dir == Path("var/backups")
        assert (s.stale_after, s.state_ttl, s.lock_ttl, s.claim_idle) == (3600, 3600, 300, 60)
        assert (s.max_deliveries, s.stream_retention, s.shutdown_grace) == (5, 7 * 86400, 10)
        assert s.rate_limit == (600, 60.0)
        assert s.auto_backup_enabled is False
        assert s.auto_backup_interval == 86400
        assert s.redis_url is None
        assert s.effective_redis_url() == "redis://localhost:6379/0"


class TestSources:
    def test_wks_names_win_over_seed_names(self, tmp_path: Path) -> None:
        """WKS_DB_PATH beats DATABASE_PATH; the seed name works alone."""
        assert load(tmp_path, DATABASE_PATH="/a.db").db_path == Path("/a.db")
        assert load(tmp_path, DATABASE_PATH="/a.db", WKS_DB_PATH="/b.db").db_path == Path("/b.db")

    def test_seed_redis_host_port_password_db(self, tmp_path: Path) -> None:
        """REDIS_HOST/PORT/PASSWORD/DB build a URL, password quoted."""
        s = load(tmp_path, REDIS_HOST="cache", REDIS_PORT="6380", REDIS_PASSWORD="p@ss/",
                 REDIS_DB="2")
        assert s.redis_url == "redis://:p%40ss%2F@cache:6380/2"

    def test_any_seed_redis_name_alone_configures_redis(self, tmp_path: Path) -> None:
        """REDIS_PORT, REDIS_DB or REDIS_PASSWORD without REDIS_HOST mean localhost with
        that port, db or password, not the default server; a bad one stops start-up."""
        assert load(tmp_path, REDIS_PORT="16391").redis_url == "redis://localhost:16391/0"
        assert load(tmp_path, REDIS_DB="3").redis_url == "redis://localhost:6379/3"
        assert load(tmp_path, REDIS_PASSWORD="pw").redis_url == "redis://:pw@localhost:6379/0"
        assert load(tmp_path, REDIS_HOST="::1").redis_url == "redis://[::1]:6379/0"
        with pytest.raises(ConfigError, match="REDIS_PORT"):
            load(tmp_path, REDIS_PORT="abc")
        with pytest.raises(ConfigError, match="REDIS_DB"):
            load(tmp_path, REDIS_DB="x")

    def test_seed_backup_interval_is_milliseconds(self, tmp_path: Path) -> None:
        """AUTO_BACKUP_INTERVAL is in ms as in the seed; WKS_ takes a duration."""
        assert load(tmp_path, AUTO_BACKUP_INTERVAL="5000").auto_backup_interval == 5.0
        assert load(tmp_path, WKS_AUTO_BACKUP_INTERVAL="5m").auto_backup_interval == 300.0

    def test_seed_rate_limit_names(self, tmp_path: Path) -> None:
        """RATE_LIMIT_MAX_REQUESTS / RATE_LIMIT_WINDOW_MS map to rateLimit."""
        s = load(tmp_path, RATE_LIMIT_MAX_REQUESTS="100", RATE_LIMIT_WINDOW_MS="1000")
        assert s.rate_limit == (100, 1.0)
        assert load(tmp_path, WKS_RATE_LIMIT="5/2s").rate_limit == (5, 2.0)

    def test_toml_file_is_read_and_env_wins(self, tmp_path: Path) -> None:
        """./wks.toml provides settings under their names; the environment overrides it."""
        (tmp_path / "wks.toml").write_text('maxBackups = 3\nclaimIdle = "250ms"\n'
                                           'redisUrl = "redis://h:1/0"\n')
        s = load(tmp_path)
        assert (s.max_backups, s.claim_idle, s.redis_url) == (3, 0.25, "redis://h:1/0")
        assert load(tmp_path, WKS_MAX_BACKUPS="7").max_backups == 7

    def test_var_redis_url_file_is_used_when_no_url_is_set(self, tmp_path: Path) -> None:
        """`wks up` writes ./var/redis.url; other commands then connect there."""
        (tmp_path / "var").mkdir()
        (tmp_path / "var" / "redis.url").write_text("redis://127.0.0.1:7001/0\n")
        s = load(tmp_path)
        assert (s.redis_url, s.redis_url_source) == ("redis://127.0.0.1:7001/0", "file")
        assert load(tmp_path, WKS_REDIS_URL="redis://x:1/0").redis_url_source == "env"


class TestErrors:
    @pytest.mark.parametrize(
        ("env", "named"),
        [
            ({"WKS_PORT": "http"}, "WKS_PORT"),
            ({"PORT": "70000"}, "PORT"),
            ({"WKS_CLAIM_IDLE": "soon"}, "WKS_CLAIM_IDLE"),
            ({"WKS_MAX_BACKUPS": "0"}, "WKS_MAX_BACKUPS"),
            ({"WKS_BACKUP_COMPRESSION": "rar"}, "WKS_BACKUP_COMPRESSION"),
            ({"WKS_AUTO_BACKUP_ENABLED": "maybe"}, "WKS_AUTO_BACKUP_ENABLED"),
            ({"WKS_JWT_SECRET": "short"}, "WKS_JWT_SECRET"),
            ({"WKS_REDIS_URL": "http://x"}, "WKS_REDIS_URL"),
            ({"WKS_RATE_LIMIT": "600"}, "WKS_RATE_LIMIT"),
            ({"WKS_PREFIX": "has space"}, "WKS_PREFIX"),
            ({"AUTO_BACKUP_INTERVAL": "-5"}, "AUTO_BACKUP_INTERVAL"),
            ({"JWT_SECRET": "short"}, "JWT_SECRET"),  # the seed's name, as given
            ({"WKS_AUTO_BACKUP_INTERVAL": "250ms"}, "WKS_AUTO_BACKUP_INTERVAL"),  # < 1s
            ({"AUTO_BACKUP_INTERVAL": "500"}, "AUTO_BACKUP_INTERVAL"),  # ms: < 1s
        ],
    )
    def test_bad_setting_is_one_line_naming_it(
        self, tmp_path: Path, env: dict[str, str], named: str
    ) -> None:
        """A bad value raises ConfigError whose single line starts with the setting's name."""
        with pytest.raises(ConfigError) as info:
            load(tmp_path, **env)
        message = str(info.value)
        assert message.startswith(named + ":")
        assert "\n" not in message

    def test_toml_settings_are_checked_like_the_others(self, tmp_path: Path) -> None:
        """An unknown key (a typo) stops start-up naming it and its likely spelling; the
        interval's range is the API's (1s to 366d), so a day written in ms is refused."""
        (tmp_path / "wks.toml").write_text("maxBackup = 5\n")
        with pytest.raises(ConfigError, match=r"unknown setting 'maxBackup'.*'maxBackups'"):
            load(tmp_path)
        (tmp_path / "wks.toml").write_text("autoBackupInterval = 86400000\n")
        with pytest.raises(ConfigError, match=r"^wks\.toml autoBackupInterval: .*366d"):
            load(tmp_path)
        (tmp_path / "wks.toml").write_text("[wks]\nautoBackupInterval = '86400000ms'\n")
        assert load(tmp_path).auto_backup_interval == 86400

    def test_bad_toml_is_reported(self, tmp_path: Path) -> None:
        """A broken wks.toml stops start-up with a message naming the file."""
        (tmp_path / "wks.toml").write_text("maxBackups = = 3")
        with pytest.raises(ConfigError, match=r"wks\.toml"):
            load(tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2), ("5m", 300), ("1h", 3600), ("7d", 604800), ("90", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations take a unit or a bare number of seconds."""
    assert parse_duration(text) == seconds
