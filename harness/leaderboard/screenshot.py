"""Open the leaderboard page in headless Chromium (Debian's, never a downloaded build) and screenshot it.

``python -m harness.leaderboard.screenshot SITE/index.html OUT.png`` refreshes the picture committed
beside the page; the browser tests launch Chromium the same way. The profile is a fresh temporary
directory and every background service that could reach a network is off.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
VIEWPORT = {"width": 1360, "height": 1000}


def missing() -> str | None:
    """Why a browser cannot be driven here, or None when it can."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


def launch(playwright, profile_dir: str | Path):
    """A persistent Chromium context on a fresh profile (playwright takes the profile as an argument)."""
    return playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS), viewport=VIEWPORT,
    )


def screenshot(page: str | Path, png: str | Path) -> None:
    """Screenshot the first screen of ``page`` (a local HTML file) into ``png``."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="odiag-chromium-")
    try:
        with sync_playwright() as p:
            context = launch(p, profile)
            tab = context.new_page()
            tab.goto(Path(page).resolve().as_uri())
            tab.wait_for_load_state("load")
            tab.screenshot(path=str(png))
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m harness.leaderboard.screenshot SITE/index.html OUT.png")
    if (why := missing()) is not None:
        sys.exit(f"no screenshot: {why}")
    screenshot(sys.argv[1], sys.argv[2])
