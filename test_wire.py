"""The wire panel (static/wire.js): what travels between a chat page and the server, shown on the page.

Real server, real Chromium. What the panel says is checked against what
Chromium itself saw go over the network (Playwright's request, response and
WebSocket events), so a panel that guessed or rounded would fail.
"""

import json
import re
import time
from pathlib import Path

import pytest

from helpers import ON_CI, PageOpener, wait_until

try:
    from playwright.sync_api import expect
except ImportError:
    if ON_CI:
        raise
    pytest.skip("Playwright is not installed: pip install -r requirements-dev.txt", allow_module_level=True)

# A row: its time, then `↑`/`↓` and what went, e.g. "12:00:01.123 ↓ 201 POST /messages · 120 B · held 5 ms".
ROW = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d (?:(?P<arrow>[↑↓]) )?(?P<what>.*)$")


@pytest.fixture
def open_page(browser):
    """Open a page as a new person, `watch(page)` listening from the very start; fail on JavaScript errors."""
    opener = PageOpener(browser)

    def open_page(url, watch=None):
        return opener(url, before_goto=watch)

    yield open_page
    problems = list(opener.problems)
    opener.close()
    assert problems == []


def wire(page):
    return page.get_by_role("log", name="Wire")


def rows(page):
    """The panel's rows, as (arrow, what) pairs, oldest first."""
    texts = wire(page).locator(".wire-row").all_text_contents()
    return [(match["arrow"] or "", match["what"]) for match in map(ROW.match, texts)]


def send(page, text, user="Azin"):
    page.get_by_label("Name").fill(user)
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def totals(page):
    """The totals line, read back as numbers."""
    line = wire(page).locator(".wire-totals").text_content()
    numbers = re.fullmatch(r"HTTP: (\d+) requests? ↑ (\d+) B.*?, (\d+) answers? ↓ (\d+) B.*? · "
                           r"WebSocket: (\d+) frames? ↑ (\d+) B.*?, (\d+) frames? ↓ (\d+) B.*", line)
    assert numbers, line
    keys = ["requests", "request_bytes", "answers", "answer_bytes", "frames_sent", "sent_bytes",
            "frames_received", "received_bytes"]
    return dict(zip(keys, map(int, numbers.groups())))


def size_of(what):
    """The byte size a row gives, from its "N B"."""
    return int(re.search(r"(?:^|· )(\d+) B\b", what)[1])


@pytest.mark.parametrize("path", ["/polling", "/websocket"])
def test_the_wire_button_opens_a_log_that_holds_what_went_since_the_page_loaded(server, open_page, path):
    page = open_page(server.url + path)
    expect(page.get_by_role("status")).to_have_text("connected")
    expect(wire(page)).to_be_hidden()

    page.get_by_role("button", name=re.compile("wire", re.IGNORECASE)).click()

    expect(wire(page)).to_be_visible()
    expect(wire(page)).to_contain_text("Payloads only")
    arrow, what = rows(page)[0]  # the first thing the page did
    if path == "/polling":
        assert (arrow, what) == ("↑", "GET /messages?since=0&wait=0")
    else:
        assert (arrow, what) == ("", f"open ws://127.0.0.1:{server.port}/ws?since=0")
    page.get_by_role("button", name=re.compile("wire", re.IGNORECASE)).click()
    expect(wire(page)).to_be_hidden()


def test_with_wire_1_in_the_address_the_page_opens_with_the_panel_shown(server, open_page):
    page = open_page(server.url + "/websocket?wire=1")
    expect(wire(page)).to_be_visible()
    expect(wire(page)).to_contain_text("↓ messages")
    expect(page.get_by_role("button", name=re.compile("wire", re.IGNORECASE))).to_have_attribute(
        "aria-expanded", "true")


