"""The whole service in a real browser: headless Chromium (Debian's, driven by Playwright)
against the web app on a local port, a real Celery worker process and the machine's Redis.

A student logs in, pastes a solution, and watches it go from queued to graded without
reloading; a TA then finds it in the gradebook with its histogram."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from werkzeug.serving import make_server

from service_fixtures import PASSWORDS, REDIS_URL, test_settings as settings_for

CHROMIUM = "/usr/bin/chromium"
SUBMISSIONS = Path(__file__).parent / "submissions"
pytestmark = pytest.mark.slow


@pytest.fixture
def stack(sqlite_url: str, tmp_path: Path) -> Iterator[str]:
    """Web app on a free port, enqueuing to a real worker through Redis; yields the base URL."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `./dev test` installs Debian's chromium")
    from grader.web import create_app

    settings = settings_for(sqlite_url, tmp_path)
    env = {
        **os.environ,
        "GRADER_ENV": "testing",
        "DATABASE_URL": sqlite_url,
        "BROKER_URL": REDIS_URL,
        "GRADER_QUEUE": settings.queue,
        "SECRET_KEY": settings.secret_key,
        "GRADER_INSTANCE": str(tmp_path / "instance"),
    }
    grader_cli = Path(sys.executable).with_name("grader")
    worker = subprocess.Popen(
        [str(grader_cli), "worker", "--concurrency", "1", "--loglevel", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.log", "wb"),
        start_new_session=True,
    )
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        os.killpg(worker.pid, 15)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait()
        app.extensions["grader.engine"].dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _login(page: Any, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_student_submits_and_watches_it_get_graded_then_ta_sees_it(stack: str, browser: Any, tmp_path: Path) -> None:
    base = stack
    student = browser.new_context().new_page()
    _login(student, base, "student@example.com", PASSWORDS["student"])
    assert "demo" in student.content()

    student.goto(f"{base}/courses/demo/assignments/gates")
    assert student.locator("#handout").count() == 1
    correct = sorted((SUBMISSIONS / "gates").glob("correct_*.py"))[0].read_text()
    student.fill("textarea[name=code]", correct)
    student.click("form.submit-form button[type=submit]")
    student.wait_for_url(re.compile(r".*/submissions/\d+(#.*)?$"))
    first_badge = student.locator("#live-status .badge").inner_text()
    assert first_badge in ("queued", "running", "graded")

    # The page follows the status by itself: no reload by the test from here on.
    student.wait_for_selector("text=Final score", timeout=90_000)
    student.screenshot(path=str(tmp_path / "graded.png"), full_page=True)
    body = student.locator("main").inner_text()
    assert "graded" in body
    score = re.search(r"Final score\s+([\d.]+)\s*/\s*([\d.]+)", body)
    assert score and score.group(1) == score.group(2), body[:2000]

    ta = browser.new_context().new_page()
    _login(ta, base, "ta@example.com", PASSWORDS["ta"])
    ta.goto(f"{base}/courses/demo/assignments/gates/gradebook")
    assert "student@example.com" in ta.content()
    assert ta.locator("svg").count() >= 1  # the histogram and pass rates are pictures
    ta.screenshot(path=str(tmp_path / "gradebook.png"), full_page=True)
