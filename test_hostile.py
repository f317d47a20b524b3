"""Hostile and clumsy clients, against a real server: huge numbers, broken handshakes,
invisible text, writes from other sites, oversized frames, floods and far-behind clients.

Each test tries what a student's `for` loop, a page on another site or a
hand-written client would try, and checks the answer the contract promises.
What the server stored is always read back over HTTP, as any client would.
"""

import http.client
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from wsproto.frame_protocol import FrameProtocol

from app import create_app
from helpers import (PROMPTLY, Answer, FlaskRun, LiveServer, close_app,
                     close_code_received, flood_with_likes, frames_left, history, masked_text_frame,
                     on_both_stores, raw_websocket, read_server_frame, receive_json, receive_until, send_frame,
                     server_threads, wait_until)

FIVE_THOUSAND_DIGITS = "9" * 5000


# Helpers


def post_json(server, path, message=None, origin=None):
    """POST `message` as JSON (nothing, for a vote), with `origin` as Origin if given; return the Answer."""
    return server.request("POST", path, message, {"Origin": origin} if origin else {})


@pytest.fixture(scope="module")
def shared_server():
    """One live server for the tests of input that must change nothing; each compares before and after.

    Flood control is off, so that the many bad requests of these tests can't be
    refused for their number instead of for what they hold.
    """
    live = LiveServer(create_app({"TESTING": True, "RATE_LIMIT": 0, "PAGE_SIZE": 5,
                                  "ALLOWED_ORIGINS": ["http://friend.example"]}))
    live.post("/messages", {"user": "Azin", "text": "already here"})
    yield live
    live.stop()
    close_app(live.app)


# Numbers of 5000 digits


@pytest.mark.parametrize("query, argument", [
    (f"since={FIVE_THOUSAND_DIGITS}", "since"),
    (f"wait={FIVE_THOUSAND_DIGITS}", "wait"),
    (f"before={FIVE_THOUSAND_DIGITS}", "before"),
    (f"before=5&limit={FIVE_THOUSAND_DIGITS}", "limit"),
])
def test_query_numbers_of_5000_digits_get_400_naming_the_argument(shared_server, query, argument):
    answer = shared_server.request("GET", "/messages?" + query)
    assert answer.status == 400
    assert answer.json["error"].startswith(f"{argument} must be a whole number")
    assert len(answer.json["error"]) < 200  # says what is wrong without quoting it all


@pytest.mark.parametrize("path, body", [
    ("/messages", '{"user": "Azin", "text": %s}' % FIVE_THOUSAND_DIGITS),
    ("/messages", '{"user": "Azin", "text": "Hi", "id": %s}' % FIVE_THOUSAND_DIGITS),
    (f"/messages/{FIVE_THOUSAND_DIGITS}/like", None),
    (f"/messages/{FIVE_THOUSAND_DIGITS}/dislike", None),
])
def test_numbers_of_5000_digits_in_a_body_or_a_vote_url_get_a_json_4xx_and_change_nothing(
        shared_server, path, body):
    before = history(shared_server)
    headers = {"Content-Type": "application/json"} if body else {}
    answer = shared_server.request("POST", path, body and body.encode(), headers)
    assert 400 <= answer.status < 500
    assert answer.json["error"]
    assert history(shared_server) == before


# Broken WebSocket handshakes


@pytest.fixture(scope="module")
def logged_flask_run(tmp_path_factory):
    """One `flask run`, its log kept in a file, for the handshake tests (they change nothing)."""
    running = FlaskRun(log=tmp_path_factory.mktemp("flask") / "flask.log").start()
    yield running
    running.stop()


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}
KEY = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize("path, headers, complaint", [
    ("/ws", {**UPGRADE, "Sec-WebSocket-Version": "13"}, "Sec-WebSocket-Key"),
    ("/hello/ws", {**UPGRADE, "Sec-WebSocket-Version": "13"}, "Sec-WebSocket-Key"),
    ("/ws", {**UPGRADE, **KEY, "Sec-WebSocket-Key": "c2hvcnQ="}, "Sec-WebSocket-Key"),
    ("/ws", {**UPGRADE, **KEY, "Sec-WebSocket-Version": "8"}, "Sec-WebSocket-Version"),
    ("/ws", {**UPGRADE, "Sec-WebSocket-Key": KEY["Sec-WebSocket-Key"]}, "Sec-WebSocket-Version"),
    (f"/ws?since={FIVE_THOUSAND_DIGITS}", {**UPGRADE, **KEY}, "since must be a whole number"),
    ("/ws", {}, "WebSocket"),  # a plain GET, as a browser's address bar sends
    ("/ws", {"Upgrade": "websocket", **KEY}, "WebSocket"),  # no "Connection: Upgrade"
], ids=["no key", "no key on hello", "short key", "version 8", "no version", "since of 5000 digits",
        "plain GET", "no Connection header"])
