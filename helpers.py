"""What the tests share besides fixtures: servers to run, clients to talk to them, and waiting for conditions.

conftest.py holds the fixtures; the test modules import these helpers from
here, and never from one another.
"""

import http.client
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from werkzeug.serving import make_server
from wsproto.frame_protocol import FrameProtocol

PROJECT = Path(__file__).parent

ON_CI = os.environ.get("CI") == "true"

# Debian's Chromium, for the browser tests (Playwright's own download can't be used on CI).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

# A module or test that should run on both stores says so with
# @pytest.mark.parametrize("store_kind", BOTH_STORES), which overrides conftest's fixture
# `store_kind`. Everything else runs on the in-memory store.
BOTH_STORES = ["memory", "redis"]
# The decorator for it: for tests of what the store does, which must hold on both.
on_both_stores = pytest.mark.parametrize("store_kind", BOTH_STORES)

# Seconds: an upper bound for "it never happened", long enough not to blame a busy
# machine, short enough to catch a hang. Never a measure of speed.
PROMPTLY = 10


def close_app(app):
    """Stop the app's broadcaster and let go of its store, so tests leave no threads behind."""
    app.extensions["chat"].broadcaster.stop()
    app.extensions["chat"].store.close()


# Waiting for conditions, never for fixed times


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


def rss_kb(pid):
    """The resident memory of process `pid`, in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def free_port():
    """Return a TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# HTTP


class Answer:
    """An HTTP answer: its status, its headers and its body; `json` decodes the body."""

    def __init__(self, response):
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    @property
    def json(self):
        """The body, decoded; read after the status, so that a 500's HTML page fails on the status."""
        return json.loads(self.body)


def request(method, url, body=None, headers=None, timeout=PROMPTLY, **options):
    """Send one HTTP request and return its Answer, whatever its status.

    A dict or list `body` is sent as JSON, with its Content-Type; bytes are sent
    exactly as given, with exactly the `headers` given. `options` go to
    http.client's connection: `context` for https, `source_address`, ...
    """
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout, **options)
    try:
        connection.request(method, urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                           body=body, headers=headers)
        return Answer(connection.getresponse())
    finally:
        connection.close()


class Client:
    """What a test does with a server at `self.url`: HTTP requests and WebSocket clients.

    LiveServer, FlaskRun and Gunicorn have it, so tests written for one read
    the same for the others. A subclass sets `url`, `port` and `clients`.
    """

    def connect(self, path="/ws", **options):
        """Open a real WebSocket client (python-websockets) to `path`; it is closed when the server stops."""
        # Like a browser, accept frames of any size: one frame may hold a long history.
        options.setdefault("max_size", None)
        return self.clients.enter_context(connect(self.url.replace("http", "ws", 1) + path, **options))

    def request(self, method, path, body=None, headers=None, **options):
        """Send an HTTP request to `path` (see `request`) and return its Answer."""
        return request(method, self.url + path, body, headers, **options)

    def answers(self, path="/"):
        """True if the server gives `path` an HTTP answer at all (while it starts, it may not)."""
        try:
            self.request("GET", path, timeout=2)
            return True
        except OSError:
            return False

    def get(self, path):
        """GET `path` and return the decoded JSON; fail the test unless it is a 200."""
        answer = self.request("GET", path, timeout=35)  # long enough for any long poll
        assert answer.status == 200, f"GET {path}: {answer.status} {answer.body[:200]!r}"
        return answer.json

    def post(self, path, body=None):
        """POST JSON to `path` (nothing, for a vote) and return the decoded JSON; fail the test on an error."""
        answer = self.request("POST", path, body)
        assert answer.status < 300, f"POST {path}: {answer.status} {answer.body[:200]!r}"
        return answer.json


def history(server):
    """What the server stored, as a first load sees it: (cursor, [(text, likes, dislikes), ...])."""
    answer = server.get("/messages")
    return answer["cursor"], [(m["text"], m["likes"], m["dislikes"]) for m in answer["messages"]]


# Servers


def flask_env(settings):
    """Flask settings as the environment gives them to `flask run` or gunicorn: FLASK_KEY, in JSON unless text."""
    return {f"FLASK_{key}": value if isinstance(value, str) else json.dumps(value) for key, value in settings.items()}


