"""Make the README's pictures: docs/screenshot.png, the polling and WebSocket pages side by side,
and docs/phone-375.png and docs/wide-1200.png, the chat at a phone's width and a laptop's.

Run it from the project folder: .venv/bin/python docs/screenshot.py

It starts the app with `flask run` on a free port, has a short conversation
over plain HTTP, then photographs each chat page as a different person in
headless Chromium (Debian's, if installed) and puts the first two pictures
next to each other.
"""

import base64
import json
import sys
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
from helpers import CHROMIUM, CHROMIUM_ARGS, FlaskRun, free_port  # noqa: E402  the tests' helpers

OUTPUT = PROJECT / "docs" / "screenshot.png"
WIDTH, HEIGHT, GAP = 600, 820, 16
# (file, page, viewport width and height): a phone, and a laptop.
WIDTHS = [("phone-375.png", "/websocket", 375, 740), ("wide-1200.png", "/polling", 1200, 800)]

CONVERSATION = [
    ("Azin", "Hi all! Has anyone tried the WebSocket page yet?"),
    ("Ben", "Yes, I have it open next to the polling one. Both update at once."),
    ("Azin", "So what's the difference?"),
    ("Ben", "Open the Network tab: polling keeps one request waiting for news, "
            "the WebSocket page keeps one connection open for everything."),
    ("Chidi", "And if you stop the server, both say reconnecting and catch up afterwards."),
    ("Azin", "Nice, I'll show that in class today. The page's part is just:\n"
             "socket.onmessage = (event) => {\n    chat.apply(JSON.parse(event.data));\n};"),
]
LIKES = {2: 2, 4: 3, 5: 1}  # message number -> how many likes
DISLIKES = {3: 1}


def post(base_url, path, body=None):
    """POST JSON to the app, as curl would, and return its answer."""
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def have_the_conversation(base_url):
    for user, text in CONVERSATION:
        post(base_url, "/messages", {"user": user, "text": text})
    for votes, kind in ((LIKES, "like"), (DISLIKES, "dislike")):
        for message_id, count in votes.items():
            for _ in range(count):
                post(base_url, f"/messages/{message_id}/{kind}")


def photograph(browser, url, name, draft, width=WIDTH, height=HEIGHT):
    """Open `url` as `name`, with `draft` typed but not sent, and return a PNG of the window."""
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
    page = context.new_page()
    page.goto(url)
    expect(page.get_by_role("status")).to_have_text("connected")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Message", exact=True).fill(draft)
    png = page.screenshot()
    context.close()
    return png


def side_by_side(browser, left_png, right_png):
    """Return one PNG with the two pictures next to each other."""
    page = browser.new_page(viewport={"width": 2 * WIDTH + 3 * GAP, "height": HEIGHT + 2 * GAP})
    images = "".join(
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
        f'style="box-shadow: 0 1px 4px #0003">'
        for png in (left_png, right_png))
    page.set_content(f'<body style="margin: 0; padding: {GAP}px; display: flex; gap: {GAP}px;'
                     f' background: #e8e8e8">{images}</body>')
    png = page.screenshot()
    page.close()
    return png


def main():
    server = FlaskRun(free_port())
    server.start()
    try:
        have_the_conversation(server.url)
        with sync_playwright() as playwright:
            executable = CHROMIUM if Path(CHROMIUM).exists() else None
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            polling = photograph(browser, server.url + "/polling", "Chidi",
                                 "Try it while the server restarts!")
            websocket = photograph(browser, server.url + "/websocket", "Ben", "See you in class")
            OUTPUT.write_bytes(side_by_side(browser, polling, websocket))
            print(f"Wrote {OUTPUT.relative_to(PROJECT)}")
            for file, path, width, height in WIDTHS:
                png = photograph(browser, server.url + path, "Dana", "On my phone", width, height)
                (OUTPUT.parent / file).write_bytes(png)
                print(f"Wrote docs/{file}")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