def test_broken_handshakes_get_400_with_a_reason_and_one_log_line_without_traceback(
        logged_flask_run, path, headers, complaint):
    logged_before = len(logged_flask_run.output())
    answer = logged_flask_run.request("GET", path, headers=headers)
    assert answer.status == 400
    assert complaint in answer.json["error"]
    if complaint == "Sec-WebSocket-Version":  # RFC 6455, 4.4: say which version we speak
        assert answer.headers["Sec-WebSocket-Version"] == "13"
    # werkzeug logs the request once it has been answered.
    wait_until(lambda: '" 400 ' in logged_flask_run.output()[logged_before:], timeout=PROMPTLY)
    logged = logged_flask_run.output()[logged_before:]
    assert "Traceback" not in logged
    assert len(logged.splitlines()) == 1, logged
    assert f"GET {path} HTTP/1.1" in logged


# Invisible text, control characters, invalid UTF-8, chunked bodies


@pytest.mark.parametrize("body, complaint", [
    (b'{"user": "Azin", "text": "\\u200b"}', "visible character"),
    ('{"user": "Azin", "text": "\u200b\u200b \u2060"}'.encode(), "visible character"),
    (b'{"user": "\\u200b", "text": "Hello"}', "visible character"),
    (b'{"user": "Azin", "text": "\\u0001\\u0002"}', "control characters"),
    (b'{"user": "Azin", "text": "bell \\u0007"}', "control characters"),
    (b'{"user": "Azin", "text": "\xff\xfe Hello"}', "not valid UTF-8"),
    (b'{"user": "Azin", "text": "\xc3 Hello"}', "not valid UTF-8"),
], ids=["only U+200B", "only invisible", "invisible user", "\\x01\\x02", "bell", "\\xff\\xfe",
        "truncated sequence"])
def test_invisible_text_control_characters_and_invalid_utf8_get_400_and_nothing_is_stored(
        shared_server, body, complaint):
    before = history(shared_server)
    answer = shared_server.request("POST", "/messages", body,
                          {"Content-Type": "application/json"})
    assert answer.status == 400
    assert complaint in answer.json["error"]
    assert history(shared_server) == before


def post_chunked(server, body, content_type="application/json", encoding="chunked"):
    """POST `body` in chunks of 8 KB, with no Content-Length; return the Answer."""
    chunks = [body[start:start + 8192] for start in range(0, len(body), 8192)]
    request = (f"POST /messages HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
               f"Content-Type: {content_type}\r\nTransfer-Encoding: {encoding}\r\n"
               "Connection: close\r\n\r\n").encode()
    request += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=PROMPTLY) as raw:
        raw.sendall(request)
        # Read the answer by its Content-Length: werkzeug keeps the connection
        # open after it, reading whatever else the client might send.
        response = http.client.HTTPResponse(raw)
        response.begin()
        return Answer(response)


@pytest.mark.parametrize("encoding", ["chunked", "Chunked", "CHUNKED"])  # header values ignore case
def test_a_chunked_body_over_the_size_limit_gets_413_and_is_not_cut_short_and_stored(server, encoding):
    # Valid JSON followed by spaces: cut anywhere past the closing brace, it still
    # reads as a message, so storing a cut body would show here.
    body = b'{"user": "Azin", "text": "chunked"}'
    answer = post_chunked(server, body + b" " * (72 * 1024 - len(body)), encoding=encoding)
    assert answer.status == 413
    assert answer.json["error"]
    assert history(server) == (0, [])


@pytest.mark.parametrize("encoding", ["chunked", "Chunked"])
def test_a_chunked_body_that_is_not_declared_json_gets_415(server, encoding):
    answer = post_chunked(server, b'{"user": "Azin", "text": "no-cors"}', "text/plain", encoding)
    assert answer.status == 415
    assert history(server) == (0, [])


