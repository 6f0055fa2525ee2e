"""A headless browser for tests and benchmarks of the console: Debian's
chromium, driven by Playwright (never a Playwright browser download)."""

from __future__ import annotations

from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "launch_chromium"]

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium (``apt install chromium``; scripts/setup installs it)."""

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these, chromium's background connections are refused by a
    # closed network, many at a time
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def launch_chromium(playwright: Any) -> Any:
    """``playwright.chromium.launch`` of :data:`CHROMIUM`, headless, with
    :data:`CHROMIUM_ARGS`; ``playwright`` is what ``sync_playwright()`` yields."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
