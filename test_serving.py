"""Serving it: the production command (gunicorn), idle connections, clean stops, proxies and hosts.

The WebSocket and hostile-client behaviours that matter most run here again
under the README's production command, `gunicorn 'app:create_app()'` with
gunicorn.conf.py (the `gunicorn` fixture), where sockets wait in greenlets.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from app import create_app
from helpers import (PROJECT, PROMPTLY, FlaskRun, FlaskRunTLS, Gunicorn, check_clients_joining_while_others_post,
                     close_app, close_code_received, flask_env, flood_after_headers, flood_with_likes, frames_left,
                     free_port, handshake, history, masked_text_frame, raw_websocket, read_server_frame, receive_json,
                     receive_until, redis_settings, send_frame, texts, trickle, wait_until)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads process details from /proc")

# Shorter timers than the real ones, so that no test waits them out: a connection that completes
# no request is closed after REQUEST_SECONDS (default 10). Long enough for the other clients of
# a test to be served while it lasts (the tests check that it still does).
QUICK = {"FLASK_REQUEST_SECONDS": "2"}
# Under gunicorn a request's line and headers have its keep-alive time (gunicorn.conf.py: 5 s) instead.
QUICK_KEEP_ALIVE = ["--keep-alive", "2"]
# At the open-file limit, the idle connections must outlast the measurement of the CPU used there.
AT_THE_LIMIT = {"FLASK_REQUEST_SECONDS": "4"}
AT_THE_LIMIT_KEEP_ALIVE = ["--keep-alive", "4"]


# The WebSocket protocol under gunicorn


def test_under_gunicorn_posts_and_frames_reach_every_socket_and_get(gunicorn):
    epoch = gunicorn.get("/messages")["epoch"]
    watcher, sender = gunicorn.connect(), gunicorn.connect()
    for ws in (watcher, sender):
        assert receive_json(ws) == {"command": "messages", "messages": [], "cursor": 0, "epoch": epoch,
                                    "reset": False, "more": False}

    gunicorn.post("/messages", {"user": "Azin", "text": "posted"})
    send_frame(sender, {"command": "send-message", "message": {"user": "Bo", "text": "sent"}})
    send_frame(sender, {"command": "like", "id": 1})

    for ws in (watcher, sender):
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == 3)
        assert set(texts(frames)) == {"posted", "sent"}
    assert history(gunicorn) == (3, [("posted", 1, 0), ("sent", 0, 0)])
    assert gunicorn.connect("/hello/ws").recv(timeout=PROMPTLY) == "Hello"


@pytest.mark.config(RATE_LIMIT=0, PAGE_SIZE=1000)  # 300 posts as fast as they go; one page
def test_under_gunicorn_clients_connecting_while_others_post_get_every_message_exactly_once(gunicorn):
    check_clients_joining_while_others_post(post_to=[gunicorn], history_from=gunicorn, sockets_from=gunicorn)


def test_under_gunicorn_a_10_mb_frame_gets_a_close_frame_with_1009_and_nothing_is_stored(gunicorn):
    raw = raw_websocket(gunicorn.port)
    try:
        raw.settimeout(PROMPTLY)
        assert read_server_frame(raw)[0] == 0x1  # the first `messages` frame
        raw.sendall(masked_text_frame("x" * (10 * 2**20)))
        assert close_code_received(raw) == 1009
    finally:
        raw.close()
    assert history(gunicorn) == (0, [])


def test_under_gunicorn_sockets_that_keep_flooding_get_error_frames_then_1008(gunicorn):
    gunicorn.post("/messages", {"user": "Azin", "text": "like me"})
    sockets = [gunicorn.connect(max_queue=None) for _ in range(3)]
    for ws in sockets:
        receive_json(ws)
    close_frames = flood_with_likes(sockets)
    for ws in sockets:
        assert close_frames.get(ws) is not None and close_frames[ws].code == 1008
        refusals = [frame for frame in frames_left(ws) if frame["command"] == "error"]
        assert refusals and all("Too many changes" in frame["error"] for frame in refusals)
    assert gunicorn.get("/messages")["messages"][0]["likes"] <= 3 * 30 + 3 * 10 * 2 * PROMPTLY


@pytest.mark.config(RATE_LIMIT=0)
def test_under_gunicorn_frames_before_a_close_are_carried_out_and_nothing_follows_our_close_frame(gunicorn):
    raw = raw_websocket(gunicorn.port)
    try:
        raw.settimeout(PROMPTLY)
        read_server_frame(raw)
        frames = b"".join(masked_text_frame(json.dumps(
            {"command": "send-message", "message": {"user": "script", "text": f"last words {n}"}}))
            for n in range(5))
        close = bytes([0x88, 0x82]) + b"\0\0\0\0" + (1000).to_bytes(2, "big")  # masked with zeros
        raw.sendall(frames + close)
        received = b""
        while chunk := raw.recv(65536):  # until the server closes the connection
            received += chunk
    finally:
        raw.close()
    # Our answer to the client's close frame is the last thing sent: 0x88, 2 bytes, code 1000.
    assert received.endswith(b"\x88\x02" + (1000).to_bytes(2, "big"))
    assert [text for text, _, _ in history(gunicorn)[1]] == [f"last words {n}" for n in range(5)]


# Capacity: refused before the upgrade, never left waiting


def test_under_gunicorn_websockets_beyond_capacity_get_503_while_pages_and_the_api_answer(start, tmp_path):
    # 20 connections at once: 4 kept for pages, then 10 for WebSockets and 5 for long polls.
    server = start(Gunicorn(options=["--worker-connections", "20"], log=tmp_path / "gunicorn.log"))
    held = []
    try:
        for _ in range(10):
            raw, status = handshake(server.port)
            assert status.startswith("HTTP/1.1 101"), status
            held.append(raw)
        for _ in range(3):
            raw, status = handshake(server.port)
            raw.close()
            assert status.startswith("HTTP/1.1 503"), status
        for path in ("/", "/websocket", "/static/chat.js", "/messages"):
            assert server.request("GET", path).status == 200, path
        assert server.post("/messages", {"user": "Azin", "text": "still here"})["id"] == 1
        for raw in held:  # every socket still gets what happens
            assert read_server_frame(raw)[0] == 0x1
            assert b"still here" in read_server_frame(raw)[1]
    finally:
        for raw in held:
            raw.close()
    assert "Room for 10 WebSockets and 5 waiting long polls" in server.output()


# Stopping: every socket hears 1001, and the server is gone in seconds


def flask_run(tmp_path, **env):
    """A FlaskRun, not yet started, logging to the test's folder."""
    return FlaskRun(env=env, log=tmp_path / "flask.log")


