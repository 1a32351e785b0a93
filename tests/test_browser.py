"""The view and the HTML report in a real browser: Playwright driving Debian's Chromium
(`/usr/bin/chromium`, installed by the Makefile; Playwright never downloads one).

`abharness view` runs as a user runs it, a process on 127.0.0.1; the tests open a run,
follow its regressions, search, open a case and see both arms' outputs and their word
diff; then the same on the static report, from its file. Nothing planted in an output
or a variable may run: a dialog opened by any script fails the test. A failing test
leaves a screenshot in its tmp dir (the path is in the failure). With
``ABHARNESS_README_SHOT=path.png`` the compare page's screenshot is also saved there
(the README's picture)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import written_report
from .test_view import run  # noqa: F401  (the module's run, with planted markup)

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser(run) -> Iterator[object]:  # noqa: F811  (runs first: its asyncio before the sync API's loop)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def view(run: tuple[Path, str]) -> Iterator[str]:  # noqa: F811
    db, _ = run
    port = _free_port()
    exe = Path(sys.executable).with_name("abharness")
    proc = subprocess.Popen(
        [str(exe), "view", "--db", str(db), "--port", str(port), "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"abharness view exited: {proc.stdout.read() if proc.stdout else ''}"
                )
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def page_of(browser, tmp_path: Path, name: str) -> Iterator[object]:
    """A page that fails on any dialog (a planted script running) and leaves a
    screenshot when the test fails."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        yield page
        assert dialogs == [], f"a script ran: {dialogs}"
    except BaseException:
        shot = tmp_path / f"{name}-failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        raise
    finally:
        page.close()


def _shown_cases(page) -> list[str]:
    return [t.strip() for t in page.locator("table.cases tr td:first-child a").all_inner_texts()]


def test_the_view_in_a_browser(run, view: str, browser, tmp_path: Path) -> None:  # noqa: F811
    _, rid = run
    with page_of(browser, tmp_path, "view") as page:
        page.goto(view + "/")
        page.click(f"text={rid}")
        assert page.locator("h2", has_text="Verdicts").count() == 1
        page.click("text=regressions")
        assert "filter=regressions" in page.url
        assert _shown_cases(page) == ["c01", "c02"]
        shot = tmp_path / "compare.png"
        page.screenshot(path=str(shot))
        if os.environ.get("ABHARNESS_README_SHOT"):  # the page's top, for the README
            clip = {"x": 60, "y": 0, "width": 1280, "height": 600}
            page.screenshot(path=os.environ["ABHARNESS_README_SHOT"], clip=clip)
        page.select_option("select[name=filter]", "all")
        page.fill("input[name=q]", "onerror")
        page.click("button[type=submit]")
        assert "q=onerror" in page.url and _shown_cases(page) == ["c05"]
        page.goto(view + f"/compare?a={rid}:arm-a&b={rid}:arm-b&filter=regressions")
        page.click("text=c01")
        boxes = page.locator(".side .call")
        assert page.locator("h2", has_text="Repeat 0").count() == 1
        texts = boxes.all_inner_texts()[-2:]  # repeat 0: arm-a, then arm-b
        assert "arm-a passed" in texts[0] and "answer-c01" in texts[0]
        assert "arm-b failed" in texts[1] and "no idea" in texts[1]
        assert page.locator("pre.diff del").first.inner_text().strip() == "answer-c01"
        assert page.locator("pre.diff ins").first.inner_text().strip() == "no idea"
        page.goto(view + f"/runs/{rid}/cases/c04?arms=arm-a,arm-b")  # a planted <script>
        assert "<script>alert('x')</script>" in page.locator("pre.output").first.inner_text()
        page.screenshot(path=str(tmp_path / "case.png"))


def test_the_static_report_in_a_browser(run, browser, tmp_path: Path) -> None:  # noqa: F811
    db, rid = run

    class Out:
        pass

    out = Out()
    out.db, out.run_id = db, rid  # type: ignore[attr-defined]
    html = written_report(out, tmp_path / "reports").with_suffix(".html")
    with page_of(browser, tmp_path, "report") as page:
        page.goto(html.as_uri())
        assert page.locator("#abh-rows tr").count() == 50  # the first page of 60 cases
        page.select_option("#abh-filter", "regressions")
        assert _shown_cases(page) == ["c01", "c02"]
        page.select_option("#abh-filter", "all")
        page.fill("#abh-q", "onerror")
        assert _shown_cases(page) == ["c05"]
        page.fill("#abh-q", "")
        page.select_option("#abh-filter", "regressions")
        page.click("#abh-rows >> text=c02")
        panel = page.locator("#abh-case")
        assert panel.is_visible()
        texts = panel.locator(".call").all_inner_texts()
        assert "arm-a passed" in texts[0] and "answer-c02" in texts[0]
        assert "arm-b failed" in texts[1] and "no idea" in texts[1]
        assert panel.locator("del").first.inner_text().strip() == "answer-c02"
        page.fill("#abh-q", "alert")
        page.select_option("#abh-filter", "all")
        assert _shown_cases(page) == ["c04", "c05"]
        page.click("#abh-rows >> text=c04")
        assert "<script>alert('x')</script>" in panel.inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