@pytest.mark.parametrize("text, complaint", [
    ("\u200b", "visible character"),
    ("\x01\x02", "control characters"),
])
def test_invisible_or_control_text_over_a_socket_gets_an_error_frame_and_nothing_is_stored(
        shared_server, text, complaint):
    before = history(shared_server)
    ws = shared_server.connect()
    receive_json(ws)
    send_frame(ws, {"command": "send-message", "message": {"user": "Azin", "text": text}})
    error = receive_json(ws)
    assert error["command"] == "error"
    assert complaint in error["error"]
    assert history(shared_server) == before
    ws.close()


# Writes come from this site only


@pytest.mark.parametrize("content_type", [
    "text/plain;charset=UTF-8",  # what fetch(url, {method: "POST", mode: "no-cors", body}) sends
    "application/x-www-form-urlencoded",  # what a <form> on another site sends
    "multipart/form-data; boundary=x",
])
def test_a_post_that_is_not_declared_json_gets_415_and_nothing_is_stored(
        shared_server, content_type):
    before = history(shared_server)
    body = json.dumps({"user": "Azin", "text": "no-cors"}).encode()
    answer = shared_server.request("POST", "/messages", body, {"Content-Type": content_type})
    assert answer.status == 415
    assert "application/json" in answer.json["error"]
    assert history(shared_server) == before


WRITES = [
    ("/messages", {"user": "Azin", "text": "in your name"}),
    ("/messages/1/like", None),
    ("/messages/1/dislike", None),
]


@pytest.mark.parametrize("origin, allowed", [
    ("http://evil.example", False),
    ("http://127.0.0.1:1", False),  # the same host on another port is another site
    ("null", False),  # a sandboxed frame or a file:// page
    ("same", True),
    (None, True),  # curl, scripts: not a browser page
    ("http://friend.example", True),  # in ALLOWED_ORIGINS
])
@pytest.mark.parametrize("path, message", WRITES, ids=["post", "like", "dislike"])
def test_writes_from_pages_of_other_sites_get_403_and_change_nothing_and_this_sites_go_through(
        shared_server, origin, allowed, path, message):
    cursor, shown = history(shared_server)
    answer = post_json(shared_server, path, message,
                       origin=shared_server.url if origin == "same" else origin)
    if allowed:
        assert answer.status in (200, 201)
        assert history(shared_server)[0] == cursor + 1
    else:
        assert answer.status == 403
        assert "may not change this chat" in answer.json["error"]
        assert history(shared_server) == (cursor, shown)


class OtherSite:
    """A second web server, on another port: another origin, serving one page."""

    def __init__(self, page):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


def visit_in_chromium(browser, url, done):
    """Open `url` in Chromium until the JavaScript expression `done` holds; return the (method, url, status)
    of each response it got."""
    responses = []
    context = browser.new_context()
    try:
        page = context.new_page()
        page.on("response", lambda response: responses.append(
            (response.request.method, response.url, response.status)))
        page.goto(url)
        page.wait_for_function(done, timeout=PROMPTLY * 1000)
    finally:
        context.close()
    return responses


def test_a_page_on_another_site_can_not_post_or_like_with_no_cors_fetches(server, browser):
    server.post("/messages", {"user": "Azin", "text": "here first"})
    page = """<!doctype html><title>elsewhere</title><script>
      const chat = %s;
      // "Simple" requests: the browser sends them without asking the chat first.
      Promise.allSettled([
        fetch(chat + "/messages", {method: "POST", mode: "no-cors",
                                   body: JSON.stringify({user: "x", text: "y"})}),
        fetch(chat + "/messages/1/like", {method: "POST", mode: "no-cors"}),
      ]).then(() => { document.title = "sent"; });
    </script>""" % json.dumps(server.url)
    with OtherSite(page) as other_site:
        responses = visit_in_chromium(browser, other_site.url, "document.title === 'sent'")
    # The requests reached the chat, and it said no.
    assert sorted((method, url, status) for method, url, status in responses
                  if url.startswith(server.url)) == [
        ("POST", server.url + "/messages", 403),
        ("POST", server.url + "/messages/1/like", 403),
    ]
    assert history(server) == (1, [("here first", 0, 0)])


