"""Fixtures shared by the tests: the app, Flask's test client, and real servers."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.sync.client import connect
from werkzeug.serving import make_server

from app import create_app

PROJECT = Path(__file__).parent


def pytest_configure(config):
    config.addinivalue_line("markers", "config(**settings): settings for the test's app")


@pytest.fixture
def app(request):
    """A fresh app with an empty store; a test changes its settings with @pytest.mark.config(KEY=value)."""
    settings = request.node.get_closest_marker("config")
    return create_app({"TESTING": True, **(settings.kwargs if settings else {})})


@pytest.fixture
def client(app):
    """Flask's test client, for HTTP requests without a network."""
    return app.test_client()


@pytest.fixture
def store(app):
    """The app's store, to look at what requests changed."""
    return app.extensions["chat"].store


class LiveServer:
    """A real threaded server for `app` on a free port, in a thread of this process."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.clients = ExitStack()

    def connect(self, path="/ws", **options):
        """Open a real WebSocket client (python-websockets) to `path`; it is closed by `stop()`."""
        # Like a browser, accept frames of any size: one frame may hold a long history.
        options.setdefault("max_size", None)
        return self.clients.enter_context(connect(f"ws://127.0.0.1:{self.port}{path}", **options))

    def get(self, path):
        """GET `path` and return the decoded JSON."""
        with urllib.request.urlopen(self.url + path, timeout=35) as response:
            return json.load(response)

    def post(self, path, body=None):
        """POST JSON to `path` and return the decoded JSON answer."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def stop(self):
        self.clients.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(app):
    """A live server running the `app` fixture."""
    live = LiveServer(app)
    yield live
    live.stop()


def receive_json(ws, timeout=5):
    """Receive one frame and decode it; fail the test (TimeoutError) if nothing comes in time."""
    return json.loads(ws.recv(timeout=timeout))


def receive_until(ws, predicate, timeout=10):
    """Receive `messages` frames until `predicate(frames)` holds; return all frames received."""
    frames = []
    deadline = time.monotonic() + timeout
    while not predicate(frames):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"gave up after {timeout} s with {len(frames)} frames"
        try:
            frames.append(json.loads(ws.recv(timeout=remaining)))
        except TimeoutError:
            pass
    return frames


def wait_until(condition, timeout=20):
    """Poll `condition` until it holds; fail the test if it doesn't within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def server_threads():
    """How many threads serve connections: werkzeug's, one per request, and simple-websocket's readers."""
    return sum("process_request" in thread.name or "simple_websocket" in thread.name
               for thread in threading.enumerate())


def free_port():
    """Return a TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FlaskRun:
    """The app as a learner runs it: `flask run` in a subprocess, which can be restarted."""

    def __init__(self, port, env=None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "run", "--port", str(self.port)],
            cwd=PROJECT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/messages", timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, "flask run exited"
                time.sleep(0.1)
        raise AssertionError("flask run did not start within 15 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def flask_run():
    """A live `flask run` subprocess on a free port, stopped after the test."""
    running = FlaskRun(free_port())
    running.start()
    yield running
    running.stop()


@pytest.fixture
def broadcaster(app):
    """The app's broadcaster, to look at its registry of sockets."""
    return app.extensions["chat"].broadcaster


def raw_websocket(port, path="/ws", receive_buffer=None):
    """Do a WebSocket handshake by hand and return the plain socket: a client that reads only if told to."""
    raw = socket.socket()
    if receive_buffer:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    raw.connect(("127.0.0.1", port))
    raw.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = raw.recv(1)
        assert chunk, "server closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return raw
