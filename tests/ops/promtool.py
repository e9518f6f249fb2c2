"""Find `promtool` for the Prometheus checks, fetching it from Debian's package when needed.

Order: `$PROMTOOL` (a path), `promtool` on PATH, a copy cached by an earlier run, then
Debian's `prometheus` package through apt: `apt-get download` plus `dpkg-deb` extract only
the promtool binary into the cache. Installing the package itself is avoided on purpose: its
maintainer scripts would try to start a Prometheus server. When none of that works the caller
fails the test with the reason (never a skip: these checks are part of the contract).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "prometheus"


class PromtoolMissing(RuntimeError):
    """No promtool could be found or fetched; the message says what was tried."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wks-tests" / "promtool"


def _runs(path: Path | str) -> bool:
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _apt(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", "-q", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _fetch_from_debian(target: Path) -> str:
    """Extract promtool from the `prometheus` .deb into `target`; '' or why it failed."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return "apt-get/dpkg-deb not available"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        done = _apt(["download", PACKAGE], work)
        if done.returncode != 0 and os.geteuid() == 0:
            # a fresh machine has empty package lists: refresh them once and retry
            _apt(["update"], work)
            done = _apt(["download", PACKAGE], work)
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if done.returncode != 0 or not debs:
            return f"`apt-get download {PACKAGE}` failed: {done.stderr.strip()[-300:]}"
        tar = subprocess.run(
            f"dpkg-deb --fsys-tarfile '{debs[0]}' | tar -x -C '{work}' ./usr/bin/promtool",
            shell=True, capture_output=True, text=True, timeout=120,
        )
        binary = work / "usr" / "bin" / "promtool"
        if tar.returncode != 0 or not binary.exists():
            return f"extracting promtool from {debs[0].name} failed: {tar.stderr.strip()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(binary, partial)
        partial.replace(target)  # atomic: a concurrent run never sees half a binary
    return ""


def find_promtool() -> str:
    """Path to a working promtool, or raise PromtoolMissing saying what was tried."""
    tried: list[str] = []
    named = os.environ.get("PROMTOOL")
    if named:
        if _runs(named):
            return named
        tried.append(f"$PROMTOOL={named} does not run")
    on_path = shutil.which("promtool")
    if on_path and _runs(on_path):
        return on_path
    tried.append("no promtool on PATH")
    cached = cache_dir() / "promtool"
    if cached.exists() and _runs(cached):
        return str(cached)
    why = _fetch_from_debian(cached)
    if not why and _runs(cached):
        return str(cached)
    tried.append(why or f"{cached} does not run")
    raise PromtoolMissing(
        "promtool is required for the Prometheus checks and none could be had: "
        + "; ".join(tried)
        + ". Install Debian's `prometheus` package (or any Prometheus release) so that "
        "promtool is on PATH, or set PROMTOOL=/path/to/promtool."
    )