# Error frames quote a short part of what was sent


@pytest.mark.parametrize("command", [
    "x" * 40_000,
    "\U0001F600" * 16_000,  # 64,000 bytes, just under the frame limit (60,000 emoji: see below)
], ids=["40 KB", "16,000 emoji"])
def test_an_error_frame_quotes_only_a_short_part_of_a_long_unknown_command(
        shared_server, command):
    ws = shared_server.connect()
    receive_json(ws)
    send_frame(ws, {"command": command})
    error = ws.recv(timeout=PROMPTLY)
    assert len(error.encode()) < 300
    assert json.loads(error)["command"] == "error"
    assert "Unknown command" in json.loads(error)["error"]
    ws.close()


# Frames over the size limit, counted in bytes


def test_a_frame_of_60000_emoji_is_over_the_limit_in_bytes_and_closes_with_1009(server):
    ws = server.connect()
    receive_json(ws)
    text = "\U0001F600" * 60_000  # 240 KB in UTF-8, yet under 65,536 characters
    send_frame(ws, {"command": "send-message", "message": {"user": "Azin", "text": text}})
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=PROMPTLY)
    assert closed.value.rcvd.code == 1009
    assert history(server) == (0, [])


@pytest.mark.parametrize("megabytes", [5, 10])
def test_a_client_sending_megabytes_in_one_frame_receives_1009_promptly(server, megabytes):
    ws = server.connect()
    receive_json(ws)
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        ws.send("x" * (megabytes * 2**20))
        ws.recv(timeout=PROMPTLY)
    assert closed.value.rcvd is not None, "the connection ended without a close frame"
    assert closed.value.rcvd.code == 1009
    assert time.monotonic() - started < PROMPTLY
    assert history(server) == (0, [])


def test_a_raw_client_that_writes_a_whole_10_mb_frame_then_reads_gets_a_close_frame_with_1009(
        server):
    raw = raw_websocket(server.port)
    try:
        raw.settimeout(PROMPTLY)
        assert read_server_frame(raw)[0] == 0x1  # the first `messages` frame
        started = time.monotonic()
        raw.sendall(masked_text_frame("x" * (10 * 2**20)))  # a reset here would fail the test
        assert close_code_received(raw) == 1009
        assert time.monotonic() - started < PROMPTLY
    finally:
        raw.close()
    assert history(server) == (0, [])


# Flood control

RATE_LIMIT = 10  # the default
BURST = 3 * RATE_LIMIT
# How long a flood lasts: long enough that a per-connection allowance would let through
# several times the shared one, which is the burst and RATE_LIMIT a second.
FLOOD_SECONDS = 2


def test_likes_flooded_over_one_socket_are_applied_at_the_rate_limit_and_never_after_it_closes(
        server, broadcaster):
    server.post("/messages", {"user": "Azin", "text": "like me"})
    raw = raw_websocket(server.port)
    read_server_frame(raw)
    like = masked_text_frame(json.dumps({"command": "like", "id": 1}))
    flood = memoryview(like * 1000)
    raw.settimeout(0.2)
    sent_bytes = 0
    started = time.monotonic()
    while time.monotonic() - started < FLOOD_SECONDS:
        try:
            sent_bytes += raw.send(flood[sent_bytes % len(flood):])
        except TimeoutError:
            continue  # the server reads no more for now: TCP makes us wait
        except OSError:
            break  # the server hung up on the flood
    raw.close()
    sent = sent_bytes // len(like)
    applied = history(server)[1][0][1]
    assert applied <= RATE_LIMIT * (time.monotonic() - started) + BURST + 5
    assert sent >= 10 * applied, f"only {sent} likes sent: not a flood"
    # What was sent but not yet carried out is dropped with the connection: once its
    # route has ended, nothing more was applied.
    wait_until(lambda: not broadcaster.subscribers)
    assert history(server)[1][0][1] == applied


