"""The chat as people use it: real servers, real Chromium, nothing mocked.

Each simulated person gets a browser context of their own (their own storage
and connections), so two contexts are two people chatting. Elements are found
the way a person finds them: by their labels, roles and accessible names.

The page fixtures live here rather than in conftest.py because only these
tests need them. The browser itself, `browser`, is conftest.py's: Playwright's
sync API runs one at a time, and test_steps.py drives the same one.

Without Chromium these tests are skipped, except on CI (CI=true), where a
missing browser is an error: a green CI must mean the browser tests ran.
"""

import json
import os
import re
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from app import create_app
from helpers import (BOTH_STORES, ON_CI, RECONNECT_TIMEOUT, FlaskRun, LiveServer, PageOpener, RedisServer, close_app,
                     flask_env, message, messages, redis_settings, request, retry_now, send, wait_until)

try:
    from playwright.sync_api import expect
except ImportError:
    if ON_CI:
        raise
    pytest.skip("Playwright is not installed: pip install -r requirements-dev.txt",
                allow_module_level=True)


CHAT_PAGES = ["/polling", "/websocket"]


# Fixtures


@pytest.fixture
def open_page(request, browser):
    """Open pages as separate people; at the end, fail if any page had a JavaScript error."""
    # Start the test's server first, so that it stops only after the pages are
    # closed: a server that goes away under open pages makes them log errors.
    for server in ("server", "flask_run", "second_flask_run", "server_on_own_redis"):
        if server in request.fixturenames:
            request.getfixturevalue(server)
    opener = PageOpener(browser)
    yield opener
    problems = list(opener.problems)
    opener.close()
    assert problems == [], "JavaScript errors in the pages:\n" + "\n".join(problems)


@pytest.fixture
def open_chat(open_page):
    """Open a chat page as a new person and wait until it is connected."""

    def open_chat(url, **options):
        page = open_page(url, **options)
        expect(page.get_by_role("status")).to_have_text("connected")
        return page

    return open_chat


# Helpers


def vote_button(item, name):
    """A message's vote button by its whole name: "Like 2", not "Like 12" or "Dislike 2"."""
    return item.get_by_role("button", name=name, exact=True)


def post_message(base_url, user, text):
    """Send a message with a plain HTTP POST, as curl would; return the stored message, or fail."""
    answer = request("POST", base_url + "/messages", {"user": user, "text": text})
    assert answer.status == 201, f"{answer.status}: {answer.body[:200]!r}"
    return answer.json


def post_lines(base_url, count):
    """Post "Line 01", "Line 02", ... up to `count`, as Azin."""
    for number in range(1, count + 1):
        post_message(base_url, "Azin", f"Line {number:02}")


def lines(first, last):
    """The shown messages "Line `first`" to "Line `last`", as to_have_text expects them."""
    return [re.compile(f"Line {number:02}") for number in range(first, last + 1)]


def let_the_page_run_until(page, condition, complaint):
    """Let the page run (up to 5 s) until `condition()` holds; fail with `complaint` if it doesn't."""
    for _ in range(250):
        if condition():
            return
        page.wait_for_timeout(20)  # the page's events, the test's handlers included, run meanwhile
    raise AssertionError(complaint)


def wait_for_held_request(page, held, complaint):
    """Let the page run (up to 5 s) until it has made a request that the test's route holds in `held`."""
    let_the_page_run_until(page, lambda: held, complaint)


def other_page(path):
    """The chat page that `path` is not."""
    return "/websocket" if path == "/polling" else "/polling"


def server_refusal(base_url, user, text):
    """The server's own words for why it refuses to store this message."""
    refused = request("POST", base_url + "/messages", {"user": user, "text": text})
    assert refused.status == 400
    return refused.json["error"]


# Two people, two transports


@pytest.mark.parametrize("sender_path", CHAT_PAGES)
def test_message_sent_on_one_chat_page_appears_on_the_other(server, open_chat, sender_path):
    sender = open_chat(server.url + sender_path)
    reader = open_chat(server.url + other_page(sender_path))

    send(sender, "Azin", f"Hello from {sender_path}")

    for page in (sender, reader):
        expect(message(page, f"Hello from {sender_path}")).to_contain_text("Azin")


@pytest.mark.parametrize("voter_path", CHAT_PAGES)
def test_likes_and_dislikes_clicked_on_one_page_update_the_counts_on_the_other(
        server, open_chat, voter_path):
    post_message(server.url, "Azin", "Tea or coffee?")
    voter = open_chat(server.url + voter_path)
    watcher = open_chat(server.url + other_page(voter_path))
    on_voter, on_watcher = message(voter, "Tea or coffee?"), message(watcher, "Tea or coffee?")

    vote_button(on_voter, "Like 0").click()
    expect(vote_button(on_voter, "Like 1")).to_be_visible()
    vote_button(on_voter, "Like 1").click()
    expect(vote_button(on_voter, "Like 2")).to_be_visible()
    vote_button(on_voter, "Dislike 0").click()

    expect(vote_button(on_watcher, "Like 2")).to_be_visible()
    expect(vote_button(on_watcher, "Dislike 1")).to_be_visible()
    expect(vote_button(on_voter, "Dislike 1")).to_be_visible()


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_html_in_name_and_message_is_shown_as_typed_and_never_run(server, open_chat, path):
    user = '<img src=x onerror="window.pwned=1">'
    text = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=1\"> <b>bold?</b>"
    sender = open_chat(server.url + path)
    reader = open_chat(server.url + other_page(path))

    send(sender, user, text)

    for page in (sender, reader):
        shown = messages(page)
        expect(shown).to_have_count(1)
        expect(shown.get_by_text(user, exact=True)).to_be_visible()
        expect(shown.get_by_text(text, exact=True)).to_be_visible()
        for tag in ("img", "script", "b"):
            expect(shown.locator(tag)).to_have_count(0)
        assert page.evaluate("typeof window.pwned") == "undefined"