class LiveServer(Client):
    """A real threaded server for `app` on a free port, in a thread of this process."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        # It checks for `stop()` this often (werkzeug's default, 0.5 s, is what each test would wait).
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)
        self.thread.start()
        self.clients = ExitStack()

    def stop(self):
        self.clients.close()
        self.server.shutdown()
        self.server.server_close()


class FlaskRun(Client):
    """The app as a learner runs it: `flask run` in a subprocess, which can be restarted."""

    name = "flask run"
    stop_signal = signal.SIGTERM  # as `kill` sends it
    stop_seconds = 10  # how long it may take to stop after `stop_signal`
    cwd = PROJECT  # where it starts, and finds app.py

    def __init__(self, port=None, env=None, log=None, open_files=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.log = log  # a file for the server's output, or None to drop it
        self.open_files = open_files  # a limit of open files, as `ulimit -n` sets it
        self.process = None
        self.launched = False  # by `launch`, and not yet waited for by `start`
        self.clients = ExitStack()  # the WebSocket clients `connect` opened

    def command(self):
        """The command line that starts the server."""
        return [sys.executable, "-m", "flask", "run", "--port", str(self.port)]

    def launch(self):
        """Start the server's process without waiting for it, so that several start side by side; return it."""
        command = self.command()
        if self.open_files:
            # As a learner's shell would set it; `exec` keeps the process id, to read its memory.
            command = ["sh", "-c", f'ulimit -n {self.open_files} && exec "$@"', "sh", *command]
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=self.cwd, env=self.env, stdout=output,
                                        stderr=subprocess.STDOUT)
        if self.log:
            output.close()  # the server has its own copy
        self.launched = True
        return self

    def start(self):
        """Start the server (unless `launch` just did) and wait until it answers; return it."""
        if not self.launched:
            self.launch()
        self.launched = False
        deadline = time.monotonic() + 60  # a busy machine can take long to import and bind
        while not self.answers("/"):  # a page: needs no store
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} exited or did not start within 60 s"
                                     + (f":\n{self.output()}" if self.log else ""))
            time.sleep(0.02)  # asking costs little: a refused connection
        return self

    def stop(self):
        """Close the clients `connect` opened, then stop the server with `stop_signal`.

        Kill it, and fail, if it takes too long.
        """
        self.clients.close()
        if self.process and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name} did not stop within {self.stop_seconds} s of SIGTERM")

    def output(self):
        """What the server has logged so far."""
        return Path(self.log).read_text(encoding="utf-8", errors="replace")


class Gunicorn(FlaskRun):
    """The app as the README serves it in production: gunicorn, reading gunicorn.conf.py, in a subprocess."""

    name = "gunicorn"
    # gunicorn's quick stop (SIGQUIT; Ctrl+C's SIGINT is the same): its workers close their
    # WebSockets with 1001 and exit at once. Its graceful stop, SIGTERM, waits out the gevent
    # worker's one-second loop, a second per test; test_serving.py and test_install.py check it.
    stop_signal = signal.SIGQUIT
    stop_seconds = 20

    def __init__(self, env=None, options=(), log=None, open_files=None):
        super().__init__(free_port(), env, log, open_files)
        self.options = list(options)  # more command-line options, such as ["-w", "2"]

    def command(self):
        # The README's command, on a free port: `gunicorn 'app:create_app()'`.
        return [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", *self.options,
                "app:create_app()"]


def self_signed_certificate(folder):
    """Make a certificate and key for 127.0.0.1 with openssl; return their paths. Without openssl, skip (CI: fail)."""
    if not shutil.which("openssl"):
        if ON_CI:
            pytest.fail("openssl is not installed", pytrace=False)
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class FlaskRunTLS(FlaskRun):
    """`flask run --cert --key`: the app over https, with a certificate of its own that only the tests trust."""

    def __init__(self, folder, env=None):
        super().__init__(env=env, log=folder / "flask.log")
        self.cert, self.key = self_signed_certificate(folder)
        self.url = f"https://127.0.0.1:{self.port}"
        self.trust = ssl.create_default_context(cafile=self.cert)

    def command(self):
        return [*super().command(), "--cert", str(self.cert), "--key", str(self.key)]

    def request(self, method, path, body=None, headers=None, **options):
        return super().request(method, path, body, headers, context=self.trust, **options)

    def connect(self, path="/ws", **options):
        return super().connect(path, ssl=self.trust, **options)


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
        """Start redis-server and wait until it answers; return it. Without redis-server, skip (CI: fail)."""
        if not shutil.which("redis-server"):
            message = "redis-server is not installed (Debian: apt-get install redis-server)"
            if ON_CI:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.folder), *self.options],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10)
        return self

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


def redis_settings(url):
    """The settings of an app on the Redis at `url`, as tests run it."""
    # The listener checks for changes and for closing this often when idle (default 1 s):
    # quickly, so that no test waits for it.
    return {"REDIS_URL": url, "REDIS_POLL_SECONDS": 0.05}


def start_redis_server(folder, persistent=False):
    """Start a RedisServer and return it."""
    return RedisServer(folder, persistent).start()