def test_sockets_that_keep_flooding_get_error_frames_then_1008_and_the_server_logs_no_error(
        server, caplog):
    server.post("/messages", {"user": "Azin", "text": "like me"})
    threads_before = server_threads()
    # Several at once, each reading everything it is sent, as a browser does.
    sockets = [server.connect(max_queue=None) for _ in range(6)]
    for ws in sockets:
        receive_json(ws)
    started = time.monotonic()
    close_frames = flood_with_likes(sockets)
    elapsed = time.monotonic() - started
    for ws in sockets:
        assert ws in close_frames, f"still open after {PROMPTLY} s of flooding"
        assert close_frames[ws] is not None and close_frames[ws].code == 1008
        refusals = [frame for frame in frames_left(ws) if frame["command"] == "error"]
        assert refusals and all("Too many changes" in frame["error"] for frame in refusals)
    likes = history(server)[1][0][1]
    assert likes <= len(sockets) * (RATE_LIMIT * elapsed + BURST + 5)
    wait_until(lambda: server_threads() <= threads_before, timeout=PROMPTLY)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


@on_both_stores  # Redis keeps the counts for all processes
def test_a_burst_of_posts_beyond_the_limit_gets_429_with_retry_after_and_is_not_stored(server):
    answers = [post_json(server, "/messages", {"user": "Azin", "text": f"burst {n}"})
               for n in range(BURST + 20)]
    statuses = [answer.status for answer in answers]
    assert statuses[:BURST] == [201] * BURST
    refused = [answer for answer in answers if answer.status == 429]
    assert refused, statuses
    assert set(statuses) == {201, 429}
    for answer in refused:
        assert int(answer.headers["Retry-After"]) >= 1
        assert "Too many changes" in answer.json["error"]
    stored = [text for text, _, _ in history(server)[1]]
    assert stored == [f"burst {n}" for n, status in enumerate(statuses) if status == 201]


@pytest.mark.config(RATE_LIMIT=0)  # flood control off, as for the benchmark
def test_with_rate_limit_0_the_same_burst_of_posts_is_all_stored(server):
    answers = [post_json(server, "/messages", {"user": "Azin", "text": f"burst {n}"})
               for n in range(BURST + 20)]
    assert [answer.status for answer in answers] == [201] * (BURST + 20)
    assert history(server)[0] == BURST + 20


# Error frames echo `ref`


@pytest.mark.parametrize("ref", ["m-17", 17, 2.5, "r" * 64])
@pytest.mark.parametrize("command", [
    {"command": "shout"},
    {"command": "like", "id": 99},
    {"command": "send-message", "message": {"user": "Azin", "text": ""}},
], ids=["unknown", "unknown id", "empty text"])
def test_an_error_frame_echoes_the_ref_of_the_command_that_caused_it(
        shared_server, ref, command):
    ws = shared_server.connect()
    receive_json(ws)
    send_frame(ws, {**command, "ref": ref})
    error = receive_json(ws)
    assert error["command"] == "error"
    assert error["ref"] == ref
    ws.close()


@pytest.mark.parametrize("ref", ["r" * 65, ["m-17"], {"id": 1}, True])
def test_a_ref_too_long_or_neither_text_nor_a_number_gets_an_error_and_the_command_is_not_carried_out(
        shared_server, ref):
    before = history(shared_server)
    ws = shared_server.connect()
    receive_json(ws)
    send_frame(ws, {"command": "like", "id": 1, "ref": ref})
    error = receive_json(ws)
    assert error["command"] == "error"
    assert '"ref"' in error["error"]
    assert "ref" not in error
    assert history(shared_server) == before
    ws.close()


# History in pages


def ids(answer):
    """The ids of the messages in an answer, in its order."""
    return [m["id"] for m in answer["messages"]]


@on_both_stores
@pytest.mark.config(PAGE_SIZE=5, RATE_LIMIT=0)
def test_older_history_comes_in_pages_before_the_oldest_message_shown(server):
    for n in range(1, 13):
        server.post("/messages", {"user": "Azin", "text": f"m{n}"})
    first = server.get("/messages")
    assert ids(first) == [8, 9, 10, 11, 12]
    assert first["more"] is True
    pages = [first]
    while pages[-1]["more"]:
        assert len(pages) < 5, "paging back did not end"
        pages.append(server.get(f"/messages?before={ids(pages[-1])[0]}&limit=5"))
    assert [ids(page) for page in pages] == [[8, 9, 10, 11, 12], [3, 4, 5, 6, 7], [1, 2]]
    assert [page["more"] for page in pages] == [True, True, False]
    assert all(page["cursor"] == 12 and page["epoch"] == first["epoch"] for page in pages)
    assert ids(server.get("/messages?before=8&limit=2")) == [6, 7]