def test_hello_page_shows_what_the_server_says(server, open_page):
    page = open_page(server.url + "/hello")

    expect(page.locator("#said")).to_have_text("Hello")
    expect(page.get_by_role("status")).to_have_text("connected")


def test_hello_page_says_when_the_server_went_away(flask_run, open_page):
    page = open_page(flask_run.url + "/hello")
    expect(page.get_by_role("status")).to_have_text("connected")

    flask_run.stop()

    expect(page.get_by_role("status")).to_contain_text("The server went away")


# When things go wrong


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_chat_page_starts_afresh_without_a_reload_when_the_server_restarts(
        flask_run, open_chat, path):
    page = open_chat(flask_run.url + path, network_errors_expected=True, clock=True)
    status = page.get_by_role("status")
    send(page, "Azin", "Before the restart, one")
    expect(messages(page)).to_have_count(1)
    send(page, "Azin", "Before the restart, two")
    expect(messages(page)).to_have_count(2)

    flask_run.stop()
    expect(status).to_have_text("reconnecting")
    expect(status).to_have_attribute("data-state", "reconnecting")

    # Same port, new process: a new empty store with a new epoch. Its message 1
    # is not the old message 1, so the page must throw the old ones away.
    flask_run.start()
    retry_now(page)
    post_message(flask_run.url, "Ben", "After the restart, one")
    expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(messages(page)).to_have_text([re.compile("After the restart, one")])
    expect(page.get_by_text("The server restarted, so the chat started again.")).to_be_visible()

    send(page, "Azin", "After the restart, two")
    expect(messages(page)).to_have_text(
        [re.compile("After the restart, one"), re.compile("After the restart, two")])


@pytest.mark.parametrize("store_kind", ["redis"])
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_on_redis_a_page_keeps_its_messages_when_the_app_restarts(flask_run, open_chat, path):
    page = open_chat(flask_run.url + path, network_errors_expected=True, clock=True)
    status = page.get_by_role("status")
    send(page, "Azin", "Before the restart")
    expect(messages(page)).to_have_count(1)

    flask_run.stop()
    expect(status).to_have_text("reconnecting")
    flask_run.start()  # a new process, the same Redis: the same chat, the same epoch
    retry_now(page)
    post_message(flask_run.url, "Ben", "After the restart")

    expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(messages(page)).to_have_text([re.compile("Before the restart"), re.compile("After the restart")])
    expect(page.get_by_text("The server restarted")).to_be_hidden()  # no reset


@pytest.fixture
def second_flask_run(flask_run, store_settings):
    """Another `flask run` process, on the same store as `flask_run`."""
    running = FlaskRun(env=flask_env(store_settings)).start()
    yield running
    running.stop()


@pytest.mark.parametrize("store_kind", ["redis"])
def test_pages_served_by_two_processes_sharing_redis_are_one_chat(second_flask_run, flask_run, open_chat):
    on_first = open_chat(flask_run.url + "/websocket")
    on_second = open_chat(second_flask_run.url + "/polling")

    send(on_first, "Azin", "Through the first process")
    send(on_second, "Ben", "Through the second process")
    vote_button(message(on_second, "Through the first process"), "Like 0").click()

    for page in (on_first, on_second):
        expect(messages(page)).to_have_text(
            [re.compile("Through the first process"), re.compile("Through the second process")])
        expect(vote_button(message(page, "Through the first process"), "Like 1")).to_be_visible()


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_too_long_message_is_explained_and_kept_in_the_form(server, open_chat, path):
    page = open_chat(server.url + path)
    too_long = "a" * 1001

    send(page, "Azin", too_long)

    expect(page.get_by_role("alert")).to_contain_text("too long")
    expect(page.get_by_label("Message", exact=True)).to_have_value(too_long)
    assert server.get("/messages")["messages"] == []


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_a_message_the_server_refuses_is_explained_and_kept_in_the_form(server, open_chat, path):
    page = open_chat(server.url + path, network_errors_expected=True)  # the POST gets a 400
    page.get_by_label("Name").fill("Azin")
    field = page.get_by_label("Message", exact=True)
    # Half of a surrogate pair passes the page's own length check, but not the
    # server's: so the refusal has to come back from the server. (Set from
    # JavaScript, because such a string can't travel as UTF-8 to the browser.)
    field.evaluate("field => { field.value = 'half a character: \\ud800'; }")

    page.get_by_role("button", name="Send").click()

    expect(page.get_by_role("alert")).to_contain_text("invalid character")
    assert field.evaluate("field => field.value === 'half a character: \\ud800'")
    assert server.get("/messages")["messages"] == []


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_sending_while_the_server_is_down_shows_an_error_and_keeps_the_text(
        flask_run, open_chat, path):
    page = open_chat(flask_run.url + path, network_errors_expected=True)
    flask_run.stop()
    expect(page.get_by_role("status")).to_have_text("reconnecting")

    send(page, "Azin", "Is anyone there?")

    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_have_text(re.compile(r"\w"))
    expect(page.get_by_label("Message", exact=True)).to_have_value("Is anyone there?")


