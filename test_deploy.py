"""deploy/nginx.conf in front of gunicorn: the attacks gunicorn alone can't stand, and the chat in Chromium.

Debian's nginx runs as an ordinary process of the test's own, on a free port,
with every file it writes in the test's folder. The shipped configuration is
used as it is, but for its two addresses, and the header and body timeouts
shortened from 10 s to 1 s so that the tests don't wait.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from helpers import (ON_CI, PROJECT, RECONNECT_TIMEOUT, Client, Gunicorn, PageOpener, flask_env, flood_after_headers,
                     free_port, messages, receive_json, receive_until, request, retry_now, send, texts, trickle,
                     wait_until)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHORTER = {"client_header_timeout 10s;": "client_header_timeout 1s;",
           "client_body_timeout 10s;": "client_body_timeout 1s;"}


class Nginx(Client):
    """deploy/nginx.conf served by Debian's nginx on a free port, in front of the app on `upstream_port`."""

    def __init__(self, folder, upstream_port, changes=SHORTER):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.clients = ExitStack()
        site = (PROJECT / "deploy" / "nginx.conf").read_text()
        changes = {"listen 80;": f"listen 127.0.0.1:{self.port};",
                   "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};", **changes}
        for shipped, used in changes.items():
            assert shipped in site, f"deploy/nginx.conf no longer says {shipped!r}"
            site = site.replace(shipped, used)
        (folder / "chat.conf").write_text(site)
        # What Debian's /etc/nginx/nginx.conf would say, with every path in the test's folder.
        (folder / "nginx.conf").write_text(f"""
            {"user root;" if os.geteuid() == 0 else ""}
            worker_processes 1;
            pid {folder}/nginx.pid;
            events {{ worker_connections 4096; }}
            http {{
                access_log {folder}/access.log;
                client_body_temp_path {folder}/client_body;
                proxy_temp_path {folder}/proxy;
                fastcgi_temp_path {folder}/fastcgi;
                uwsgi_temp_path {folder}/uwsgi;
                scgi_temp_path {folder}/scgi;
                include {folder}/chat.conf;
            }}
        """)
        self.process = None

    def start(self):
        """Start nginx and wait until it listens; return it."""
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"), "-e", str(self.folder / "error.log"),
             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self.listens, timeout=20)
        return self

    def listens(self):
        assert self.process.poll() is None, (self.folder / "error.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self):
        self.clients.close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def behind_nginx(request, start, tmp_path):
    """gunicorn, believing one proxy, behind deploy/nginx.conf; settings from @pytest.mark.config."""
    if not os.path.exists(NGINX):
        message = "nginx is not installed (Debian: apt-get install nginx)"
        if ON_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    marker = request.node.get_closest_marker("config")
    settings = {"TRUSTED_PROXIES": 1, **(marker.kwargs if marker else {})}
    options = settings.pop("gunicorn_options", ())
    app = start(Gunicorn(flask_env(settings), options=options, log=tmp_path / "gunicorn.log"))
    (tmp_path / "nginx").mkdir()
    nginx = start(Nginx(tmp_path / "nginx", app.port))
    nginx.app = app
    return nginx


def test_through_nginx_one_address_holds_at_most_the_connections_the_cap_allows(behind_nginx, start, tmp_path):
    (tmp_path / "capped").mkdir()
    capped = start(Nginx(tmp_path / "capped", behind_nginx.app.port,
                         {**SHORTER, "limit_conn chat_addresses 200;": "limit_conn chat_addresses 5;"}))
    for _ in range(5):
        assert receive_json(capped.connect())["command"] == "messages"
    assert capped.request("GET", "/").status == 429  # the sixth, while the five WebSockets are open
    capped.clients.close()
    wait_until(lambda: capped.request("GET", "/").status == 200)


def post_as(url, text, forwarded_for):
    """POST a message claiming, in X-Forwarded-For, to come from `forwarded_for`; return the status."""
    return request("POST", url + "/messages", {"user": "a", "text": text}, {"X-Forwarded-For": forwarded_for}).status


@pytest.mark.config(RATE_LIMIT=1)  # one change a second, in bursts of three
def test_through_nginx_the_chat_works_and_flood_control_counts_the_real_address(behind_nginx):
    ws = behind_nginx.connect()
    assert receive_json(ws)["command"] == "messages"
    statuses = []
    while 429 not in statuses:  # claiming to be someone else buys nothing: nginx names the real address
        statuses.append(post_as(behind_nginx.url, f"m{len(statuses)}", f"203.0.113.{len(statuses)}"))
        assert len(statuses) < 20, "never refused"
    assert statuses[0] == 201
    assert texts(receive_until(ws, lambda frames: len(texts(frames)) == statuses.count(201)))[0] == "m0"


def test_through_nginx_trickled_headers_are_cut_off_and_others_are_served(behind_nginx):
    headers = b"X-Slow: " + b"a" * 60000
    with ThreadPoolExecutor(20) as pool:
        trickling = [pool.submit(trickle, behind_nginx.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", headers)
                     for _ in range(20)]
        assert behind_nginx.request("GET", "/").status == 200
        for answer in trickling:  # nginx answers 408, or just closes
            assert answer.result() == b"" or answer.result().startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("encoding", ["length", "chunked"])
def test_through_nginx_an_endless_body_gets_413_and_others_are_served(behind_nginx, encoding):
    declared = f"Content-Length: {100 * 10**9}" if encoding == "length" else "Transfer-Encoding: chunked"
    headers = (f"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"{declared}\r\n\r\n").encode()
    served = threading.Event()
    with ThreadPoolExecutor() as pool:
        # nginx reads a refused body for lingering_time at most, so that its client sees the 413.
        piece = b"100000\r\n" + b"x" * 0x100000 + b"\r\n" if encoding == "chunked" else b"x" * 2**20
        flooding = [pool.submit(flood_after_headers, behind_nginx.port, headers, 2**40, served, piece)
                    for _ in range(2)]
        for _ in range(5):
            assert behind_nginx.request("GET", "/messages").status == 200
        served.set()
        for flood in flooding:
            answer, _ = flood.result()
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert behind_nginx.get("/messages")["messages"] == []


def open_files(pid):
    """How many files (sockets included) process `pid` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def gunicorn_worker(app):
    """The process id of `app`'s one gunicorn worker."""
    return int(subprocess.run(["pgrep", "-P", str(app.process.pid)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def trickle_then_finish(port, headers, body, finish):
    """Send `headers`, then `body` a byte every 0.3 s until `finish` is set, then the rest; return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(headers)
        sent = 0
        while not finish.wait(0.3):
            raw.sendall(body[sent:sent + 1])
            sent += 1
        raw.sendall(body[sent:])
        return raw.recv(65536)


@pytest.mark.config(RATE_LIMIT=0, gunicorn_options=["--worker-connections", "20"])
def test_through_nginx_trickled_bodies_hold_none_of_gunicorns_connections(behind_nginx):
    # gunicorn alone would give each of these one of its 20 connections, for as long as they trickle.
    body = ('{"user": "slow",' + " " * 30000 + '"text": "trickled"}').encode()  # spaces are JSON too
    headers = (f"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    finish = threading.Event()
    with ThreadPoolExecutor(40) as pool:
        trickling = [pool.submit(trickle_then_finish, behind_nginx.port, headers, body, finish) for _ in range(40)]
        try:
            for _ in range(10):
                assert behind_nginx.request("GET", "/messages").status == 200
        finally:
            finish.set()
        for answer in trickling:  # nginx waited for each body, then passed it on whole
            assert answer.result().startswith(b"HTTP/1.1 201")
    assert len(behind_nginx.get("/messages")["messages"]) == 40


@pytest.mark.config(RATE_LIMIT=0)
def test_through_nginx_large_answers_that_are_never_read_are_held_by_nginx_not_gunicorn(behind_nginx):
    for n in range(200):  # a few MB of JSON for each GET /messages
        behind_nginx.app.post("/messages", {"user": "emoji", "text": "😀" * 1000})
    worker = gunicorn_worker(behind_nginx.app)
    files_before = open_files(worker)
    unread = []
    try:
        for _ in range(60):
            raw = socket.create_connection(("127.0.0.1", behind_nginx.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.sendall(b"GET /messages HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            unread.append(raw)
        # nginx took each answer whole from gunicorn, whose connections are all closed again.
        wait_until(lambda: open_files(worker) <= files_before + 2, timeout=30)
        assert behind_nginx.request("GET", "/messages").status == 200
    finally:
        for raw in unread:
            raw.close()


# The chat in Chromium, through nginx


@pytest.fixture
def pages(browser):
    """Open pages in Chromium; fail at the end if any had a JavaScript error."""
    opener = PageOpener(browser)
    yield opener
    # While the app is away, nginx answers the page's WebSocket handshakes with 502, which the browser logs.
    problems = [problem for problem in opener.problems if "Unexpected response code: 502" not in problem]
    opener.close()
    assert problems == [], "JavaScript errors in the pages:\n" + "\n".join(problems)


# gunicorn waits this long for the polling page's long poll when it stops, not its default 10 s.
@pytest.mark.config(gunicorn_options=["--graceful-timeout", "2"])
def test_through_nginx_both_pages_chat_in_chromium_and_reconnect_after_gunicorn_restarts(behind_nginx, pages):
    from playwright.sync_api import expect

    polling = pages(behind_nginx.url + "/polling", network_errors_expected=True, clock=True)
    websocket = pages(behind_nginx.url + "/websocket", network_errors_expected=True, clock=True)
    for page in (polling, websocket):
        expect(page.get_by_role("status")).to_have_text("connected")
    send(polling, "Azin", "Through nginx, by polling")
    send(websocket, "Ben", "Through nginx, by WebSocket")
    for page in (polling, websocket):
        expect(messages(page)).to_have_text([re.compile("by polling"), re.compile("by WebSocket")])

    app = behind_nginx.app
    app.stop()  # nginx stays; behind it, the app is gone (502) until it is back on the same port
    for page in (polling, websocket):
        expect(page.get_by_role("status")).not_to_have_text("connected")
    app.start()
    for page in (polling, websocket):
        retry_now(page)
    for page in (polling, websocket):
        expect(page.get_by_role("status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT)
    send(websocket, "Ben", "After the restart")
    for page in (polling, websocket):
        expect(messages(page).last).to_contain_text("After the restart")
