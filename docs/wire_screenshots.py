"""Make docs/wire-polling.png and docs/wire-websocket.png: each chat page with its wire panel open.

Run it from the project folder: .venv/bin/python docs/wire_screenshots.py

It starts the app with `flask run`, opens each page with ?wire=1, sends a
message and a like from the page, and has someone else post over HTTP, so the
panel shows a first load, a send, a change arriving, and (on the polling page)
a long poll that the server held until that change.
"""

import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
from helpers import CHROMIUM, CHROMIUM_ARGS, FlaskRun, free_port  # noqa: E402  the tests' helpers

WIDTH, HEIGHT = 760, 900


def photograph(browser, server, path, output):
    """Open `path` with the wire shown, chat a little, and save a PNG of the window to `output`."""
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, locale="en-US")
    page = context.new_page()
    page.goto(server.url + path + "?wire=1")
    expect(page.get_by_role("status")).to_have_text("connected")
    page.get_by_label("Name").fill("Azin")
    page.get_by_label("Message", exact=True).fill("Watch the wire panel below, everyone!")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("listitem")).to_have_count(1)
    time.sleep(2)  # so the polling page's long poll is visibly held before the next change
    server.post("/messages", {"user": "Ben", "text": "Sent with curl: it shows up here as a change."})
    expect(page.get_by_role("listitem")).to_have_count(2)
    page.get_by_role("button", name="Like 0").first.click()
    expect(page.get_by_role("button", name="Like 1")).to_be_visible()
    time.sleep(0.5)  # the last rows in
    page.screenshot(path=output)
    context.close()


def main():
    with sync_playwright() as playwright:
        executable = CHROMIUM if Path(CHROMIUM).exists() else None
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        for path, name in (("/polling", "wire-polling.png"), ("/websocket", "wire-websocket.png")):
            server = FlaskRun(free_port()).start()  # a fresh chat for each page
            try:
                photograph(browser, server, path, PROJECT / "docs" / name)
            finally:
                server.stop()
            print(f"Wrote docs/{name}")
        browser.close()


if __name__ == "__main__":
    main()