@pytest.mark.parametrize("path", ["/", "/polling", "/websocket", "/hello"])
def test_page_runs_without_javascript_errors(server, open_page, path):
    page = open_page(server.url + path)

    # Wait for each page to do what its script is for, so errors have had their chance.
    if path == "/":
        expect(page.get_by_role("link", name="WebSocket chat")).to_be_visible()
    elif path == "/hello":
        expect(page.locator("#said")).to_have_text("Hello")
    else:
        expect(page.get_by_role("status")).to_have_text("connected")
        send(page, "Azin", "Anything broken?")
        vote_button(message(page, "Anything broken?"), "Like 0").click()
        expect(vote_button(message(page, "Anything broken?"), "Like 1")).to_be_visible()
    assert open_page.problems == []


# Usability


def test_next_message_typed_while_the_last_is_on_its_way_is_kept(server, open_chat):
    # Only the polling page waits for an answer to what it sends: POST /messages.
    page = open_chat(server.url + "/polling")
    posts_on_their_way = []  # held back here until the test lets them go
    page.route(lambda url: url.endswith("/messages"),
               lambda route: posts_on_their_way.append(route))
    send(page, "Azin", "First")
    wait_for_held_request(page, posts_on_their_way, "the page sent no POST /messages")

    page.get_by_label("Message", exact=True).fill("Second, typed meanwhile")
    posts_on_their_way[0].continue_()

    expect(message(page, "First")).to_be_visible()
    expect(page.get_by_label("Message", exact=True)).to_have_value("Second, typed meanwhile")


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_name_is_remembered_after_a_reload(server, open_chat, path):
    page = open_chat(server.url + path)
    send(page, "Azin", "Remember me")
    expect(message(page, "Remember me")).to_be_visible()

    page.reload()

    expect(page.get_by_label("Name")).to_have_value("Azin")


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_enter_in_the_message_field_sends_the_message(server, open_chat, path):
    page = open_chat(server.url + path)
    page.get_by_label("Name").fill("Azin")
    field = page.get_by_label("Message", exact=True)
    field.fill("Sent with Enter")

    field.press("Enter")

    expect(message(page, "Sent with Enter")).to_be_visible()
    expect(field).to_have_value("")


def list_scroll(page):
    """The message list's scrollTop, clientHeight and scrollHeight."""
    return page.get_by_role("list", name="Conversation").evaluate(
        "list => ({top: list.scrollTop, height: list.clientHeight, content: list.scrollHeight})")


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_list_follows_new_messages_when_the_reader_is_at_the_bottom(server, open_chat, path):
    page = open_chat(server.url + path)

    post_lines(server.url, 30)

    expect(message(page, "Line 30")).to_be_in_viewport()
    scroll = list_scroll(page)
    assert scroll["content"] > scroll["height"], "the messages should overflow the list"
    assert scroll["top"] + scroll["height"] >= scroll["content"] - 2
    expect(message(page, "Line 01")).not_to_be_in_viewport()


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_list_stays_put_when_the_reader_has_scrolled_up(server, open_chat, path):
    post_lines(server.url, 30)
    page = open_chat(server.url + path)
    expect(message(page, "Line 30")).to_be_in_viewport()

    page.get_by_role("list", name="Conversation").evaluate("list => { list.scrollTop = 0; }")
    post_message(server.url, "Ben", "A new one while Azin reads")

    expect(message(page, "A new one while Azin reads")).to_be_attached()
    expect(message(page, "Line 01")).to_be_in_viewport()
    assert list_scroll(page)["top"] == 0


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_message_time_is_shown_in_the_readers_time_zone(server, open_chat, path):
    stored = post_message(server.url, "Azin", "What time is it?")

    page = open_chat(server.url + path, timezone_id="Asia/Tokyo", locale="en-US")

    tokyo = timezone(timedelta(hours=9))  # Japan has no daylight saving time
    local = datetime.fromisoformat(stored["timestamp"]).astimezone(tokyo)
    shown = f"{local.hour % 12 or 12}:{local:%M:%S} {'AM' if local.hour < 12 else 'PM'}"
    expect(message(page, "What time is it?").locator("time")).to_have_text(shown)


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_form_fields_are_labelled_and_new_messages_are_announced(server, open_chat, path):
    page = open_chat(server.url + path)

    expect(page.get_by_label("Name")).to_be_editable()
    expect(page.get_by_label("Message", exact=True)).to_be_editable()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("list", name="Conversation")).to_have_attribute("aria-live", "polite")
    expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")


# History and plain HTTP


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_reloading_shows_the_history_with_its_counts(server, open_chat, path):
    for text in ("First", "Second", "Third"):
        post_message(server.url, "Azin", text)
    page = open_chat(server.url + path)
    expect(messages(page)).to_have_text(
        [re.compile("First"), re.compile("Second"), re.compile("Third")])
    vote_button(message(page, "Second"), "Like 0").click()
    expect(vote_button(message(page, "Second"), "Like 1")).to_be_visible()

    page.reload()

    expect(messages(page)).to_have_text(
        [re.compile("First"), re.compile("Second"), re.compile("Third")])
    expect(vote_button(message(page, "Second"), "Like 1")).to_be_visible()


def test_message_posted_over_http_appears_on_both_pages_without_reload(server, open_chat):
    pages = [open_chat(server.url + path) for path in CHAT_PAGES]

    stored = server.post("/messages", {"user": "curl", "text": "Hello from the command line"})
    server.post(f"/messages/{stored['id']}/like")

    for page in pages:
        shown = message(page, "Hello from the command line")
        expect(shown).to_contain_text("curl")
        expect(vote_button(shown, "Like 1")).to_be_visible()