class FlaskDebugRun(FlaskRun):
    """`flask --debug run`: a first process that restarts, at every saved file, a second that serves."""

    name = "flask --debug run"

    def command(self):
        return [sys.executable, "-m", "flask", "--debug", "run", "--port", str(self.port)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("kind", ["flask run", "flask --debug run", "gunicorn"])
def test_stopping_the_server_closes_every_websocket_with_1001_and_it_exits_promptly(
        kind, signum, start, tmp_path, request):
    # The server starts with Ctrl+C's default disposition, as from a terminal, however this
    # suite was started (conftest.py's pytest_configure: a background job ignores SIGINT).
    if kind == "gunicorn":
        # Two workers share one chat through Redis (without it, gunicorn.conf.py refuses to start).
        redis_url = request.getfixturevalue("redis_server").url
        server = start(Gunicorn(flask_env(redis_settings(redis_url)), options=["-w", "2"],
                                log=tmp_path / "server.log"))
        # Both workers have set up the app, and how they stop (a worker still starting exits as gunicorn's do).
        wait_until(lambda: server.output().count("stopping it closes its WebSockets") == 2)
    elif kind == "flask --debug run":
        server = start(FlaskDebugRun(log=tmp_path / "server.log"))
    else:
        server = start(flask_run(tmp_path))
    with ExitStack() as clients:
        sockets = [clients.enter_context(connect(f"ws://127.0.0.1:{server.port}/ws")) for _ in range(4)]
        for ws in sockets:
            receive_json(ws)
        # Ctrl+C signals every process of the terminal's foreground group; `kill` the one named.
        stopped = [server.process.pid]
        if signum == signal.SIGINT:
            stopped += map(int, subprocess.run(["pgrep", "-P", str(server.process.pid)],
                                               capture_output=True, text=True).stdout.split())
        for pid in stopped:
            os.kill(pid, signum)
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=PROMPTLY)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        server.process.wait(timeout=PROMPTLY)  # else `start` kills it after the test
    log = server.output()
    assert "SIGKILL" not in log and "Traceback" not in log, log