def import_fresh(path, name):
    """Import the Python file at `path` as a new module called `name`: a new app, with empty state."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask finds a module's templates/ and static/ through it
    spec.loader.exec_module(module)
    return module


# WebSocket clients


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


def frames_left(ws):
    """The frames a closed python-websockets connection received and no one read yet, decoded."""
    frames = []
    try:
        while True:
            frames.append(json.loads(ws.recv(timeout=0)))
    except ConnectionClosed:
        return frames


def texts(frames):
    """All message texts in a list of answers or `messages` frames, in the order received."""
    return [m["text"] for frame in frames for m in frame.get("messages", ())]  # not in `status` frames


def send_frame(ws, command):
    """Send one command as a JSON text frame, in UTF-8 as browsers send it (not \\u escapes)."""
    ws.send(json.dumps(command, ensure_ascii=False))


def flood_with_likes(sockets, message_id=1):
    """Send likes on all `sockets` at once, as fast as they go, until each is closed or PROMPTLY passes.

    Return {socket: the close frame it received (None if none came)} for those closed.
    """
    close_frames = {}

    def flood(ws):
        deadline = time.monotonic() + PROMPTLY
        try:
            while time.monotonic() < deadline:
                send_frame(ws, {"command": "like", "id": message_id})
        except ConnectionClosed as closed:
            close_frames[ws] = closed.rcvd

    floods = [threading.Thread(target=flood, args=(ws,)) for ws in sockets]
    for thread in floods:
        thread.start()
    for thread in floods:
        thread.join()
    return close_frames


def check_clients_joining_while_others_post(post_to, history_from, sockets_from, total=300, most=30):
    """Post `total` messages from a thread while clients join as the pages do; each must get every one once.

    The messages go to each server of `post_to` in turn. A client joins as the
    polling page loads and the WebSocket page connects: the history from
    `history_from` over HTTP, then `sockets_from`'s /ws from its cursor and
    epoch. Each client must then get every message exactly once, in order, on
    cursors that only grow. (Servers are Clients: LiveServer, FlaskRun, ...)
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


# WebSockets by hand: plain sockets, frames as bytes


def handshake(port, path="/ws", receive_buffer=None, headers=""):
    """Ask for a WebSocket on a plain socket; return the socket and the status line of the answer.

    The socket has a timeout of PROMPTLY, and nothing after the answer's
    headers has been read from it (the first frame follows them).
    """
    raw = socket.socket()
    if receive_buffer:  # set before connecting: the kernel then keeps it small
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    raw.settimeout(PROMPTLY)
    raw.connect(("127.0.0.1", port))
    raw.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = raw.recv(1)  # no further: the first frame follows
        if not chunk:
            break
        answer += chunk
    return raw, answer.split(b"\r\n", 1)[0].decode()


def read_until_the_server_hangs_up(raw, timeout=10):
    """Read everything the server sends until it closes the connection."""
    raw.settimeout(timeout)
    received = b""
    while chunk := raw.recv(65536):
        received += chunk
    return received


def frames_in(data):
    """Split what a server sent (unmasked frames) into (opcode, payload) pairs; fail on bytes that aren't frames."""
    frames = []
    while data:
        assert len(data) >= 2, f"not a frame: {data!r}"
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        assert data[0] & 0x70 == 0 and data[1] & 0x80 == 0 and len(data) >= start + length, \
            f"not a frame: {data[:60]!r}"
        frames.append((opcode, data[start:start + length]))
        data = data[start + length:]
    return frames


def raw_websocket(port, path="/ws", receive_buffer=None):
    """Do a WebSocket handshake by hand and return the plain socket: a client that reads only if told to."""
    raw, status = handshake(port, path, receive_buffer)
    assert status.startswith("HTTP/1.1 101"), status
    raw.settimeout(None)
    return raw


def hang_up(raw):
    """End a raw client's connection, even while another thread waits on it (closing alone would not)."""
    with suppress(OSError):  # unless the server hung up first
        raw.shutdown(socket.SHUT_RDWR)  # a thread waiting in `recv` or `sendall` wakes and fails
    raw.close()


def masked_text_frame(text):
    """The bytes of one WebSocket text frame as a client must send it: masked."""
    return bytes(FrameProtocol(client=True, extensions=[]).send_data(text))


def read_server_frame(raw):
    """Read one frame from the server (not masked) off a plain socket; return (opcode, payload)."""
    header = raw.recv(2, socket.MSG_WAITALL)
    assert len(header) == 2, "the connection ended without a close frame"
    opcode, length = header[0] & 0x0F, header[1] & 0x7F
    if length == 126:
        length = int.from_bytes(raw.recv(2, socket.MSG_WAITALL), "big")
    elif length == 127:
        length = int.from_bytes(raw.recv(8, socket.MSG_WAITALL), "big")
    payload = raw.recv(length, socket.MSG_WAITALL) if length else b""
    return opcode, payload