# History in pages


@pytest.mark.config(PAGE_SIZE=5)
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_load_older_shows_earlier_pages_until_the_whole_history_is_there(server, open_chat, path):
    post_lines(server.url, 12)
    page = open_chat(server.url + path)
    older = page.get_by_role("button", name=re.compile("^Load older"))

    expect(messages(page)).to_have_text(lines(8, 12))
    older.click()
    expect(messages(page)).to_have_text(lines(3, 12))
    older.click()
    expect(messages(page)).to_have_text(lines(1, 12))
    expect(older).to_be_hidden()


@pytest.mark.config(PAGE_SIZE=5)
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_votes_on_messages_not_loaded_yet_show_once_they_are(server, open_chat, path):
    post_lines(server.url, 12)
    page = open_chat(server.url + path)
    expect(messages(page)).to_have_count(5)

    for _ in range(3):
        server.post("/messages/2/like")  # not shown yet: the page holds 8 to 12
    server.post("/messages/10/dislike")
    expect(vote_button(message(page, "Line 10"), "Dislike 1")).to_be_visible()
    expect(message(page, "Line 02")).to_have_count(0)
    for shown in (10, 12):  # a page at a time: a second click before the first page came would ask for it again
        page.get_by_role("button", name=re.compile("^Load older")).click()
        expect(messages(page)).to_have_count(shown)

    expect(vote_button(message(page, "Line 02"), "Like 3")).to_be_visible()
    expect(messages(page)).to_have_count(12)


@pytest.mark.config(PAGE_SIZE=5)
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_an_older_page_that_arrives_late_does_not_undo_newer_counts(server, open_chat, path):
    post_lines(server.url, 12)
    page = open_chat(server.url + path)
    held = []
    page.route(re.compile(r"/messages\?before="), lambda route: held.append(route))
    page.get_by_role("button", name=re.compile("^Load older")).click()
    wait_for_held_request(page, held, "the page did not ask for older messages")
    older_page = held[0].fetch()  # the server's answer now: Line 05 has no likes yet

    server.post("/messages/5/like")  # not shown yet
    server.post("/messages/10/like")
    # The like on 10 came after the like on 5, so the page has had news of both.
    expect(vote_button(message(page, "Line 10"), "Like 1")).to_be_visible()
    held[0].fulfill(response=older_page)

    expect(messages(page)).to_have_count(10)
    expect(vote_button(message(page, "Line 05"), "Like 1")).to_be_visible()


@pytest.mark.config(PAGE_SIZE=5)
def test_a_page_catching_up_places_messages_by_id_whatever_order_they_come_in(
        server, store, open_chat):
    for number in range(1, 4):
        store.add("Azin", f"Line {number:02}")
    page = open_chat(server.url + "/polling")
    held = []  # requests for news, held back while the test says so
    holding = True
    page.route(re.compile(r"/messages\?since="),
               lambda route: held.append(route) if holding else route.continue_())
    store.like(1)  # answers the long poll on its way; the next one is held
    wait_for_held_request(page, held, "the page did not ask for news again")

    for number in range(4, 11):
        store.add("Azin", f"Line {number:02}")
    store.like(4)  # now message 4 changed last: it comes after 5 to 10, in the second page
    holding = False
    held[0].continue_()

    expect(messages(page)).to_have_text(lines(1, 10))
    expect(vote_button(message(page, "Line 04"), "Like 1")).to_be_visible()


# Closing


CLOSE_AND_REOPEN = """async ([path, times, oversized]) => {
  const results = [];
  for (let n = 0; n < times; n++) {
    const socket = new WebSocket(`ws://${location.host}${path}`);
    await new Promise((resolve) => socket.addEventListener("message", resolve, { once: true }));
    const closed = new Promise((resolve) => socket.addEventListener("close", resolve, { once: true }));
    if (oversized) socket.send("x".repeat(70000));
    else socket.close();
    const event = await closed;
    results.push({ code: event.code, clean: event.wasClean });
  }
  return results;
}"""


@pytest.mark.parametrize("path", ["/ws", "/hello/ws"])
def test_a_page_that_closes_its_socket_sees_a_clean_close_every_time(server, open_page, path):
    page = open_page(server.url + "/")

    results = page.evaluate(CLOSE_AND_REOPEN, [path, 20, False])

    assert results == [{"code": 1005, "clean": True}] * 20
    # Bytes after the close frame would show as "Invalid frame header" here.
    assert open_page.problems == []


def test_a_page_that_sends_too_big_a_frame_gets_1009_and_a_clean_close(server, open_page):
    page = open_page(server.url + "/")

    results = page.evaluate(CLOSE_AND_REOPEN, ["/ws", 3, True])

    assert results == [{"code": 1009, "clean": True}] * 3
    assert open_page.problems == []