# Connections that say nothing are closed, and keep no one waiting


@pytest.mark.parametrize("kind", ["flask run", "gunicorn"])
def test_a_connection_that_sends_no_request_is_closed_and_others_are_served_meanwhile(kind, start, tmp_path):
    if kind == "gunicorn":
        server = start(Gunicorn(env=QUICK, options=QUICK_KEEP_ALIVE, log=tmp_path / "server.log"))
    else:
        server = start(flask_run(tmp_path, **QUICK))
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        assert server.request("GET", "/").status == 200
        with pytest.raises(BlockingIOError):  # served while the silent one was still held open
            silent.recv(1, socket.MSG_DONTWAIT)
        silent.settimeout(30)  # an upper bound: the server closes it after REQUEST_SECONDS
        assert silent.recv(1) == b""


def test_under_flask_run_cert_a_client_that_never_starts_tls_keeps_no_one_waiting(start, tmp_path):
    server = start(FlaskRunTLS(tmp_path, env=QUICK))
    with socket.create_connection(("127.0.0.1", server.port)) as silent:  # and never a ClientHello
        for _ in range(3):
            assert server.request("GET", "/messages").status == 200
        assert receive_json(server.connect(open_timeout=PROMPTLY))["command"] == "messages"
        with pytest.raises(BlockingIOError):  # served while the silent one was still held open
            silent.recv(1, socket.MSG_DONTWAIT)
        silent.settimeout(30)  # an upper bound: the server closes it after REQUEST_SECONDS
        assert silent.recv(1) == b""  # closed by the server