@pytest.mark.parametrize("query, complaint", [  # the shared server's PAGE_SIZE is 5
    ("before=5&limit=0", "limit must be from 1 to 5"),
    ("before=5&limit=6", "limit must be from 1 to 5"),
    ("before=5&limit=-1", "limit must be a whole number"),
    ("before=5&limit=abc", "limit must be a whole number"),
    ("before=-5", "before must be a whole number"),
    ("before=5&since=0", "before can't be combined"),
    ("before=5&wait=1", "before can't be combined"),
])
def test_bad_before_pages_get_400_with_a_reason(shared_server, query, complaint):
    answer = shared_server.request("GET", "/messages?" + query)
    assert answer.status == 400
    assert complaint in answer.json["error"]


def make_changes_while_a_client_is_away(server):
    """Post three messages, then nine more with likes and dislikes on old and new ones mixed in.

    Return the cursor after the first three, and what a client that left then
    must receive: {id: (text, likes, dislikes)} of each message changed since.
    """
    for n in range(1, 4):
        server.post("/messages", {"user": "Azin", "text": f"m{n}"})
    away_at = server.get("/messages")["cursor"]
    changed = {}

    def vote(message_id, vote):
        server.post(f"/messages/{message_id}/{vote}")
        text, likes, dislikes = changed.get(message_id, (f"m{message_id}", 0, 0))
        changed[message_id] = (text, likes + (vote == "like"), dislikes + (vote == "dislike"))

    for n in range(4, 13):
        server.post("/messages", {"user": "Bo", "text": f"m{n}"})
        changed[n] = (f"m{n}", 0, 0)
        if n % 3 == 0:
            vote(1, "like")
            vote(n - 1, "like")
        if n % 4 == 0:
            vote(2, "dislike")
    vote(5, "dislike")
    return away_at, changed


def states(messages):
    """{id: (text, likes, dislikes)} of a list of messages."""
    return {m["id"]: (m["text"], m["likes"], m["dislikes"]) for m in messages}


@on_both_stores
@pytest.mark.config(PAGE_SIZE=5, RATE_LIMIT=0)
def test_a_far_behind_client_catches_up_over_http_in_pages_with_no_gap_and_no_repeat(server):
    away_at, changed = make_changes_while_a_client_is_away(server)
    epoch = server.get("/messages")["epoch"]
    cursor, received, answers = away_at, [], 0
    while True:
        answer = server.get(f"/messages?since={cursor}&epoch={epoch}")
        answers += 1
        assert answers <= 5, "catching up did not end"
        assert len(answer["messages"]) <= 5
        assert answer["reset"] is False and answer["more"] is False
        received += answer["messages"]
        if answer["cursor"] == cursor:
            break
        cursor = answer["cursor"]
    assert answers >= 3  # 11 changed messages, in pages of 5
    assert sorted(m["id"] for m in received) == sorted(changed)  # each once: no gap, no repeat
    assert states(received) == changed
    assert cursor == server.get("/messages")["cursor"]


@on_both_stores
@pytest.mark.config(PAGE_SIZE=5, RATE_LIMIT=0)
def test_a_far_behind_client_catches_up_over_a_socket_in_pages_with_no_gap_and_no_repeat(server):
    away_at, changed = make_changes_while_a_client_is_away(server)
    latest = server.get("/messages")
    ws = server.connect(f"/ws?since={away_at}&epoch={latest['epoch']}")
    received, cursors = [], []
    while not cursors or cursors[-1] < latest["cursor"]:
        frame = receive_json(ws)
        assert len(frame["messages"]) <= 5
        received += frame["messages"]
        cursors.append(frame["cursor"])
    assert len(cursors) >= 3
    assert cursors == sorted(set(cursors))
    assert sorted(m["id"] for m in received) == sorted(changed)
    assert states(received) == changed
    ws.close()


# What a client sent before it closed counts


