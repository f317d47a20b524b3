"""Clients that cost the server memory, threads or file descriptors (issue 7), against real servers.

Most tests run the app with `flask run` in a subprocess, so that its memory and
its limit of open files are its own, and measure as the issue's table did: the
server's resident memory from /proc, and latency from the moment a client sent
a message to the moment another one received it. `pytest -s` prints the figures.
"""

import itertools
import json
import logging
import re
import resource
import socket
import sys
import threading
import time
from datetime import datetime

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

from helpers import (FlaskRun, flask_env, handshake, hang_up, raw_websocket, read_first_frame, read_server_frame,
                     receive_json, receive_until, rss_kb, server_threads, threads_of, wait_until)
from store import Store

MB = 1024  # in kB, as /proc counts

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads the server's memory from /proc")


class MeasuredFlaskRun(FlaskRun):
    """`flask run` whose memory the test reads."""

    def memory_kb(self):
        """The server's resident memory now, and the most it has had since it started, in kB."""
        with open(f"/proc/{self.process.pid}/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        return rss_kb(self.process.pid), peak


@pytest.fixture
def start_flask_run(start, tmp_path):
    """A function that starts `flask run` with Flask settings, its log in a file; each stops after the test."""
    count = itertools.count()

    def start_flask_run(open_files=None, **settings):
        log = tmp_path / f"flask-run-{next(count)}.log"
        return start(MeasuredFlaskRun(env=flask_env(settings), log=log, open_files=open_files))

    return start_flask_run


def timed_get(server, path):
    """GET `path`; return how many seconds the whole answer took, and its status."""
    began = time.monotonic()
    status = server.request("GET", path, timeout=30).status
    return time.monotonic() - began, status


def percentile(values, fraction):
    """The value that `fraction` of `values` are below; infinity if there are none."""
    ordered = sorted(values) or [float("inf")]
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def send_message_command(text, user="Azin"):
    """The JSON text of a send-message frame."""
    return json.dumps({"command": "send-message", "message": {"user": user, "text": text}})


def send_message_frame(text):
    """The bytes of a send-message frame, masked as a client sends it."""
    return Frame(Opcode.TEXT, send_message_command(text, "flood").encode()).serialize(mask=True)


def numbered_text(number):
    """A text of 1000 characters that starts with `number` and when it was made (time.monotonic())."""
    text = f"{number} {time.monotonic():.6f} "
    return text + "x" * (1000 - len(text))


class Flooder:
    """A raw WebSocket client that sends messages of 1000 characters, and drops all it receives."""

    def __init__(self, port):
        self.raw = raw_websocket(port)
        self.sent = 0
        # It is a subscriber too: reading everything keeps it from being a slow reader itself.
        threading.Thread(target=self.drain, daemon=True).start()

    def drain(self):
        try:
            while self.raw.recv(1 << 20):
                pass
        except OSError:
            pass  # closed by the test

    def flood(self, rate, duration):
        """Send `rate` messages a second, evenly, for `duration` seconds; return the rate reached."""
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < duration:
            due = int(elapsed * rate) + 1
            while self.sent < due:
                self.raw.sendall(send_message_frame(numbered_text(self.sent + 1)))
                self.sent += 1
            time.sleep(0.001)
        return self.sent / (time.monotonic() - began)

    def send(self, count):
        """Send `count` messages as fast as the server takes them."""
        for _ in range(count):
            self.raw.sendall(send_message_frame(numbered_text(self.sent + 1)))
            self.sent += 1


class SlowReaders:
    """Raw WebSockets with a small receive buffer; a thread reads a `chunk` of each every `interval`."""

    def __init__(self, port, count, chunk=4096, interval=0.25):
        self.sockets = [raw_websocket(port, receive_buffer=4096) for _ in range(count)]
        for raw in self.sockets:
            read_first_frame(raw)
        self.chunk, self.interval = chunk, interval
        self.received = [0] * count
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        while not self.stopped.wait(self.interval):
            for n, raw in enumerate(self.sockets):
                try:
                    self.received[n] += len(raw.recv(self.chunk, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    pass

    def close(self):
        self.stopped.set()
        self.thread.join()
        for raw in self.sockets:
            raw.close()


class TimingReader:
    """A python-websockets client that reads normally and notes each message's id and latency."""

    def __init__(self, ws):
        self.ws = ws
        receive_json(ws)
        self.ids = []
        self.latencies = []  # from the sender's clock in the text to arrival, in seconds
        self.since_stored = []  # from the server's timestamp to arrival, in seconds
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        try:
            for frame in self.ws:
                arrived, arrived_utc = time.monotonic(), time.time()
                for message in json.loads(frame)["messages"]:
                    self.ids.append(message["id"])
                    self.latencies.append(arrived - float(message["text"].split()[1]))
                    stored = datetime.fromisoformat(message["timestamp"]).timestamp()
                    self.since_stored.append(arrived_utc - stored)
        except ConnectionClosed:
            pass  # closed by the test


@linux_only
def test_slow_readers_during_a_flood_cost_little_memory_and_delay_no_one(start_flask_run):
    # A flood far beyond the rate limit, as a benchmark makes it: no flood control. The store keeps
    # half its default, so that a flood of more than twice that takes half as long.
    kept = 5_000
    running = start_flask_run(RATE_LIMIT=0, MAX_MESSAGES=kept)
    url = f"ws://127.0.0.1:{running.port}/ws"
    rate, duration = 3000, 4  # 12 MB of chat, more than twice what the store keeps
    slow_readers = SlowReaders(running.port, count=5)
    flooder = Flooder(running.port)
    with connect(url, max_size=None, max_queue=None) as normal_reader:
        reader = TimingReader(normal_reader)
        try:
            before, _ = running.memory_kb()
            reached = flooder.flood(rate, duration)
            deadline = time.monotonic() + 60
            while len(reader.ids) < flooder.sent and time.monotonic() < deadline:
                time.sleep(0.1)
            after, peak = running.memory_kb()
        finally:
            slow_readers.close()
            hang_up(flooder.raw)  # its draining thread waits in `recv`
    p50, p99 = percentile(reader.latencies, 0.5), percentile(reader.latencies, 0.99)
    print(f"\n{flooder.sent} messages in {duration} s, {reached:.0f}/s. Server RSS before "
          f"{before // MB} MB, after {after // MB} MB, peak {peak // MB} MB. The normal reader got "
          f"{len(reader.ids)}: latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {percentile(reader.latencies, 1) * 1000:.0f} ms (p99 from being stored: "
          f"{percentile(reader.since_stored, 0.99) * 1000:.0f} ms). Each slow reader read "
          f"{slow_readers.received[0] // 1024} KB.")
    # The store's 5,000 messages take about 10 MB; five slow readers holding all they haven't
    # read would add five copies of the flood, 60 MB.
    assert peak - before < 50 * MB, f"RSS grew from {before} kB to a peak of {peak} kB"
    assert flooder.sent > kept, f"not a flood: the store keeps {kept} messages"
    assert reader.ids == list(range(1, flooder.sent + 1))  # each once, in order, while 5 barely read

    # A newcomer is served at once.
    with connect(url, max_size=None) as fresh:
        cursor = receive_json(fresh)["cursor"]
        with connect(url) as sender:
            sender.send(send_message_command("after the flood"))
            frames = receive_until(fresh, lambda frames: frames and frames[-1]["cursor"] > cursor)
    assert [message["text"] for frame in frames for message in frame["messages"]] == ["after the flood"]


def ask_and_never_read(port, path):
    """Send GET `path` from a socket with a small receive buffer, which will never read the answer."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    raw.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return raw


@linux_only
def test_clients_that_ask_for_history_and_never_read_cost_little_memory_and_slow_no_one(
        start_flask_run):
    # Filling the history takes 10,000 changes in a few seconds: no flood control.
    running = start_flask_run(RATE_LIMIT=0)
    filler = Flooder(running.port)
    filler.send(10000)
    wait_until(lambda: running.get("/messages?since=9999")["cursor"] == 10000, timeout=60)
    with_filler = threads_of(running.process.pid)
    hang_up(filler.raw)  # its draining thread waits in `recv`
    latest = running.get("/messages")["cursor"]
    # The filler's connection has ended once its route's thread has.
    wait_until(lambda: threads_of(running.process.pid) < with_filler)
    before, _ = running.memory_kb()

    clients = [ask_and_never_read(running.port, "/messages?since=0") for _ in range(20)]
    try:
        clients += [raw_websocket(running.port, receive_buffer=4096) for _ in range(20)]
        highest, slowest = before, 0
        for _ in range(6):
            time.sleep(0.5)
            for path in (f"/messages?since={latest}", "/"):
                seconds, status = timed_get(running, path)
                assert status == 200
                slowest = max(slowest, seconds)
            highest = max(highest, running.memory_kb()[0])
        _, peak = running.memory_kb()
        print(f"\n40 clients that never read: server RSS before {before // MB} MB, highest "
              f"{highest // MB} MB, peak {peak // MB} MB; slowest answer {slowest * 1000:.0f} ms")
        assert max(highest, peak) - before < 100 * MB, f"RSS grew from {before} to {peak} kB"
        assert slowest < 10  # answered, not held behind them (the figure is printed above)
    finally:
        for raw in clients:
            raw.close()


def test_catching_up_from_an_old_cursor_costs_no_more_with_100000_messages_than_with_1000():
    """A catch-up holds the store's lock: its cost must not grow with the history (issue 13, item 7).

    Compared as a ratio within one run, the best of many tries each, so that a
    busy machine slows both sides alike: walking every change after the cursor
    made it about 100 times dearer; finding where the cursor starts, about the same.
    """
    costs = {}
    for count in (1000, 100_000):
        store = Store(max_messages=count)
        for n in range(count):
            store.add("Azin", f"m{n}")
        epoch = store.epoch
        tries = []
        for _ in range(30):
            began = time.perf_counter()
            answer = store.since(1, epoch)
            tries.append(time.perf_counter() - began)
        assert len(answer["messages"]) == store.page_size
        costs[count] = min(tries)
    print(f"\nsince(1): {costs[1000] * 1e6:.0f} µs with 1,000 messages, "
          f"{costs[100_000] * 1e6:.0f} µs with 100,000")
    assert costs[100_000] < 10 * costs[1000]


# The broadcaster


@pytest.fixture
def failing_store(store, monkeypatch):
    """The app's store; its `since` fails on the broadcaster's thread while `failures_left`.

    The broadcaster pauses after each failed round (FAILURE_PAUSE, 0.5 s): here less, so that no test waits.
    """
    import broadcaster as broadcaster_module

    monkeypatch.setattr(broadcaster_module, "FAILURE_PAUSE", 0.05)
    real_since = store.since
    store.failures_left = 0
    store.failed = 0
    store.failure = MemoryError("injected by the test")

    def since(*args, **kwargs):
        if threading.current_thread().name == "broadcaster" and store.failures_left:
            store.failures_left -= 1
            store.failed += 1
            raise store.failure
        return real_since(*args, **kwargs)

    monkeypatch.setattr(store, "since", since)
    return store


def joined_sockets(server, count):
    """Connect `count` clients; return them once each route has done joining, so that only the broadcaster feeds them.

    A route answers pings once it has sent the first frame and caught its client
    up: the pong says that it is done, and that what comes next is the broadcaster's.
    """
    sockets = [server.connect() for _ in range(count)]
    for ws in sockets:
        receive_json(ws)
        assert ws.ping().wait(timeout=10), "no pong"
    return sockets


def texts_until(ws, texts, timeout=10):
    """Receive `messages` frames until each of `texts` has come; return the texts received, in order."""

    def received(frames):
        return [message["text"] for frame in frames for message in frame["messages"]]

    try:
        return received(receive_until(ws, lambda frames: set(texts) <= set(received(frames)), timeout))
    except ConnectionClosed as closed:
        pytest.fail(f"the server hung up ({closed}) before {texts} arrived")


def test_a_broadcast_round_that_fails_is_logged_once_and_every_socket_keeps_getting_every_message(
        server, failing_store, caplog):
    sockets = joined_sockets(server, 3)
    failing_store.failures_left = 3  # three rounds in a row, as while memory runs out

    server.post("/messages", {"user": "Azin", "text": "posted while failing"})
    sockets[0].send(send_message_command("sent while failing"))
    # Nothing goes out before the failures are over: what arrives, arrives after them.
    while_failing = ["posted while failing", "sent while failing"]
    for ws in sockets:
        assert texts_until(ws, while_failing) == while_failing
    assert failing_store.failed == 3

    server.post("/messages", {"user": "Azin", "text": "posted after"})
    sockets[1].send(send_message_command("sent after"))
    for ws in sockets:
        assert texts_until(ws, ["posted after", "sent after"]) == ["posted after", "sent after"]
    errors = [record for record in caplog.records
              if record.name == "broadcaster" and record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert errors[0].exc_info[0] is MemoryError


def test_a_socket_whose_send_fails_unexpectedly_does_not_stop_the_others(
        server, broadcaster, monkeypatch):
    sockets = {}  # subscriber -> its client
    for _ in range(4):
        ws = server.connect()
        receive_json(ws)
        wait_until(lambda: len(broadcaster.subscribers) == len(sockets) + 1)
        (subscriber,) = broadcaster.subscribers - sockets.keys()
        sockets[subscriber] = ws
    # The broadcaster serves subscribers in the order of its set: break the first.
    broken = next(iter(broadcaster.subscribers))

    def send_fails(*args):
        raise RuntimeError("injected by the test: this socket's send failed")

    monkeypatch.setattr(broken.connection, "offer", send_fails)
    monkeypatch.setattr(broken.connection, "push", send_fails)

    server.post("/messages", {"user": "Azin", "text": "for everyone"})
    for subscriber, ws in sockets.items():
        if subscriber is not broken:
            assert texts_until(ws, ["for everyone"], timeout=5) == ["for everyone"]


def connect_and_identify(server, broadcaster, known):
    """Connect a client and return it with its Subscriber, found as the one new in the registry."""
    ws = server.connect()
    receive_json(ws)
    wait_until(lambda: len(broadcaster.subscribers) == len(known) + 1)
    (subscriber,) = broadcaster.subscribers - set(known)
    return ws, subscriber


def test_a_broadcaster_whose_failure_log_fails_too_goes_on_serving_every_socket(
        server, failing_store, monkeypatch):
    import broadcaster as broadcaster_module

    def log_fails(*args, **kwargs):
        raise MemoryError("injected by the test: even logging failed")

    monkeypatch.setattr(broadcaster_module.log, "exception", log_fails)
    monkeypatch.setattr(broadcaster_module.log, "warning", log_fails)
    sockets = joined_sockets(server, 3)
    failing_store.failures_left = 2

    server.post("/messages", {"user": "Azin", "text": "posted while failing"})
    for ws in sockets:
        assert texts_until(ws, ["posted while failing"]) == ["posted while failing"]
    assert failing_store.failed == 2
    server.post("/messages", {"user": "Azin", "text": "posted after"})
    for ws in sockets:
        assert texts_until(ws, ["posted after"]) == ["posted after"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_broadcaster_thread_that_died_anyway_is_started_again_by_the_next_socket(
        server, broadcaster, failing_store):
    first, _ = connect_and_identify(server, broadcaster, [])
    dead = broadcaster.thread
    # Nothing in the broadcaster catches SystemExit: it ends the thread, as an
    # error escaping every handler would.
    failing_store.failure = SystemExit("injected by the test")
    failing_store.failures_left = 1
    server.post("/messages", {"user": "Azin", "text": "the round that killed it"})
    wait_until(lambda: not dead.is_alive())

    second = server.connect()
    receive_json(second)
    server.post("/messages", {"user": "Azin", "text": "after the restart"})
    assert texts_until(first, ["after the restart"]) == ["the round that killed it", "after the restart"]
    assert texts_until(second, ["after the restart"]) == ["after the restart"]


def test_a_socket_whose_reading_fails_unexpectedly_is_closed_with_1011_and_frees_its_place(
        server, broadcaster, caplog):
    bystander, _ = connect_and_identify(server, broadcaster, [])
    threads_before = server_threads()
    victim, subscriber = connect_and_identify(server, broadcaster, set(broadcaster.subscribers))

    def out_of_memory():
        raise MemoryError("injected by the test: reading ran out of memory")

    # The route's thread hands every read's bytes to wsproto, then acts on its events here.
    subscriber.connection._handle_events = out_of_memory
    victim.send(send_message_command("never carried out"))
    with pytest.raises(ConnectionClosed) as closed:
        victim.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    wait_until(lambda: len(broadcaster.subscribers) == 1)
    wait_until(lambda: server_threads() <= threads_before)  # its thread ended
    assert any("Reading a WebSocket failed" in record.getMessage() for record in caplog.records)

    server.post("/messages", {"user": "Azin", "text": "still served"})
    assert texts_until(bystander, ["still served"]) == ["still served"]
    assert [m["text"] for m in server.get("/messages")["messages"]] == ["still served"]


# Threads


@linux_only
def test_under_flask_run_a_websocket_costs_one_thread_and_gives_it_back_when_it_closes(start_flask_run):
    running = start_flask_run(RATE_LIMIT=0)
    pid = running.process.pid
    with connect(f"ws://127.0.0.1:{running.port}/ws") as warm_up:
        # The first socket starts the broadcaster's thread, which every socket shares. Once its
        # route carries out a frame, that thread runs, and is counted in `before`.
        receive_json(warm_up)
        warm_up.send(send_message_command("warming up"))
        receive_until(warm_up, lambda frames: any(
            message["text"] == "warming up" for frame in frames for message in frame.get("messages", [])))
        before = threads_of(pid)
        count, sockets = 20, []
        try:
            for _ in range(count):
                sockets.append(raw_websocket(running.port))
                read_first_frame(sockets[-1])  # its route runs: whatever threads it needs exist now
            # The route's thread reads the socket too: there is no second thread to read it.
            # (With one, this would be 40, and never 20.)
            wait_until(lambda: threads_of(pid) - before == count)
        finally:
            for raw in sockets:
                raw.close()
        wait_until(lambda: threads_of(pid) <= before)


# File descriptors


def next_messages(raw):
    """The texts in the next `messages` frame, passing over pings."""
    while True:
        opcode, payload = read_server_frame(raw)
        if opcode == Opcode.TEXT:
            return [message["text"] for message in json.loads(payload)["messages"]]


def capacity_lines(log):
    """The lines of a server's log that speak of how many WebSockets it holds."""
    return [line for line in log.splitlines() if "WebSockets" in line and "GET " not in line]


@pytest.fixture
def many_open_files():
    """Let this test process open more sockets than the server may: raise its soft limit if need be."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@linux_only
def test_at_ulimit_1024_websockets_beyond_capacity_get_503_and_the_server_keeps_serving(
        start_flask_run, many_open_files):
    # One address opens them all: as many as it likes, here, to find the server's own limit.
    running = start_flask_run(open_files=1024, MAX_SOCKETS_PER_ADDRESS=10000)
    accepted, refusals = [], []
    try:
        for attempt in range(700):  # more than the 640 it has room for, at one open file each
            try:
                raw, status = handshake(running.port)
            except TimeoutError:
                pytest.fail(f"handshake {attempt + 1} hung, with {len(accepted)} sockets open")
            if status.startswith("HTTP/1.1 101"):
                assert not refusals, f"accepted after {len(refusals)} refusals"
                accepted.append(raw)
                read_first_frame(raw)
            else:
                refusals.append(status)
                raw.close()
        print(f"\nulimit -n 1024: {len(accepted)} WebSockets accepted, {len(refusals)} refused with "
              f"{set(refusals)}; the log says {capacity_lines(running.output())}")
        assert refusals and set(refusals) == {"HTTP/1.1 503 SERVICE UNAVAILABLE"}
        assert any(re.search(rf"\b{len(accepted)}\b", line) for line in capacity_lines(running.output()))

        for path in ("/", "/messages"):
            seconds, status = timed_get(running, path)
            assert status == 200 and seconds < 10, f"GET {path}: {status} in {seconds:.1f} s"
        running.post("/messages", {"user": "Azin", "text": "to every socket"})
        for raw in accepted:
            assert next_messages(raw) == ["to every socket"]
    finally:
        for raw in accepted:
            raw.close()

    # Every slot comes back when its socket closes.
    reopened = []
    try:
        deadline = time.monotonic() + 20
        while len(reopened) < len(accepted):
            raw, status = handshake(running.port)
            if status.startswith("HTTP/1.1 101"):
                reopened.append(raw)
            else:
                raw.close()
                assert time.monotonic() < deadline, f"only {len(reopened)} sockets accepted again"
                time.sleep(0.1)
    finally:
        for raw in reopened:
            raw.close()