def cpu_seconds(pid):
    """The CPU time process `pid` has used so far, all threads together."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("kind", ["flask run", "gunicorn"])
def test_at_its_open_file_limit_the_server_pauses_instead_of_spinning_and_recovers(kind, start, tmp_path):
    if kind == "gunicorn":
        server = start(Gunicorn(env=AT_THE_LIMIT, options=AT_THE_LIMIT_KEEP_ALIVE, log=tmp_path / "server.log",
                                open_files=64))
    else:
        server = start(FlaskRun(env=AT_THE_LIMIT, log=tmp_path / "server.log", open_files=64))
    processes = [server.process.pid] + [int(pid) for pid in subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()]
    idle = []
    try:
        for _ in range(80):  # more than the server has files for; the rest wait in its queue
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.5)  # let it take what it can
        used_before = sum(map(cpu_seconds, processes))
        time.sleep(1)  # a measurement: a server that spins uses about all of it
        used = sum(map(cpu_seconds, processes)) - used_before
        assert used < 0.5, f"{used:.1f} s of CPU in 1 s at the open-file limit: spinning"
        with pytest.raises(BlockingIOError):  # still held open: it was measured at the limit
            idle[0].recv(1, socket.MSG_DONTWAIT)
        # The idle connections are closed after REQUEST_SECONDS, and a new client is served.
        assert server.request("GET", "/", timeout=60).status == 200
    finally:
        for raw in idle:
            raw.close()


# Behind a proxy: TRUSTED_PROXIES


def post_from(client, address, text, **headers):
    """POST a message through a proxy that says the request came from `address`."""
    return client.post("/messages", json={"user": "proxied", "text": text},
                       headers={"X-Forwarded-For": address, **headers})


@pytest.mark.parametrize("proxies, separate", [(1, True), (0, False)])
def test_flood_control_counts_the_address_a_trusted_proxy_forwards_and_ignores_it_otherwise(
        proxies, separate):
    # One change a second, in bursts of three.
    app = create_app({"TESTING": True, "TRUSTED_PROXIES": proxies, "RATE_LIMIT": 1})
    try:
        client = app.test_client()
        statuses = []
        while 429 not in statuses:  # the first address uses up its allowance
            statuses.append(post_from(client, "203.0.113.1", f"m{len(statuses)}").status_code)
            assert len(statuses) < 100, "never refused"
        others = [post_from(client, "203.0.113.2", f"another client {n}").status_code for n in range(3)]
        if separate:
            assert others == [201, 201, 201]  # a burst of its own
        else:
            assert 429 in others  # at most the token or two that came back meanwhile
    finally:
        close_app(app)


@pytest.mark.config(TRUSTED_PROXIES=1)
def test_with_trusted_proxies_an_origin_matching_the_forwarded_host_is_this_site(client):
    headers = {"Origin": "https://chat.example", "X-Forwarded-Host": "chat.example",
               "X-Forwarded-Proto": "https"}
    assert post_from(client, "203.0.113.1", "through the proxy", **headers).status_code == 201


def test_without_trusted_proxies_a_forwarded_host_changes_nothing(client):
    headers = {"Origin": "https://chat.example", "X-Forwarded-Host": "chat.example"}
    assert post_from(client, "203.0.113.1", "through the proxy", **headers).status_code == 403


@pytest.mark.parametrize("proxies, opens", [(1, True), (0, False)])
def test_a_websocket_through_a_trusted_proxy_opens_with_the_pages_origin(start, tmp_path, proxies, opens):
    server = start(flask_run(tmp_path, FLASK_TRUSTED_PROXIES=str(proxies)))
    headers = {"Origin": "https://chat.example", "X-Forwarded-Host": "chat.example",
               "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.1"}
    if opens:
        assert receive_json(server.connect(additional_headers=headers))["command"] == "messages"
    else:
        with pytest.raises(InvalidStatus) as refused:
            server.connect(additional_headers=headers)
        assert refused.value.response.status_code == 403


def test_a_host_not_in_flask_trusted_hosts_gets_400(start, tmp_path):
    server = start(flask_run(tmp_path, FLASK_TRUSTED_HOSTS='["chat.example", "127.0.0.1"]'))
    assert server.request("GET", "/messages").status == 200
    assert server.request("GET", "/messages", headers={"Host": "rebound.example"}).status == 400


@pytest.mark.config(RATE_LIMIT=0)  # one sender, as fast as it goes
def test_under_gunicorn_a_client_that_never_reads_delays_no_one(gunicorn):
    # Under gevent, a send that would wait makes the broadcaster wait, unless
    # connection.py sends through the socket underneath gevent's.
    stalled = raw_websocket(gunicorn.port, receive_buffer=4096)  # never reads a byte
    try:
        watcher = gunicorn.connect(max_queue=None)
        sender = gunicorn.connect(max_queue=None)
        receive_json(watcher)
        receive_json(sender)
        total, text = 8000, "x" * 990  # 9 MB: more than the stalled client's buffers hold
        for n in range(total):
            send_frame(sender, {"command": "send-message", "message": {"user": "flood", "text": f"{n} {text}"}})
        frames = receive_until(watcher, lambda frames: frames and frames[-1]["cursor"] == total, timeout=60)
        assert [int(text.split()[0]) for text in texts(frames)] == list(range(total))
    finally:
        stalled.close()


# Requests that trickle, and bodies that are refused


def start_server(start, kind, tmp_path, env=None, options=()):
    """Start the server `kind` ("flask run" or "gunicorn") with `start`, logging to the test's folder."""
    if kind == "gunicorn":
        return start(Gunicorn(env, options=options, log=tmp_path / "server.log"))
    return start(FlaskRun(env=env, log=tmp_path / "server.log"))


