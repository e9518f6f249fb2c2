"""Backup files: snapshot, compress, checksum, publish atomically, verify (SPEC section 7).

Blocking functions (run them in a thread). A snapshot is SQLite's online backup API in one
step (`pages=-1`): it copies a consistent read transaction while writers keep committing,
where a stepped backup would restart on every foreign write. The copy is switched to
rollback-journal mode so the file stands alone (no `-wal` beside it).

A file appears under its final name only whole: written to a temp file in the backup
directory (0600), fsynced, hard-linked to the final name (which never replaces an existing
file), the temp removed, the directory fsynced. Only the server generates names. Errors name
files by base name only: their messages reach backup_log and the API.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import zstandard

from wks.errors import BackupError, StoreError

SUFFIXES = {"none": ".db", "gzip": ".db.gz", "zstd": ".db.zst"}
NAME_RE = re.compile(
    r"^workstation-backup-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:-\d+)?\.db(?:\.gz|\.zst)?$"
)
TEMP_PREFIX = ".wks-backup-"  # swept under the backup lock
VERIFY_PREFIX = ".wks-verify-"  # private to one verify; swept when old
_CHUNK = 1 << 20


def reason(exc: BaseException) -> str:
    """`exc` as text naming files by base name only: backup messages are stored in backup_log
    and served by the API, which shows no server path (SPEC section 8)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        names = [Path(os.fsdecode(f)).name if isinstance(f, str | bytes) else str(f)
                 for f in (exc.filename, exc.filename2) if f is not None]
        return f"{exc.strerror or type(exc).__name__}: {' -> '.join(names)}"
    if isinstance(exc, StoreError):
        return str(exc).replace(exc.path, Path(exc.path).name)
    return str(exc)


