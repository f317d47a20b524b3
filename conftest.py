"""Fixtures shared by the tests: the app, Flask's test client, and real servers."""

import importlib.util
import json
import os
import shutil
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
from store import Store

PROJECT = Path(__file__).parent


ON_CI = os.environ.get("CI") == "true"

# Debian's Chromium, for the browser tests (Playwright's own download can't be used on CI).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

# A module or test that should run on both stores says so with
# @pytest.mark.parametrize("store_kind", BOTH_STORES), which overrides the fixture below.
BOTH_STORES = ["memory", "redis"]


def pytest_configure(config):
    config.addinivalue_line("markers", "config(**settings): settings for the test's app")


@pytest.fixture
def store_kind():
    """The store the test's app uses: the in-memory one, unless the test is parametrized."""
    return "memory"


@pytest.fixture
def store_settings(request, store_kind):
    """The settings that choose the store: for Redis, the tests' own redis-server, emptied."""
    if store_kind == "memory":
        return {}
    redis_server = request.getfixturevalue("redis_server")
    redis_server.client().flushall()
    return {"REDIS_URL": redis_server.url}


@pytest.fixture
def make_store(store_kind, store_settings):
    """A function that makes an empty store of the kind the test runs with, without an app."""
    made = []

    def make(**settings):
        if store_kind == "memory":
            made.append(Store(**settings))
        else:
            from redis_store import RedisStore

            made.append(RedisStore(store_settings["REDIS_URL"], **settings))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def app(request, store_settings):
    """A fresh app with an empty store; a test changes its settings with @pytest.mark.config(KEY=value)."""
    settings = request.node.get_closest_marker("config")
    app = create_app({"TESTING": True, **store_settings, **(settings.kwargs if settings else {})})
    yield app
    close_app(app)


def close_app(app):
    """Stop the app's broadcaster and let go of its store, so tests leave no threads behind."""
    app.extensions["chat"].broadcaster.stop()
    app.extensions["chat"].store.close()


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


def receive_json(ws, timeout=15):
    """Receive one frame and decode it; fail the test (TimeoutError) if nothing comes in time."""
    return json.loads(ws.recv(timeout=timeout))


def receive_until(ws, predicate, timeout=30):
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


def texts(frames):
    """All message texts in a list of answers or `messages` frames, in the order received."""
    return [m["text"] for frame in frames for m in frame.get("messages", ())]  # not in `status` frames


def check_clients_joining_while_others_post(post_to, history_from, sockets_from, total=300, most=30):
    """Post `total` messages from a thread while clients join as the pages do; each must get every one once.

    The messages go to each server of `post_to` in turn. A client joins as the
    polling page loads and the WebSocket page connects: the history from
    `history_from` over HTTP, then `sockets_from`'s /ws from its cursor and
    epoch. Each client must then get every message exactly once, in order, on
    cursors that only grow. (Servers have LiveServer's interface.)
    """
    done = threading.Event()

    def post_continuously():
        for n in range(total):
            post_to[n % len(post_to)].post("/messages", {"user": "poster", "text": f"m{n}"})
        done.set()

    poster = threading.Thread(target=post_continuously)
    poster.start()
    clients = []
    while not done.is_set() and len(clients) < most:
        history = history_from.get("/messages")
        ws = sockets_from.connect(f"/ws?since={history['cursor']}&epoch={history['epoch']}")
        clients.append((history, ws))
    poster.join()
    assert len(clients) >= 5, "too few clients joined while the messages were being posted"
    for history, ws in clients:
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == total)
        assert texts([history]) + texts(frames) == [f"m{n}" for n in range(total)]
        cursors = [frame["cursor"] for frame in frames]
        assert cursors == sorted(set(cursors)), "cursors must grow on every connection"
        assert cursors[0] >= history["cursor"]


def wait_until(condition, timeout=20):
    """Poll `condition` until it holds; fail the test if it doesn't within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def server_threads():
    """How many threads serve connections: werkzeug's, one per request, a WebSocket's included."""
    return sum("process_request" in thread.name for thread in threading.enumerate())


def threads_of(pid):
    """How many threads process `pid` runs, as /proc counts them."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("Threads:")))