def read_first_frame(raw):
    """Read the first `messages` frame from a plain socket, decoded."""
    opcode, payload = read_server_frame(raw)
    assert opcode == 0x1, f"not a text frame: opcode {opcode}"
    return json.loads(payload)


def close_code_received(raw):
    """Read server frames until the close frame; return its code."""
    while True:
        opcode, payload = read_server_frame(raw)
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")


# HTTP by hand: requests that trickle or never end


def trickle(port, first, then, pace=0.05, limit=60):
    """Send `first`, then `then` a byte every `pace` seconds until the server closes; return all it answered.

    Fail if the server still reads after `limit` seconds, or after `then` ran out.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY)
    answer = b""
    try:
        raw.sendall(first)
        deadline = time.monotonic() + limit
        for byte in then:
            assert time.monotonic() < deadline, f"still reading after {limit} s"
            if select.select([raw], [], [], pace)[0]:
                break  # an answer, or the end of the connection
            try:
                raw.send(bytes([byte]))
            except OSError:  # closed: its answer, if any, is still to be read
                break
        else:
            raise AssertionError("the server read the whole trickle")
        while True:
            try:
                chunk = raw.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    finally:
        raw.close()
    return answer


def flood_after_headers(port, headers, limit=2**30, until=None, piece=b"x" * 2**20):
    """Send `headers`, then `piece` again and again as fast as the connection takes it; return (the answer, bytes sent).

    Fail if the server is still taking the body after `limit` bytes, unless the
    event `until` was set first.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY)
    answer, sent = b"", 0
    try:
        raw.sendall(headers)
        while sent < limit or (until and until.is_set()):
            if until and until.is_set():
                break
            if not answer and select.select([raw], [], [], 0)[0]:
                answer = raw.recv(65536)
            try:
                sent += raw.send(piece)
            except OSError:  # closed by the server
                break
        else:
            raise AssertionError(f"the server took {limit} bytes of a refused body")
        if not answer:
            answer = raw.recv(65536)
    except ConnectionResetError:
        pass
    finally:
        raw.close()
    return answer, sent


# Pages in Chromium (the `browser` fixture's)


# After a restart a page retries with a growing delay (up to about 6 s), so
# reconnecting may take longer than the few seconds anything else is given.
RECONNECT_TIMEOUT = 20_000


class PageOpener:
    """Opens each page in a new browser context and records what goes wrong in it."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts = []
        self.problems = []

    def __call__(self, url, network_errors_expected=False, expected_errors=(), init_script=None, clock=False,
                 before_goto=None, **context_options):
        """Open `url` as a new person; `context_options` set their time zone, locale, ...

        `init_script` runs in the page before the page's own scripts. With `clock`,
        the page's timers run on Playwright's clock, so that `retry_now` can skip a wait.
        `before_goto(page)` runs before the page loads, to listen or route from the very start.
        Console errors holding one of `expected_errors` are no problem.
        """
        context = self.browser.new_context(**context_options)
        self.contexts.append(context)
        if clock:
            context.clock.install()  # time still flows as ever, until a test moves it on
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        if before_goto:
            before_goto(page)
        page.on("pageerror", lambda error: self.problems.append(f"{page.url}: uncaught {error}"))
        page.on("console", lambda message: self._console(page, message, network_errors_expected, expected_errors))
        page.goto(url)
        return page

    def _console(self, page, message, network_errors_expected, expected_errors):
        # The browser logs failed requests as console errors: when the server is
        # stopped on purpose (net::ERR_CONNECTION_REFUSED, ...), or answers a
        # request with an error on purpose. Those are expected, not problems.
        network_error = "net::ERR_" in message.text or "Failed to load resource" in message.text
        if message.type != "error" or (network_errors_expected and network_error):
            return
        if any(expected in message.text for expected in expected_errors):
            return
        self.problems.append(f"{page.url}: console error: {message.text}")

    def close(self):
        """Close every page this opener opened."""
        for context in self.contexts:
            context.close()


def retry_now(page):
    """Skip the wait before the page's next try to reach the server (its backoff, up to about 6 s).

    The page must have been opened with `clock=True`. Should it be trying
    right now instead, it waits as ever: this only saves time.
    """
    page.clock.fast_forward(7000)


def send(page, user, text):
    """Fill in the form as a person would and press Send."""
    page.get_by_label("Name").fill(user)
    # exact: so that "Message" matches only the field, whatever else contains the word.
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()


def messages(page):
    """The page's shown messages."""
    return page.get_by_role("list", name="Conversation").get_by_role("listitem")


def message(page, text):
    """The shown message whose text contains `text`."""
    return messages(page).filter(has_text=text)