def ensure_dir(path: Path) -> Path:
    """Create the backup directory (0700) if needed and tighten its mode."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(directory: Path, prefix: str = TEMP_PREFIX) -> Path:
    return directory / f"{prefix}{uuid.uuid4().hex}.tmp"


def compression_of(path: Path | str) -> str:
    name = str(path)
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst"):
        return "zstd"
    return "none"


def is_backup_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%S")


def snapshot(db_path: Path, dest: Path) -> None:
    """Copy the live database into `dest` with the online backup API, in one step."""
    try:
        src = sqlite3.connect(db_path, timeout=30)
    except sqlite3.Error as exc:
        raise BackupError("open database", db_path.name, str(exc)) from exc
    try:
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # pages=-1: one step, never restarted by concurrent writers
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError("snapshot", db_path.name, str(exc)) from exc
    finally:
        src.close()


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) in one streaming pass."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish(snap: Path, compression: str) -> tuple[Path, str, int]:
    """Compress `snap` (or keep it), hash the final bytes in one pass, fsync: (path, sha, size).

    The returned path is a temp file in the same directory, ready for `publish`.
    """
    if compression == "none":
        digest, size = sha256_file(snap)
        _fsync_file(snap)
        return snap, digest, size
    out = temp_path(snap.parent)
    fd = os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, snap.open("rb") as src:
            writer = _HashingWriter(raw)
            if compression == "gzip":
                with gzip.GzipFile(fileobj=writer, mode="wb", mtime=0) as gz:  # type: ignore[arg-type]
                    while chunk := src.read(_CHUNK):
                        gz.write(chunk)
            elif compression == "zstd":
                cctx = zstandard.ZstdCompressor(level=3)
                with cctx.stream_writer(writer, closefd=False) as zw:  # type: ignore[arg-type]
                    while chunk := src.read(_CHUNK):
                        zw.write(chunk)
            else:
                raise BackupError("compress", snap.name, f"unknown compression {compression!r}")
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise
    snap.unlink()
    return out, writer.sha.hexdigest(), writer.size


def free_name(directory: Path, when: datetime, compression: str) -> Path:
    """The final name a new backup will get (recorded in its row before it exists)."""
    base = f"workstation-backup-{_stamp(when)}"
    suffix = SUFFIXES[compression]
    for n in range(0, 10_000):
        final = directory / (f"{base}{suffix}" if n == 0 else f"{base}-{n}{suffix}")
        if not final.exists():
            return final
    raise BackupError("publish", directory.name, "no free file name")


def publish(tmp: Path, final: Path) -> Path:
    """Give the finished temp file its final name (never replacing a file), fsync the dir."""
    try:
        os.link(tmp, final)  # atomic, and fails instead of overwriting
    except FileExistsError:
        raise BackupError("publish", final.name, "a file of that name appeared") from None
    tmp.unlink()
    fsync_dir(final.parent)
    return final


def decompress(path: Path, dest: Path) -> None:
    """Write the plain database of backup `path` to `dest` (0600, fsynced)."""
    kind = compression_of(path)
    fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as out, path.open("rb") as src:
        if kind == "gzip":
            with gzip.GzipFile(fileobj=src, mode="rb") as gz:
                while chunk := gz.read(_CHUNK):
                    out.write(chunk)
        elif kind == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(src) as zr:
                while chunk := zr.read(_CHUNK):
                    out.write(chunk)
        else:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def integrity(db: Path) -> str:
    """`PRAGMA integrity_check` of a database opened read-only and immutable ('ok' if sound)."""
    conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro&immutable=1", uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows[:5])


@dataclass
class Verdict:
    """The outcome of verifying one backup file."""

    valid: bool
    message: str
    checks: dict[str, bool] = field(default_factory=dict)


def verify(
    path: Path, checksum: str | None, scratch: Path, prefix: str = VERIFY_PREFIX
) -> Verdict:
    """Exists, SHA-256 matches (before anything opens it), decompresses, opens read-only,
    integrity_check ok. Never writes to `path`; scratch files go to `scratch` and are removed
    (a backup run passes TEMP_PREFIX, so a killed run's scratch is swept under the lock).
    """
    checks = {"exists": False, "checksum": False, "opens": False, "integrity": False}
    if not path.is_file():
        return Verdict(False, "backup file is missing", checks)
    checks["exists"] = True
    digest, _size = sha256_file(path)
    if not checksum or digest != checksum:
        return Verdict(False, "checksum mismatch: the file changed since it was written", checks)
    checks["checksum"] = True
    plain = path
    tmp: Path | None = None
    try:
        if compression_of(path) != "none":
            tmp = temp_path(scratch, prefix)
            try:
                decompress(path, tmp)
            except (OSError, EOFError, zstandard.ZstdError) as exc:
                return Verdict(False, f"cannot decompress: {reason(exc)}", checks)
            plain = tmp
        try:
            result = integrity(plain)
        except sqlite3.Error as exc:
            return Verdict(False, f"does not open as a database: {exc}", checks)
        checks["opens"] = True
        if result != "ok":
            return Verdict(False, f"integrity_check failed: {result}", checks)
        checks["integrity"] = True
        return Verdict(True, "backup is valid", checks)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def sweep_temps(directory: Path, *, verify_older_than: float = 3600.0) -> int:
    """Remove leftover temp files of interrupted backups (call only under the backup lock)."""
    removed = 0
    if not directory.is_dir():
        return 0
    now = time.time()
    for entry in directory.iterdir():
        name = entry.name
        stale_verify = name.startswith(VERIFY_PREFIX) and (
            now - entry.stat().st_mtime > verify_older_than
        )
        # TEMP_PREFIX names include SQLite's own side files (`.tmp-journal`)
        if name.startswith(TEMP_PREFIX) or stale_verify:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
    return removed


def remove_named(directory: Path, names: set[str]) -> list[str]:
    """Delete the backup-named files among `names` that exist in `directory`; their names.

    Only names that interrupted runs recorded are passed here: a file an operator put in
    backupDir by hand is never touched."""
    removed: list[str] = []
    for name in sorted(names):
        if is_backup_name(name):
            with contextlib.suppress(OSError):
                (directory / name).unlink()
                removed.append(name)
    return removed


def remove_files(paths: list[Path], directory: Path) -> None:
    """Unlink rotated files (missing ones are fine), then fsync the directory."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
    fsync_dir(directory)


def utcnow() -> datetime:
    return datetime.now(UTC)