def free_port():
    """Return a TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FlaskRun:
    """The app as a learner runs it: `flask run` in a subprocess, which can be restarted.

    It has LiveServer's interface (url, port, connect, get, post, stop), so
    tests written for one read the same for the other.
    """

    name = "flask run"
    stop_seconds = 10  # how long it may take to stop after SIGTERM
    connect, get, post = LiveServer.connect, LiveServer.get, LiveServer.post

    def __init__(self, port, env=None, log=None, open_files=None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.log = log  # a file for the server's output, or None to drop it
        self.open_files = open_files  # a limit of open files, as `ulimit -n` sets it
        self.process = None
        self.clients = ExitStack()  # the WebSocket clients `connect` opened

    def command(self):
        """The command line that starts the server."""
        return [sys.executable, "-m", "flask", "run", "--port", str(self.port)]

    def start(self):
        """Start the server and wait until it answers; return it."""
        command = self.command()
        if self.open_files:
            # As a learner's shell would set it; `exec` keeps the process id, to read its memory.
            command = ["sh", "-c", f'ulimit -n {self.open_files} && exec "$@"', "sh", *command]
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        if self.log:
            output.close()  # the server has its own copy
        deadline = time.monotonic() + 60  # a busy machine can take long to import and bind
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/", timeout=2).close()  # needs no store
                return self
            except OSError:
                assert self.process.poll() is None, f"{self.name} exited"
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"{self.name} did not start within 60 s")

    def stop(self):
        """Close the clients `connect` opened, then stop the server with SIGTERM, as Ctrl+C would.

        Kill it, and fail, if it takes too long.
        """
        self.clients.close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name} did not stop within {self.stop_seconds} s of SIGTERM")


@pytest.fixture
def flask_run(store_settings):
    """A live `flask run` subprocess on a free port, stopped after the test."""
    running = FlaskRun(free_port(), env={f"FLASK_{key}": value for key, value in store_settings.items()})
    running.start()
    yield running
    running.stop()


class RedisServer:
    """A redis-server of the tests' own, on a free port, with its files in `folder`."""

    def __init__(self, folder, persistent=False):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        # Persistent: every write is on disk before Redis answers, so a restart loses nothing.
        self.options = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else [
            "--appendonly", "no"]
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.folder), *self.options],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self):
        """A redis-py client for looking at, or tampering with, what the app stored."""
        import redis

        return redis.Redis.from_url(self.url)

    def _answers(self):
        try:
            return self.client().ping()
        except Exception:  # redis.ConnectionError, while it starts
            return False


def start_redis_server(folder, persistent=False):
    """Start a RedisServer; without redis-server, skip the test (fail it on CI)."""
    if not shutil.which("redis-server"):
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if ON_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = RedisServer(folder, persistent)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole test session; tests that use it empty it first."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


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


def import_fresh(path, name):
    """Import the Python file at `path` as a new module called `name`: a new app, with empty state."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask finds a module's templates/ and static/ through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole test session, for test_browser.py and test_steps.py alike.

    Playwright's sync API runs one instance at a time, so the browser tests of
    every module share this one. Without Playwright or Chromium the test is
    skipped, except on CI (CI=true), where that is an error.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ON_CI:
            raise
        pytest.skip("Playwright is not installed: pip install -r requirements-dev.txt")
    executable = CHROMIUM if Path(CHROMIUM).exists() else None
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except PlaywrightError as error:
            first_line = str(error).splitlines()[0]
            reason = f"Chromium would not start ({CHROMIUM} or Playwright's own): {first_line}"
            if ON_CI:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        yield chromium
        chromium.close()


class Gunicorn(FlaskRun):
    """The app as the README serves it in production: gunicorn, reading gunicorn.conf.py, in a subprocess."""

    name = "gunicorn"
    stop_seconds = 20

    def __init__(self, env=None, options=(), log=None, open_files=None):
        super().__init__(free_port(), env, log, open_files)
        self.options = list(options)  # more command-line options, such as ["-w", "2"]

    def command(self):
        # The README's command, on a free port: `gunicorn 'app:create_app()'`.
        return [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", *self.options,
                "app:create_app()"]


@pytest.fixture
def gunicorn(request, tmp_path):
    """The production server (`Gunicorn`) on a free port; settings from @pytest.mark.config."""
    marker = request.node.get_closest_marker("config")
    env = {f"FLASK_{key}": json.dumps(value) if not isinstance(value, str) else value
           for key, value in (marker.kwargs if marker else {}).items()}
    running = Gunicorn(env, log=tmp_path / "gunicorn.log").start()
    yield running
    running.stop()