# What a person sees


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_an_empty_chat_says_so_until_the_first_message(server, open_chat, path):
    page = open_chat(server.url + path)
    empty = page.get_by_text("No messages yet")
    expect(empty).to_be_visible()

    post_message(server.url, "Azin", "The first one")

    expect(message(page, "The first one")).to_be_visible()
    expect(empty).to_be_hidden()


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_like_and_dislike_buttons_say_what_they_are_in_words(server, open_chat, path):
    post_message(server.url, "Azin", "Words, not emoji")
    page = open_chat(server.url + path)

    # An emoji needs an emoji font, which many lab machines lack.
    expect(vote_button(message(page, "Words, not emoji"), "Like 0")).to_have_text("Like 0")
    expect(vote_button(message(page, "Words, not emoji"), "Dislike 0")).to_have_text("Dislike 0")


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_the_page_counts_characters_as_the_server_does(server, open_chat, path):
    page = open_chat(server.url + path)

    send(page, "Azin", "🙂" * 1000)  # 2000 UTF-16 units, but 1000 characters: allowed
    expect(message(page, "🙂" * 1000)).to_be_visible()
    send(page, "Azin", "🙂" * 1001)

    expect(page.get_by_role("alert")).to_contain_text("1001 characters, the limit is 1000")


def test_plain_polling_asks_every_interval_without_waiting(server, open_page):
    asked = []
    # On Playwright's clock: each second of the page's time passes at once, when the test says.
    page = open_page(server.url + "/polling?interval=1", clock=True)
    page.on("request", lambda request: asked.append(request.url) if "/messages?" in request.url else None)
    expect(page.get_by_role("status")).to_have_text("connected")

    post_message(server.url, "Azin", "Seen at the next ask")

    while len(asked) < 3:  # one interval, then the next ask
        before = len(asked)
        page.clock.fast_forward(1000)
        let_the_page_run_until(page, lambda: len(asked) > before, "the page did not ask again after 1 s")
    expect(message(page, "Seen at the next ask")).to_be_visible()
    assert all("wait=0" in url for url in asked), asked
    expect(page.get_by_role("heading", name="Plain polling (every 1 s)")).to_be_visible()


def test_a_vote_that_fails_while_a_message_is_on_its_way_is_reported_as_the_votes_error(
        app, server, store, open_chat):
    app.config["MAX_MESSAGES"] = 1  # read by the store: set before anything is stored
    store.max_messages = 1
    store.add("Azin", "Soon dropped")
    page = open_chat(server.url + "/websocket")
    store.add("Ben", "Drops the first")  # the page still shows message 1, the server no longer has it
    expect(messages(page)).to_have_count(2)
    page.get_by_label("Name").fill("Chidi")
    page.get_by_label("Message", exact=True).fill("On its way")

    # Send, then vote on the dropped message, in one go: the vote's error frame
    # comes back while the message is still on its way.
    page.evaluate("""() => {
      document.querySelector("#send-form button[type=submit]").click();
      document.querySelector('li[data-id="1"] button[data-vote=like]').click();
    }""")

    expect(message(page, "On its way")).to_be_visible()
    expect(page.get_by_label("Message", exact=True)).to_have_value("")  # the send worked
    expect(page.get_by_role("alert")).to_contain_text("There is no message with id 1")


# Text that tries to get out of its box


# Runs of 30 combining marks (the most the server takes in a row), half of
# them stacking up from their letter and half down: "Zalgo text".
STACKED_ACCENTS = "\u0301" * 15 + "\u0316" * 15

# The left edge of each character of an element's text, in the order the characters are stored.
CHARACTER_LEFT_EDGES = """element => {
  const text = element.firstChild;
  const range = document.createRange();
  const edges = [];
  for (let i = 0; i < text.length; i++) {
    range.setStart(text, i);
    range.setEnd(text, i + 1);
    edges.push(range.getBoundingClientRect().left);
  }
  return edges;
}"""


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_a_name_ending_in_a_direction_override_does_not_reverse_the_time_after_it(
        server, open_chat, path):
    post_message(server.url, "Azin\u202e", "Which way?")  # U+202E: RIGHT-TO-LEFT OVERRIDE

    page = open_chat(server.url + path, locale="en-US")

    time = message(page, "Which way?").locator("time")
    expect(time).to_have_text(re.compile(r"^\d+:\d\d:\d\d\W+[AP]M$"))
    edges = time.evaluate(CHARACTER_LEFT_EDGES)
    assert edges == sorted(set(edges)), "the time's characters are not shown left to right"


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_stacked_accents_in_a_name_or_a_text_cover_nothing_outside_it(server, open_chat, path):
    name, text = "Zed" + STACKED_ACCENTS, ("a" + STACKED_ACCENTS) * 20
    post_message(server.url, "Azin", "Above")
    post_message(server.url, name, text)
    post_message(server.url, "Ben", "Below")
    page = open_chat(server.url + path, locale="en-US")
    expect(messages(page)).to_have_count(3)
    stacked = messages(page).nth(1)
    own_boxes = [stacked.get_by_text(name, exact=True), stacked.get_by_text(text, exact=True)]
    conversation = page.get_by_role("list", name="Conversation")

    def picture(with_accents):
        """The conversation, with the name's and the text's own boxes painted over."""
        for box in own_boxes:
            box.evaluate("(box, shown) => { box.style.visibility = shown ? '' : 'hidden'; }", with_accents)
        return conversation.screenshot(mask=own_boxes, animations="disabled")

    # Painting the name and the text changes nothing outside their boxes:
    # neither the messages above and below, nor the time and buttons of their own.
    assert picture(with_accents=True) == picture(with_accents=False)
    # Where nothing clips them, they do draw outside: so the check above proves something.
    page.add_style_tag(content="li * { overflow: visible !important; }")
    assert picture(with_accents=True) != picture(with_accents=False)


# Line breaks


