"""A headless system Chromium for the browser tests, with the network cut: playwright drives the
browser the machine has (`.ci/run` installs Debian's `chromium`) and never downloads one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_or_skip() -> str:
    """The system Chromium's path (``PNEUMO_CHROMIUM`` first), or skip the test with the reason."""
    path = os.environ.get("PNEUMO_CHROMIUM") or next(
        filter(None, map(shutil.which, CANDIDATES)), None
    )
    if not path:
        pytest.skip(
            "no Chromium on this machine (apt-get install chromium, or set PNEUMO_CHROMIUM): "
            "the browser test needs one and never downloads it"
        )
    return path


@dataclass
class Offline:
    """What the page did: uncaught script errors, console errors, requests that were refused."""

    page: Any
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


@contextmanager
def offline_page(origin: str | None = None) -> Iterator[Offline]:
    """A page in a fresh headless Chromium that may load ``file:``, ``data:`` and ``blob:`` URLs
    and, when given, those of ``origin`` (a local service's: ``http://127.0.0.1:8000``); every
    other request is refused and recorded."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    allowed = ("file:", "data:", "blob:") + ((f"{origin}/",) if origin else ())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            if origin is None:  # offline would cut the local service off too; the route does it
                context.set_offline(True)
            page = context.new_page()
            seen = Offline(page)

            def route(r: Any) -> None:
                if r.request.url.startswith(allowed):
                    r.continue_()
                else:
                    seen.blocked.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page.on("pageerror", lambda exc: seen.errors.append(f"pageerror: {exc}"))
            page.on(
                "console",
                lambda m: seen.errors.append(f"console: {m.text}") if m.type == "error" else None,
            )
            yield seen
        finally:
            browser.close()
