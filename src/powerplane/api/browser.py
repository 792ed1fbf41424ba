"""The cockpit in a headless browser: Debian's chromium driven by Playwright (a dev dependency), as the browser
tests and the cockpit benchmark launch it. Browser downloads are not available: the binary is the system's."""

from __future__ import annotations

import os
from typing import Any

# POWERPLANE_CHROMIUM names another chromium binary
CHROMIUM = os.environ.get("POWERPLANE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def launch_chromium(playwright: Any, executable: str = CHROMIUM) -> Any:
    """A headless chromium (a Playwright ``Browser``) from a started ``sync_playwright()``, with no sandbox, GPU,
    background networking or updates: the same for every test and benchmark run."""
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