@pytest.mark.parametrize("sender_path", CHAT_PAGES)
def test_lines_and_tabs_sent_on_one_page_show_as_lines_and_tabs_on_the_other(
        server, open_chat, sender_path):
    sender = open_chat(server.url + sender_path)
    reader = open_chat(server.url + other_page(sender_path))

    send(sender, "Azin", "def greet():\n\treturn 'Hello!'")

    for page in (sender, reader):
        # innerText is the text as shown: line breaks and tabs that aren't shown become spaces.
        expect(message(page, "def greet")).to_have_text(
            re.compile(r"\ndef greet\(\):\n\treturn 'Hello!'\n"), use_inner_text=True)


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_shift_enter_in_the_message_field_adds_a_line_and_enter_sends(server, open_chat, path):
    page = open_chat(server.url + path)
    page.get_by_label("Name").fill("Azin")
    field = page.get_by_label("Message", exact=True)
    field.fill("First line")

    field.press("Shift+Enter")
    field.press_sequentially("Second line")
    expect(field).to_have_value("First line\nSecond line")
    field.press("Enter")

    # One message, with both lines: Shift+Enter sent nothing.
    expect(messages(page)).to_have_text([re.compile("First line\nSecond line")], use_inner_text=True)
    expect(field).to_have_value("")


# The pages say what happened


@pytest.mark.parametrize("store_kind", BOTH_STORES)
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_an_error_about_the_connection_is_gone_once_it_is_connected_again(
        flask_run, open_chat, path):
    # On Redis the restarted server has the same chat: no reset clears the page.
    page = open_chat(flask_run.url + path, network_errors_expected=True, clock=True)
    status, alert = page.get_by_role("status"), page.get_by_role("alert")
    flask_run.stop()
    expect(status).to_have_text("reconnecting")
    send(page, "Azin", "Is anyone there?")
    expect(alert).to_be_visible()

    flask_run.start()
    retry_now(page)

    expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(alert).to_be_hidden()
    expect(page.get_by_label("Message", exact=True)).to_have_value("Is anyone there?")


@pytest.fixture
def own_redis(start, tmp_path):
    """A redis-server for this test alone, to stop and start; it keeps its data on disk (--appendonly yes)."""
    return start(RedisServer(tmp_path, persistent=True))


@pytest.fixture
def server_on_own_redis(own_redis, request):
    """A live server keeping its chat in `own_redis`; more settings from @pytest.mark.config."""
    marker = request.node.get_closest_marker("config")
    app = create_app({"TESTING": True, **redis_settings(own_redis.url), **(marker.kwargs if marker else {})})
    live = LiveServer(app)
    yield live
    live.stop()
    close_app(app)