@on_both_stores
@pytest.mark.config(RATE_LIMIT=0)  # 5 trials of 10 frames, from one address
def test_frames_sent_just_before_a_close_frame_are_all_carried_out(server):
    for trial in range(5):
        raw = raw_websocket(server.port)
        read_server_frame(raw)
        # Ten frames and the close frame in one write: they reach the server together.
        frames = b"".join(masked_text_frame(json.dumps(
            {"command": "send-message", "message": {"user": "Azin", "text": f"{trial}-{n}"}}))
            for n in range(10))
        raw.sendall(frames + bytes(FrameProtocol(client=True, extensions=[]).close(1000)))
        raw.settimeout(PROMPTLY)
        assert close_code_received(raw) == 1000
        raw.close()
        wait_until(lambda: history(server)[0] == 10 * (trial + 1), timeout=PROMPTLY)
    assert [text for text, _, _ in history(server)[1]] == [
        f"{trial}-{n}" for trial in range(5) for n in range(10)]


@pytest.mark.config(RATE_LIMIT=0)  # 20 connections from one address
def test_a_script_that_connects_sends_one_message_and_closes_has_sent_it(server):
    for n in range(20):
        with server.connect() as ws:
            send_frame(ws, {"command": "send-message", "message": {"user": "Azin", "text": f"hi {n}"}})
    wait_until(lambda: history(server)[0] == 20, timeout=PROMPTLY)
    assert [text for text, _, _ in history(server)[1]] == [f"hi {n}" for n in range(20)]


# Flood control and places count per client address, not per connection


def connect_from(server, address, path="/ws"):
    """Open a WebSocket from the local address `address` (any of 127.0.0.0/8: another client)."""
    raw = socket.create_connection(("127.0.0.1", server.port), source_address=(address, 0))
    return server.clients.enter_context(
        connect(f"ws://127.0.0.1:{server.port}{path}", sock=raw, max_size=None))


def post_from(server, address, path="/messages", message=None):
    """POST `message` as JSON from the local address `address`; return the Answer."""
    return server.request("POST", path, message, source_address=(address, 0))


def send_message_command(text):
    return {"command": "send-message", "message": {"user": "Azin", "text": text}}


def test_reconnecting_buys_no_new_allowance(server, broadcaster):
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < FLOOD_SECONDS:
        with server.connect(max_queue=None) as ws:  # a new connection for every 29 messages
            receive_json(ws)
            for _ in range(29):
                send_frame(ws, send_message_command(f"reconnect {sent}"))
                sent += 1
    elapsed = time.monotonic() - started
    wait_until(lambda: not broadcaster.subscribers)  # every frame sent has been dealt with
    stored = history(server)[0]
    assert stored <= RATE_LIMIT * elapsed + BURST + 5
    assert sent >= 5 * stored, f"only {sent} messages sent: not a flood"


def test_many_sockets_from_one_address_share_one_allowance(server, broadcaster):
    sockets = [server.connect(max_queue=None) for _ in range(50)]
    for ws in sockets:
        receive_json(ws)
    started = time.monotonic()
    for n in range(5):
        for ws in sockets:
            send_frame(ws, send_message_command(f"socket {n}"))
    for ws in sockets:
        ws.close()
    wait_until(lambda: not broadcaster.subscribers)
    assert history(server)[0] <= RATE_LIMIT * (time.monotonic() - started) + BURST + 5


@pytest.mark.config(RATE_LIMIT=1)  # a token a second: a refusal holds long enough to try both ways
def test_http_and_websocket_changes_of_an_address_share_one_allowance_and_one_wording(server):
    ws = server.connect()
    receive_json(ws)
    started = time.monotonic()
    for n in range(50):  # the burst of 3, then a refusal
        refused = post_json(server, "/messages", {"user": "Azin", "text": f"post {n}"})
        if refused.status == 429:
            break
    assert refused.status == 429
    # Three, no more: past a burst's worth of refusals in a row (3 here) the
    # socket is closed as a flood, maybe before a fourth could be sent.
    for n in range(3):
        send_frame(ws, {**send_message_command(f"frame {n}"), "ref": f"m-{n}"})
    frames = receive_until(ws, lambda frames: any(frame["command"] == "error" for frame in frames))
    refusals = [frame for frame in frames if frame["command"] == "error"]
    assert {frame["ref"] for frame in refusals} <= {f"m-{n}" for n in range(3)}
    # At most the burst of 3, and a token a second since, however it was asked for:
    # an allowance for each connection would have let 3 more through at once.
    assert history(server)[0] <= 3 + (time.monotonic() - started) + 1
    # The same words both ways, in whole seconds: "... Try again in 1 s."
    http_words = refused.json["error"]
    assert http_words.startswith("Too many changes: at most 1 a second. Try again in ")
    assert http_words.endswith(f" {refused.headers['Retry-After']} s.")
    assert all(frame["error"].startswith(http_words.rsplit(" ", 2)[0]) for frame in refusals)

    # Another address has an allowance of its own.
    cursor = history(server)[0]
    assert post_from(server, "127.0.0.2", message={"user": "Bo", "text": "my own"}).status == 201
    other = connect_from(server, "127.0.0.3")
    receive_json(other)
    send_frame(other, send_message_command("mine too"))
    wait_until(lambda: "mine too" in [text for text, _, _ in history(server)[1]])
    assert history(server)[0] >= cursor + 2


