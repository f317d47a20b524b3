"""Slow, hostile and numerous clients, against a real server."""

import json
import socket
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed

from app import create_app
from helpers import (FlaskRun, FlaskRunTLS, LiveServer, frames_in, hang_up, raw_websocket, read_first_frame,
                     read_until_the_server_hangs_up, receive_json, receive_until, rss_kb, server_threads, wait_until)


class Reader:
    """A client that reads normally, in its own thread, and notes when each message arrives."""

    def __init__(self, server):
        self.ws = server.connect(max_queue=None)
        self.cursor = receive_json(self.ws)["cursor"]
        self.arrivals = {}  # text -> time.monotonic() when it arrived
        self.ids = []
        self.cursors = [self.cursor]
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        try:
            for frame in self.ws:
                answer = json.loads(frame)
                self.cursors.append(answer["cursor"])
                for message in answer["messages"]:
                    self.arrivals[message["text"]] = time.monotonic()
                    self.ids.append(message["id"])
        except ConnectionClosed:
            pass  # the test is over and the server is gone; the test checks what arrived

    def assert_got_each_message_once_in_order(self, count):
        """Wait for `count` messages; fail unless they came in order, once each, with growing cursors."""
        wait_until(lambda: len(self.ids) >= count)
        assert self.ids == list(range(1, count + 1))
        assert self.cursors == sorted(set(self.cursors))


@pytest.mark.parametrize("stalled_count", [1, 20])
# While the flood lasts, stalled clients are not hung up on: a broadcast that
# waited for them would then hold the readers back for good, not for 5 s.
@pytest.mark.config(STALL_SECONDS=600)
def test_clients_that_stop_reading_delay_no_one_are_dropped_and_miss_nothing_on_return(
        server, store, broadcaster, stalled_count):
    readers = [Reader(server) for _ in range(3)]
    store.add("Azin", "before the flood")
    # A small receive buffer, so the stalled clients' buffers fill sooner.
    stalled = [raw_websocket(server.port, receive_buffer=4096) for _ in range(stalled_count)]
    first_frames = [read_first_frame(raw) for raw in stalled]
    wait_until(lambda: len(broadcaster.subscribers) == stalled_count + 3)

    # About 3 MB of chat: more than ten times what the kernel holds for a stalled client (its small
    # receive buffer, and the server's send buffer of connection.py's SEND_BUFFER_BYTES, doubled).
    sent_at = {}
    for n in range(3000):
        text = f"{n:05} " + "x" * 990
        sent_at[text] = time.monotonic()
        store.add("flood", text)
        if n % 200 == 0:
            time.sleep(0.01)  # a busy chat, not a single instant

    for reader in readers:
        reader.assert_got_each_message_once_in_order(1 + len(sent_at))
        worst_delay = max(reader.arrivals[text] - sent_at[text] for text in sent_at)
        print(f"\nworst delay of a reader beside {stalled_count} stalled: {worst_delay * 1000:.0f} ms")
    assert len(broadcaster.subscribers) == stalled_count + 3  # the stalled ones are still there
    # The stalled clients are hung up on once they have taken nothing for a while; the readers never are.
    for subscriber in broadcaster.subscribers:
        subscriber.connection.stall_seconds = 1
    wait_until(lambda: len(broadcaster.subscribers) == 3)

    # A stalled client that comes back with its cursor gets everything it
    # missed, a page at a time, each message once.
    first = first_frames[0]
    assert first["cursor"] == 1
    back = server.connect(f"/ws?since={first['cursor']}&epoch={first['epoch']}", max_queue=None)
    frames = receive_until(back, lambda frames: frames and frames[-1]["cursor"] == store.cursor)
    assert all(len(frame["messages"]) <= store.page_size for frame in frames)
    assert [m["id"] for frame in frames for m in frame["messages"]] == list(range(2, store.cursor + 1))
    for raw in stalled:
        raw.close()