def post_once_redis_answers(base_url, user, text):
    """Send a message over HTTP, as a polite client: while the server refuses, wait as it says and ask again.

    503 means it hasn't reached Redis yet. Asking again at once would be a flood,
    and flood control counts the refused asks too, so the wait is Retry-After's.
    """
    def posted():
        answer = request("POST", base_url + "/messages", {"user": user, "text": text})
        if answer.status in (503, 429):
            time.sleep(int(answer.headers["Retry-After"]))
            return False
        assert answer.status == 201, f"{answer.status}: {answer.body[:200]!r}"
        return True

    wait_until(posted)


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_a_new_visitor_while_redis_is_down_sees_why_until_it_is_back(
        server_on_own_redis, own_redis, open_page, path):
    own_redis.stop()

    page = open_page(server_on_own_redis.url + path, network_errors_expected=True, clock=True)  # 503s

    status, alert = page.get_by_role("status"), page.get_by_role("alert")
    expect(status).to_have_text("unavailable")  # the server answers; the chat behind it doesn't
    expect(alert).to_contain_text("can't be reached")
    own_redis.start()
    retry_now(page)
    expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(alert).to_be_hidden()


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_once_redis_is_back_no_error_from_while_it_was_down_stays(
        server_on_own_redis, own_redis, open_chat, path):
    sockets = []
    page = open_chat(server_on_own_redis.url + path, network_errors_expected=True, clock=True,
                     before_goto=lambda page: page.on("websocket", lambda ws: sockets.append(ws)))
    alert = page.get_by_role("alert")
    own_redis.stop()
    # Redis comes back only once the send itself was refused (a page may say "can't be reached" before,
    # from its long poll or a `status` frame, while the send's connection is still tried again).
    if path == "/polling":
        with page.expect_response(lambda answer: answer.request.method == "POST") as answer:
            send(page, "Azin", "While Redis is down")
        assert answer.value.status == 503
    else:
        def refused(payload):
            frame = json.loads(payload)
            return frame["command"] == "error" and "ref" in frame

        with sockets[-1].expect_event("framereceived", predicate=refused):
            send(page, "Azin", "While Redis is down")
    expect(alert).to_contain_text("can't be reached")

    own_redis.start()
    retry_now(page)

    expect(page.get_by_role("status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(alert).to_be_hidden(timeout=RECONNECT_TIMEOUT)
    expect(page.get_by_label("Message", exact=True)).to_have_value("While Redis is down")


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_a_reset_that_kept_the_messages_is_not_announced_as_a_new_chat(
        server_on_own_redis, own_redis, open_chat, path):
    server = server_on_own_redis
    post_message(server.url, "Azin", "Kept by Redis")
    page = open_chat(server.url + path, network_errors_expected=True, clock=True)
    expect(message(page, "Kept by Redis")).to_be_visible()
    epoch = server.get("/messages")["epoch"]

    # Redis restarts and reads its data back from disk: a new epoch (Redis may
    # have lost changes), but here the same messages.
    own_redis.stop()
    own_redis.start()
    retry_now(page)
    post_once_redis_answers(server.url, "Ben", "After Redis restarted")
    assert server.get("/messages")["epoch"] != epoch

    # The page held the old epoch, so what brought the new message was a reset.
    expect(messages(page)).to_have_text(
        [re.compile("Kept by Redis"), re.compile("After Redis restarted")], timeout=RECONNECT_TIMEOUT)
    expect(page.get_by_text("The server restarted")).to_be_hidden()


@pytest.mark.config(RATE_LIMIT=1)
def test_a_socket_closed_for_flooding_says_why_in_the_servers_words(server, open_chat):
    post_message(server.url, "Azin", "Vote on me")
    page = open_chat(server.url + "/websocket", clock=True)
    page.get_by_label("Name").fill("Ben")
    field = page.get_by_label("Message", exact=True)
    field.fill("Sent in a flood")
    like = vote_button(message(page, "Vote on me"), "Like 0").element_handle()
    send_button = page.get_by_role("button", name="Send").element_handle()

    # Like 30 times, then Send, all at once: a runaway script rather than a person.
    page.evaluate("([like, send]) => { for (let n = 0; n < 30; n++) like.click(); send.click(); }",
                  [like, send_button])

    alert = page.get_by_role("alert")
    expect(alert).to_have_text("Too many frames: slow down.")
    expect(field).to_have_value("Sent in a flood")
    # The page connects again, and still says why it was hung up on.
    retry_now(page)
    expect(page.get_by_role("status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(alert).to_have_text("Too many frames: slow down.")


@pytest.mark.config(RATE_LIMIT=1)
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_votes_beyond_the_rate_limit_are_refused_in_the_servers_words_on_both_pages(
        server, store, open_chat, path):
    store.add("Azin", "Vote on me")  # straight into the store: no request to count against the limit
    page = open_chat(server.url + path, network_errors_expected=True)  # 429s
    like = vote_button(message(page, "Vote on me"), "Like 0").element_handle()

    # Five likes at once: three fit in the burst, two are refused.
    page.evaluate("like => { for (let n = 0; n < 5; n++) like.click(); }", like)

    # Whole seconds, as the server says it over HTTP and over the WebSocket alike.
    expect(page.get_by_role("alert")).to_have_text(
        re.compile(r"^Too many changes: at most 1 a second\. Try again in \d+ s\."))
    expect(vote_button(message(page, "Vote on me"), "Like 3")).to_be_visible()


# Keeps the page's WebSockets in `window.pageSockets`, for a test to use as the page's own.
RECORD_PAGE_SOCKETS = """
window.pageSockets = [];
window.WebSocket = class extends WebSocket {
  constructor(...args) {
    super(...args);
    window.pageSockets.push(this);
  }
};
"""


def test_a_socket_closed_for_too_big_a_frame_shows_the_servers_reason(server, open_page):
    page = open_page(server.url + "/websocket", init_script=RECORD_PAGE_SOCKETS)
    expect(page.get_by_role("status")).to_have_text("connected")

    reason = page.evaluate("""() => new Promise((resolve) => {
      const socket = window.pageSockets.at(-1);
      socket.addEventListener("close", (event) => resolve(event.reason));
      socket.send("x".repeat(70000));  // over the server's limit of 64 KiB
    })""")

    assert reason, "the server gave no reason"
    expect(page.get_by_role("alert")).to_have_text(reason)


@pytest.mark.parametrize("user, text", [("Azin", "a" * 1001), ("A" * 51, "Hello"), ("Azin", "   ")],
                         ids=["text too long", "name too long", "blank text"])
@pytest.mark.parametrize("path", CHAT_PAGES)
def test_the_page_words_its_own_checks_as_the_server_does(server, open_chat, path, user, text):
    page = open_chat(server.url + path)

    send(page, user, text)

    expect(page.get_by_role("alert")).to_have_text(server_refusal(server.url, user, text))
    assert server.get("/messages")["messages"] == []


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_an_error_that_appears_does_not_hide_the_newest_message(server, open_chat, path):
    post_lines(server.url, 30)
    page = open_chat(server.url + path)
    newest = message(page, "Line 30")
    expect(newest).to_be_in_viewport(ratio=0.99)  # all but a fraction of a pixel

    send(page, "Azin", "a" * 1001)  # the page refuses it: an error appears under the list

    expect(page.get_by_role("alert")).to_be_visible()
    expect(newest).to_be_in_viewport(ratio=0.99)  # all but a fraction of a pixel


def test_plain_polling_and_long_polling_pages_are_titled_apart(server, open_chat):
    long_polling = open_chat(server.url + "/polling")
    plain_polling = open_chat(server.url + "/polling?interval=2")

    expect(long_polling.get_by_role("heading", level=1)).to_have_text("Long polling")
    expect(long_polling).to_have_title(re.compile("^Long polling"))
    expect(plain_polling.get_by_role("heading", level=1)).to_have_text("Plain polling (every 2 s)")
    expect(plain_polling).to_have_title(re.compile(r"^Plain polling \(every 2 s\)"))


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_while_the_server_is_away_the_page_says_it_reconnects_by_itself_and_clears_that_when_back(
        flask_run, open_chat, path):
    page = open_chat(flask_run.url + path, network_errors_expected=True, clock=True)
    status, alert = page.get_by_role("status"), page.get_by_role("alert")

    flask_run.stop()  # closes the page's WebSocket with 1001, "going away"

    expect(status).to_have_text("reconnecting")
    # Words that ask nothing of the reader, and stay true while the server is down.
    expect(alert).to_have_text("The server is away; reconnecting by itself…")
    flask_run.start()
    retry_now(page)
    expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(alert).to_be_hidden()


@pytest.mark.config(REDIS_SECONDS=1)  # how long a stalled Redis takes to be noticed (default 2 s)
def test_a_websocket_page_shows_a_stalled_redis_in_place_of_connected_never_both(
        server_on_own_redis, own_redis, open_chat):
    page = open_chat(server_on_own_redis.url + "/websocket", network_errors_expected=True)
    status, alert = page.get_by_role("status"), page.get_by_role("alert")

    os.kill(own_redis.process.pid, signal.SIGSTOP)  # Redis accepts connections, and never answers
    try:
        # Nobody sends anything: the page that only watches is told by a `status` frame.
        expect(status).to_have_text("unavailable")
        expect(status).to_have_attribute("data-state", "unavailable")
        expect(alert).to_contain_text("Redis can't be reached")
        expect(page.get_by_text("connected", exact=True)).to_have_count(0)
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)

    expect(status).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    expect(alert).to_be_hidden()
    expect(page.get_by_text("unavailable", exact=True)).to_have_count(0)


PHONE = {"width": 375, "height": 700}


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_on_a_phone_the_message_field_takes_most_of_the_width_and_buttons_are_big_enough_to_touch(
        server, open_chat, path):
    post_message(server.url, "Azin", "Tap me")
    page = open_chat(server.url + path, viewport=PHONE)
    expect(message(page, "Tap me")).to_be_visible()

    name, text = page.get_by_label("Name").bounding_box(), page.get_by_label("Message", exact=True).bounding_box()
    assert text["width"] >= 0.66 * PHONE["width"]
    assert name["width"] >= 120  # a name still fits
    for button in (page.get_by_role("button", name="Send"), vote_button(message(page, "Tap me"), "Like 0"),
                   vote_button(message(page, "Tap me"), "Dislike 0")):
        assert button.bounding_box()["height"] >= 32
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing off the side


@pytest.mark.parametrize("path", CHAT_PAGES)
def test_a_message_with_tabs_or_indented_lines_is_shown_as_code_in_monospace(server, open_chat, path):
    post_message(server.url, "Azin", "def greet():\n    return 'hi'")
    post_message(server.url, "Azin", "if x:\n\ty = 1")
    post_message(server.url, "Azin", "Just words, on\ntwo lines")
    page = open_chat(server.url + path)

    def style_of(text):
        return message(page, text).locator(".text").evaluate(
            "element => [getComputedStyle(element).fontFamily, getComputedStyle(element).whiteSpace]")

    for code in ("def greet", "if x:"):
        font, white_space = style_of(code)
        assert "monospace" in font and white_space in ("pre", "pre-wrap")  # tabs and indents kept
    assert "monospace" not in style_of("Just words")[0]


# A send is confirmed by its own ref


def hold_sends(page):
    """Hold back the page's send-message frames on their way to the server; return (held, forward)."""
    held, server_side = [], []

    def route(socket):
        server = socket.connect_to_server()
        server_side.append(server)

        def from_page(frame):
            if json.loads(frame).get("command") == "send-message":
                held.append(frame)
            else:
                server.send(frame)

        socket.on_message(from_page)

    page.route_web_socket(re.compile(r"/ws\b"), route)

    def forward(frame):
        server_side[-1].send(frame)

    return held, forward


def test_a_page_confirms_its_own_send_by_its_ref_not_by_another_tabs_message_with_the_same_text(
        server, open_chat):
    mine = open_chat(server.url + "/websocket")
    held, forward = hold_sends(mine)
    mine.reload()  # the socket opens again, through the route
    expect(mine.get_by_role("status")).to_have_text("connected")
    other = open_chat(server.url + "/websocket")

    send(mine, "Azin", "ok")
    wait_for_held_request(mine, held, "the page sent no send-message frame")
    expect(mine.get_by_label("Message", exact=True)).to_have_value("ok")  # on its way
    send(other, "Azin", "ok")  # the same name and text, from another tab
    expect(message(mine, "ok")).to_have_count(1)
    # Another tab's message that looks like ours confirms nothing: ours is still on its way.
    expect(mine.get_by_label("Message", exact=True)).to_have_value("ok")

    forward(held[0])
    expect(message(mine, "ok")).to_have_count(2)
    expect(mine.get_by_label("Message", exact=True)).to_have_value("")  # confirmed by its `sent` frame
    expect(other.get_by_label("Message", exact=True)).to_have_value("")


def test_a_send_the_server_refuses_is_never_taken_for_a_success(server, open_chat):
    mine = open_chat(server.url + "/websocket")
    held, forward = hold_sends(mine)
    mine.reload()
    expect(mine.get_by_role("status")).to_have_text("connected")
    other = open_chat(server.url + "/websocket")

    send(mine, "Azin", "ok")
    wait_for_held_request(mine, held, "the page sent no send-message frame")
    send(other, "Azin", "ok")
    expect(message(mine, "ok")).to_have_count(1)
    # Ours reaches the server, which refuses it (a name of 51 characters), under its own ref.
    frame = json.loads(held[0])
    frame["message"]["user"] = "A" * 51
    forward(json.dumps(frame))

    expect(mine.get_by_role("alert")).to_contain_text("Name (user)")
    expect(mine.get_by_label("Message", exact=True)).to_have_value("ok")  # kept, to send again
    assert [m["text"] for m in server.get("/messages")["messages"]] == ["ok"]
