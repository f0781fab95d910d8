"""Headless Chromium for the dashboard tests: Debian's `chromium`, driven by Playwright.

    chromium = require_chromium()                    # path, or skip (locally) / FAIL (CI=true)
    async with open_browser() as context:            # a fresh --user-data-dir each time
        page = await context.new_page()
        ...
        await screenshot(page, "fleet")              # tests/artifacts/<name>.png

The browser is never downloaded (`playwright install` is not used): Playwright drives the
system Chromium through `executable_path`.  When `/usr/bin/chromium` is missing and the test
runs as root, `require_chromium` installs the Debian package once (`apt-get install -y
chromium`, after `apt-get update` if the package is unknown).  A browser that is still missing,
or a missing `playwright` module, skips the test locally and fails it under CI=true.

Chromium runs with the flags fieldlink's tests always use: headless, no sandbox (tests run as
root in containers), no GPU, no QUIC, and none of the background traffic (component updates,
sync, first-run pages) — the dashboards must work with no internet at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["ARTIFACTS", "CHROMIUM", "FLAGS", "open_browser", "require_chromium", "screenshot"]

CHROMIUM = os.environ.get("FIELDLINK_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

_lock = threading.Lock()
_install_error: list[str] = []


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _apt_install() -> str | None:
    """Install Debian's chromium; None on success, else why not (once per process)."""
    if _install_error:
        return _install_error[0]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`"
        _install_error.append(why)
        return why
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        # the package lists may be stale or missing on a fresh machine
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not os.path.exists(CHROMIUM):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        why = f"`apt-get install -y chromium` failed:\n{tail}"
        _install_error.append(why)
        return why
    return None


def require_chromium() -> str:
    """The Chromium binary, installing it if needed; skips or fails the test otherwise."""
    with _lock:
        if not os.path.exists(CHROMIUM):
            why = _apt_install()
            if why is not None:
                _unavailable(why)
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    return CHROMIUM


@asynccontextmanager
async def open_browser(**context_options: Any) -> AsyncIterator[Any]:
    """A Playwright browser context of a new Chromium with a fresh profile directory.
    `context_options` go to `launch_persistent_context` (http_credentials, viewport...)."""
    from playwright.async_api import async_playwright

    executable = require_chromium()
    profile = tempfile.mkdtemp(prefix="fieldlink-chromium-")
    options = {"viewport": {"width": 1400, "height": 900}, **context_options}
    try:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=FLAGS, **options)
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as tests/artifacts/<name>.png (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