@pytest.mark.config(RATE_LIMIT=0)  # a burst of 2000 posts
def test_clients_reading_normally_through_a_burst_are_never_dropped(server, broadcaster):
    readers = [Reader(server) for _ in range(20)]
    total = 2000

    def post_many(offset):
        for n in range(offset, total, 4):
            server.post("/messages", {"user": "burst", "text": f"{n} " + "y" * 500})

    posters = [threading.Thread(target=post_many, args=(offset,)) for offset in range(4)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    for reader in readers:
        reader.assert_got_each_message_once_in_order(total)
    assert len(broadcaster.subscribers) == 20


def test_frames_to_one_socket_never_interleave_when_many_threads_write_at_once(server_with_pings):
    server = server_with_pings
    ws = server.connect(max_queue=None)
    receive_json(ws)
    bad_frames, total = 300, 1000

    def post_many(offset):
        for n in range(offset, total, 4):
            server.app.extensions["chat"].store.add("poster", f"m{n}")

    posters = [threading.Thread(target=post_many, args=(offset,)) for offset in range(4)]
    for poster in posters:
        poster.start()
    # Meanwhile the route's thread, on the same socket, answers bad frames,
    # sends pings and answers ours.
    for n in range(bad_frames):
        ws.send("not json")
        if n % 50 == 0:
            ws.ping()
    for poster in posters:
        poster.join()

    errors, ids, cursor = 0, [], 0
    while len(ids) < total or errors < bad_frames:
        frame = receive_json(ws)  # python-websockets fails on any corrupted frame
        if frame["command"] == "error":
            errors += 1
        else:
            assert frame["cursor"] > cursor
            cursor = frame["cursor"]
            ids += [m["id"] for m in frame["messages"]]
    assert errors == bad_frames
    assert ids == list(range(1, total + 1))


@pytest.fixture
def server_with_pings():
    """A live server that pings every 0.2 s, so silent peers are found quickly; no flood control."""
    app = create_app({"SOCK_SERVER_OPTIONS": {"max_message_size": 65536, "ping_interval": 0.2},
                      "RATE_LIMIT": 0})
    live = LiveServer(app)
    yield live
    live.stop()


def test_peers_that_never_answer_pings_are_closed_and_leave_nothing_behind(server_with_pings):
    broadcaster = server_with_pings.app.extensions["chat"].broadcaster
    warm_up = server_with_pings.connect()
    receive_json(warm_up)
    threads_before = server_threads()
    silent = [raw_websocket(server_with_pings.port) for _ in range(10)]
    wait_until(lambda: len(broadcaster.subscribers) == 11)
    # The raw sockets never answer a ping: after a ping interval or two they're closed.
    wait_until(lambda: len(broadcaster.subscribers) == 1)
    for raw in silent:
        raw.settimeout(5)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk  # the first frame and pings, then the server hangs up
        raw.close()
    wait_until(lambda: server_threads() <= threads_before)
    # The live client answers pings (python-websockets does) and is still served.
    server_with_pings.post("/messages", {"user": "Azin", "text": "still here"})
    assert [m["text"] for m in receive_json(warm_up)["messages"]] == ["still here"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the memory use from /proc")
def test_memory_stays_flat_once_max_messages_is_reached(start):
    running = start(FlaskRun(env={"FLASK_MAX_MESSAGES": "1000", "FLASK_RATE_LIMIT": "0"}))
    ws = running.connect(max_queue=None)
    receive_json(ws)

    def chat(count, offset):
        for n in range(count):
            ws.send(json.dumps({"command": "send-message", "message": {
                "user": "Azin", "text": f"{offset + n} " + "z" * 900}}))
        receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == offset + count, timeout=60)

    chat(3000, 0)  # past the cap, and warmed up
    before = rss_kb(running.process.pid)
    chat(20000, 3000)  # about 20 MB of text, all of it beyond the cap
    after = rss_kb(running.process.pid)
    assert after - before < 5000, f"RSS grew from {before} kB to {after} kB"


def test_websockets_work_over_tls_when_flask_run_serves_https_and_close_without_waiting_out_close_seconds(
        start, tmp_path):
    server = start(FlaskRunTLS(tmp_path, env={"FLASK_CLOSE_SECONDS": "60"}))  # its clients check its certificate
    ws, other = server.connect(), server.connect()
    receive_json(ws), receive_json(other)
    ws.send(json.dumps({"command": "send-message",
                        "message": {"user": "Azin", "text": "over TLS " + "x" * 900}}))
    for client in (ws, other):
        assert receive_json(client)["messages"][0]["text"].startswith("over TLS")
    ws.close()
    assert ws.close_code == 1000
    # A TLS client (python-websockets, browsers) leaves ending TCP to the server: once both close
    # frames went through, the server ends it, rather than wait CLOSE_SECONDS (60) for the client.
    with server.trust.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                                  server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        tls.sendall(client_frame(0x8, (1000).to_bytes(2, "big")))
        try:
            received = read_until_the_server_hangs_up(tls, timeout=20)
        except TimeoutError:
            pytest.fail("the server kept the TLS connection after both close frames")
    frames = frames_in(received.split(b"\r\n\r\n", 1)[1])
    assert frames[-1] == (0x8, (1000).to_bytes(2, "big"))


def client_frame(opcode, payload=b""):
    """One masked frame, as a client must send it (RFC 6455, 5.3), of up to 125 bytes."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


@pytest.mark.parametrize("path", ["/ws", "/hello/ws"])
@pytest.mark.parametrize("who_closes", ["client", "server"])
def test_nothing_follows_the_close_frame_whoever_closes_first(server, path, who_closes):
    for _ in range(20):
        raw = raw_websocket(server.port, path)
        if who_closes == "client":
            raw.sendall(client_frame(0x8, (1000).to_bytes(2, "big")))
        else:  # a frame too big: the server closes with 1009
            raw.sendall(bytes([0x81, 0xFF]) + (70000).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 70000)
        frames = frames_in(read_until_the_server_hangs_up(raw))
        raw.close()
        # Perhaps the first frame (Hello, or the first messages frame), if the
        # route got to send it before the close, then the close frame, and
        # nothing after it: bytes of an HTTP response would not parse as frames.
        assert [opcode for opcode, _ in frames] in ([0x1, 0x8], [0x8]), frames
        expected_code = 1000 if who_closes == "client" else 1009
        assert int.from_bytes(frames[-1][1][:2], "big") == expected_code


# It never reads our close frame either: wait less for its answer, and for its flood.
@pytest.mark.config(CLOSE_SECONDS=0.5, FLOOD_SECONDS=1)
def test_a_hello_client_that_floods_pings_and_never_reads_is_let_go(server):
    threads_before = server_threads()
    raw = raw_websocket(server.port, "/hello/ws", receive_buffer=4096)
    raw.settimeout(30)
    pings = client_frame(0x9, b"p" * 125) * 100
    sent = threading.Event()

    def flood():  # until the connection is gone; the pongs pile up on our side
        try:
            while True:
                raw.sendall(pings)
                sent.set()
        except OSError:
            pass

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        # Let go: the thread serving it ends. The client may not see it while it floods:
        # the server's end of TCP, closed, can wait in the kernel behind pongs it never takes.
        wait_until(lambda: server_threads() <= threads_before, timeout=30)
        assert sent.is_set()  # 100 pings at least: three times what its allowance holds
    finally:
        hang_up(raw)  # the flooder's sending fails, and it ends
        flooder.join()