def test_a_sent_message_shows_as_an_up_send_message_frame_of_the_bytes_the_page_sent(server, open_page):
    sent = []  # what Chromium saw the page send over its WebSocket
    page = open_page(server.url + "/websocket?wire=1", watch=lambda page: page.on(
        "websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload))))
    expect(page.get_by_role("status")).to_have_text("connected")

    send(page, "Grüße, 世界! 👋")  # more bytes than characters: the size must count UTF-8 bytes

    expect(page.get_by_role("listitem")).to_have_count(1)
    payload = next(frame for frame in sent if json.loads(frame)["command"] == "send-message")
    expected = f"send-message · {len(payload.encode())} B"
    expect(wire(page)).to_contain_text(f"↑ {expected}")
    assert ("↑", expected) in rows(page)
    assert len(payload.encode()) > len(payload)


def test_a_post_shows_with_its_size_then_201_with_the_answers_size(server, open_page):
    posts = []  # the POSTs Chromium saw go out
    page = open_page(server.url + "/polling?wire=1",
                     watch=lambda page: page.on("requestfinished",
                                                lambda request: request.method == "POST" and posts.append(request)))
    expect(page.get_by_role("status")).to_have_text("connected")

    send(page, "Ça va? ✓")

    expect(page.get_by_role("listitem")).to_have_count(1)
    expect(wire(page)).to_contain_text("↓ 201 POST /messages")
    body, answer = posts[0].post_data, posts[0].response().body()
    assert ("↑", f"POST /messages · {len(body.encode())} B") in rows(page)
    answered = [what for arrow, what in rows(page) if what.startswith("201 POST /messages")]
    assert len(answered) == 1 and size_of(answered[0]) == len(answer)
    assert re.search(r" · held \d+ ms$", answered[0])


def test_a_long_poll_shows_its_wait_and_how_long_the_server_held_it(server, open_page):
    page = open_page(server.url + "/polling?wire=1")
    expect(wire(page)).to_contain_text("wait=25")  # the first long poll has gone out
    started = time.monotonic()
    # The duration under test: the server holds the poll until something changes, and we change
    # something only after this. (Not a wait for a condition: the panel must show at least this long.)
    time.sleep(1)  # at least a second: the panel shows it in seconds, to a tenth
    server.post("/messages", {"user": "Bo", "text": "wake up"})
    held_at_least = time.monotonic() - started

    expect(page.get_by_role("listitem")).to_have_count(1)
    expect(wire(page)).to_contain_text(re.compile(r"↓ 200 GET /messages\?since=0&wait=25&epoch=\S+ · \d+ B · held"))
    answered = [what for arrow, what in rows(page) if arrow == "↓" and "wait=25" in what]
    held = re.search(r"held (\d+\.\d) s$", answered[0])
    assert held, answered[0]
    assert float(held[1]) >= round(held_at_least, 1) - 0.1  # shown to a tenth of a second


@pytest.mark.config(RATE_LIMIT=0)
@pytest.mark.parametrize("path", ["/polling", "/websocket"])
def test_the_totals_add_up_to_the_rows(server, open_page, path):
    page = open_page(server.url + path + "?wire=1")
    expect(page.get_by_role("status")).to_have_text("connected")
    for n in range(3):
        send(page, f"message {n}")
        expect(page.get_by_role("listitem")).to_have_count(n + 1)
    page.get_by_role("button", name="Like 0").first.click()
    expect(page.get_by_role("button", name="Like 1")).to_be_visible()

    def added_up():
        listed = rows(page)
        http_up = [what for arrow, what in listed if arrow == "↑" and re.match(r"(GET|POST) /", what)]
        http_down = [what for arrow, what in listed if arrow == "↓" and re.match(r"\d{3} (GET|POST) /", what)]
        frames_up = [what for arrow, what in listed if arrow == "↑" and what not in http_up]
        frames_down = [what for arrow, what in listed if arrow == "↓" and what not in http_down]
        return {"requests": len(http_up), "request_bytes": sum(size_of(what) for what in http_up if " B" in what),
                "answers": len(http_down), "answer_bytes": sum(map(size_of, http_down)),
                "frames_sent": len(frames_up), "sent_bytes": sum(map(size_of, frames_up)),
                "frames_received": len(frames_down), "received_bytes": sum(map(size_of, frames_down))}

    # Read twice over, until no row came in between: the page goes on polling while we read.
    wait_until(lambda: totals(page) == added_up())
    counted = totals(page)
    if path == "/polling":
        assert counted["requests"] >= 5 and counted["frames_sent"] == 0  # 3 POSTs, a like, the polls
    else:
        assert counted["frames_sent"] == 4 and counted["frames_received"] >= 5
    assert page.get_by_role("listitem").count() == 3  # and the chat's own list holds no row of the wire


def test_the_wire_stays_a_module_of_its_own_and_the_chats_shared_code_stays_short():
    static = Path(__file__).parent / "static"
    assert len((static / "wire.js").read_text().splitlines()) <= 120
    assert len((static / "chat.js").read_text().splitlines()) <= 200