@pytest.mark.config(MAX_SOCKETS_PER_ADDRESS=5)
def test_an_address_holds_at_most_max_sockets_per_address_websockets(server, broadcaster):
    sockets = [server.connect() for _ in range(5)]
    for ws in sockets:
        receive_json(ws)
    with pytest.raises(InvalidStatus) as refused:
        server.connect()
    assert refused.value.response.status_code == 429
    assert b"already has 5 WebSockets" in refused.value.response.body
    assert server.request("GET", "/messages").status == 200  # the API still answers it

    elsewhere = connect_from(server, "127.0.0.2")  # another client is not refused
    assert receive_json(elsewhere)["command"] == "messages"
    sockets[0].close()
    wait_until(lambda: len(broadcaster.subscribers) == 5)
    again = server.connect()  # its place came back
    assert receive_json(again)["command"] == "messages"


@pytest.mark.config(MAX_SOCKETS_PER_ADDRESS=3)
def test_an_address_holds_at_most_max_sockets_per_address_waiting_long_polls(server):
    long_polls = server.app.extensions["chat"].long_polls
    cursor = history(server)[0]
    answers = []

    def long_poll():
        answers.append(server.request("GET", f"/messages?since={cursor}&wait=20"))

    waiting = [threading.Thread(target=long_poll) for _ in range(3)]
    for thread in waiting:
        thread.start()
    wait_until(lambda: long_polls.count == 3)
    refused = server.request("GET", f"/messages?since={cursor}&wait=20")
    assert refused.status == 429
    assert "already has 3 requests waiting" in refused.json["error"]
    assert server.request("GET", f"/messages?since={cursor}").status == 200  # not waiting: fine

    post_json(server, "/messages", {"user": "Azin", "text": "wake up"})
    for thread in waiting:
        thread.join(PROMPTLY)
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert long_polls.count == 0


# Compressed frames


def test_compression_is_never_negotiated_so_no_frame_inflates_past_the_limit(server):
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=PROMPTLY)
    raw.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += raw.recv(1)
    assert response.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-extensions" not in response.lower()
    read_server_frame(raw)
    # A compressed frame anyway (RSV1 set): 100 KB of zeros that would inflate to 100 MB.
    import zlib
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15).compress(b"\0" * 100 * 2**20)
    mask = b"\1\2\3\4"
    header = bytes([0xC1, 0xFF]) + len(deflated).to_bytes(8, "big") + mask
    raw.sendall(header + bytes(byte ^ mask[i % 4] for i, byte in enumerate(deflated)))
    assert close_code_received(raw) == 1002  # a protocol error: nothing was inflated
    raw.close()
    assert history(server) == (0, [])


# Refs that JSON can't hold


@pytest.mark.parametrize("ref", ["NaN", "Infinity", "-Infinity", "1e999", str(2**53 + 1)])
def test_a_ref_that_json_or_javascript_cannot_hold_is_refused_and_every_frame_stays_json(
        shared_server, ref):
    before = history(shared_server)
    ws = shared_server.connect()
    receive_json(ws)
    ws.send('{"command": "like", "id": 1, "ref": %s}' % ref)  # as a hand-written client sends it
    text = ws.recv(timeout=PROMPTLY)
    error = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON: {text}"))
    assert error["command"] == "error"
    assert '"ref"' in error["error"] and "ref" not in error
    assert history(shared_server) == before
    ws.close()