# A request gets one second; gunicorn gives its line and headers its keep-alive time.
ONE_SECOND = {"FLASK_REQUEST_SECONDS": "1"}
QUICK_GUNICORN = ["--keep-alive", "1"]


@pytest.mark.parametrize("kind", ["flask run", "gunicorn"])
def test_headers_trickled_a_byte_at_a_time_are_cut_off_while_others_are_served(kind, start, tmp_path):
    server = start_server(start, kind, tmp_path, ONE_SECOND, QUICK_GUNICORN if kind == "gunicorn" else ())
    endless_header = b"X-Slow: " + b"a" * 60000  # 50 minutes at this pace
    with ThreadPoolExecutor() as pool:
        trickling = pool.submit(trickle, server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                endless_header)
        assert server.request("GET", "/").status == 200
        assert trickling.result() == b""  # closed, with no answer to an unfinished request


@pytest.mark.parametrize("kind", ["flask run", "gunicorn"])
def test_a_body_trickled_a_byte_at_a_time_gets_408_and_closes_and_nothing_is_stored(kind, start, tmp_path):
    server = start_server(start, kind, tmp_path, ONE_SECOND)
    body = json.dumps({"user": "slow", "text": "a" * 60000}).encode()
    headers = (f"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    answer = trickle(server.port, headers, body)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert history(server) == (0, [])


@pytest.mark.parametrize("refusal, content_type", [(413, "application/json"), (415, "text/plain")])
@pytest.mark.parametrize("kind", ["flask run", "gunicorn"])
def test_a_refused_endless_body_is_not_read_on_and_others_are_served(
        kind, refusal, content_type, start, tmp_path):
    server = start_server(start, kind, tmp_path)
    headers = (f"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {100 * 10**9}\r\n\r\n").encode()
    with ThreadPoolExecutor() as pool:
        flooding = [pool.submit(flood_after_headers, server.port, headers) for _ in range(2)]
        assert server.request("GET", "/").status == 200
        for flood in flooding:
            answer, _ = flood.result()  # the server closed the connection, long before 1 GB
            assert answer.startswith(f"HTTP/1.1 {refusal}".encode()), answer[:200]
            if kind == "flask run":  # gunicorn writes its own Connection header, whatever the app says
                assert b"connection: close" in answer.lower()
    assert server.request("GET", "/").status == 200


# Mistakes refused or named


def test_several_gunicorn_workers_without_redis_refuse_to_start_saying_what_to_set():
    env = {key: value for key, value in os.environ.items() if key != "FLASK_REDIS_URL"}
    refused = subprocess.run([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{free_port()}",
                              "app:create_app()"], cwd=PROJECT, env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
    assert "2 workers without FLASK_REDIS_URL would be 2 separate chats" in refused.stderr
    assert "FLASK_REDIS_URL=redis://" in refused.stderr


def test_the_start_up_log_names_the_in_memory_store(start, tmp_path):
    server = start_server(start, "flask run", tmp_path)
    server.stop()
    assert "The chat is kept in this process's memory" in server.output()


def test_the_start_up_log_names_the_redis_store_without_its_password(caplog):
    url = f"redis://chat:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens: the app starts anyway
    with caplog.at_level("INFO"):
        app = create_app({"TESTING": True, "REDIS_URL": url})
    close_app(app)
    assert "The chat is kept in Redis at redis://chat:***@127.0.0.1:" in caplog.text
    assert "s3cret" not in caplog.text


def test_werkzeug_is_left_as_it_is_outside_flask_run():
    import werkzeug.serving

    import serving

    app = create_app({"TESTING": True})
    close_app(app)
    assert werkzeug.serving.ThreadedWSGIServer is not serving.ThreadedServer
    assert not issubclass(werkzeug.serving.ThreadedWSGIServer, serving.ThreadedServer)
