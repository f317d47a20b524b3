"""The WebSocket connection layer (connection.py) against hostile clients, under `flask run` and gunicorn.

Raw sockets send exactly the bytes a test names, and read back every byte the
server sends, so that what comes after a close frame, how many pongs a ping
flood gets, or what the kernel holds for a client that never reads, is seen
as it is on the wire.
"""

import json
import os
import socket
import ssl
import sys
import time

import pytest
from flask import Flask
from websockets.sync.client import connect
from wsproto.frame_protocol import FrameProtocol

from helpers import (PROMPTLY, FlaskRun, FlaskRunTLS, Gunicorn, LiveServer, free_port, frames_in, raw_websocket,
                     read_until_the_server_hangs_up, wait_until)
from handshake import Sock

RATE_LIMIT = 10  # the default
BURST = 3 * RATE_LIMIT
TRIALS = 30  # of each last-words kind, on each server


def client_frames():
    """A client's frame encoder (its frames are masked), one per message: it tracks fragments."""
    return FrameProtocol(client=True, extensions=[])


def command_frame(command):
    return bytes(client_frames().send_data(json.dumps(command)))


def read_frame(raw):
    """Read one server frame off a raw socket: (opcode, payload)."""
    header = raw.recv(2, socket.MSG_WAITALL)
    assert len(header) == 2, "the connection ended without a close frame"
    length = header[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(raw.recv(2 if length == 126 else 8, socket.MSG_WAITALL), "big")
    return header[0] & 0x0F, raw.recv(length, socket.MSG_WAITALL) if length else b""


@pytest.fixture(scope="module", params=["flask run", "gunicorn"])
def running(request, tmp_path_factory):
    """The app as a learner runs it and as the README serves it in production, with flood control off."""
    env = {"FLASK_RATE_LIMIT": "0"}
    server = FlaskRun(free_port(), env) if request.param == "flask run" else Gunicorn(env)
    server.start()
    yield server
    server.stop()


LAST_WORDS = {
    "a bad frame": (bytes(client_frames().send_data("not json")), "error"),
    "an unknown command with a ref": (command_frame({"command": "shout", "ref": "r-1"}), "error"),
    "a send-message with a ref": (command_frame({"command": "send-message", "ref": "r-2",
                                                 "message": {"user": "Azin", "text": "last words"}}), "sent"),
}


@pytest.mark.parametrize("kind", LAST_WORDS)
def test_nothing_follows_our_close_frame_when_a_frame_a_ping_and_a_close_frame_arrive_together(running, kind):
    frame, answer = LAST_WORDS[kind]
    client = client_frames()
    last_words = frame + bytes(client.ping(b"still there?")) + bytes(client.close(1000, "bye"))
    for _ in range(TRIALS):
        raw = raw_websocket(running.port)
        try:
            assert read_frame(raw)[0] == 0x1  # the first `messages` frame
            raw.sendall(last_words)  # in one write: the server reads them together
            frames = frames_in(read_until_the_server_hangs_up(raw, PROMPTLY))
        finally:
            raw.close()
        opcodes = [opcode for opcode, _ in frames]
        assert opcodes[-1] == 0x8 and opcodes.count(0x8) == 1, frames  # our close frame, last
        assert int.from_bytes(frames[-1][1][:2], "big") == 1000
        assert (0xA, b"still there?") in frames  # the pong
        # The frame before the close frame was carried out: its answer comes before our close frame.
        commands = [json.loads(payload)["command"] for opcode, payload in frames if opcode == 0x1]
        assert answer in commands, frames


def test_a_message_whose_fragments_pass_the_limit_in_bytes_closes_with_1009_before_it_ends(running):
    raw = raw_websocket(running.port)
    try:
        read_frame(raw)
        client = client_frames()
        emoji = "\U0001F600" * 20_000  # 80,000 bytes, yet 20,000 characters
        raw.sendall(client.send_data(emoji, fin=False) + client.send_data(emoji, fin=False))
        # Never finished: the server must not wait for the end to count.
        raw.settimeout(PROMPTLY)
        while (frame := read_frame(raw))[0] != 0x8:
            pass
        assert int.from_bytes(frame[1][:2], "big") == 1009
    finally:
        raw.close()


# Protocol errors, as the Autobahn test suite checks them


def masked_frame(first_byte, payload, length=None):
    """A client frame byte by byte: FIN, RSV and opcode in `first_byte`; masked with a zero mask."""
    length = len(payload) if length is None else length
    header = bytes([first_byte, 0x80 | length]) if length < 126 else \
        bytes([first_byte, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload


PROTOCOL_ERRORS = {
    "invalid UTF-8 in a text frame": (masked_frame(0x81, b"caf\xc3"), 1007),
    "a reserved bit set": (masked_frame(0x81 | 0x40, b"hi"), 1002),
    "an unknown opcode": (masked_frame(0x83, b"hi"), 1002),
    "a fragmented ping": (masked_frame(0x09, b"hi"), 1002),
    "a ping of 126 bytes": (masked_frame(0x89, b"p" * 126), 1002),
    "a close code no one may send": (masked_frame(0x88, (1005).to_bytes(2, "big")), 1002),
}


@pytest.mark.parametrize("error", PROTOCOL_ERRORS)
def test_protocol_errors_close_with_the_code_rfc_6455_names_and_nothing_after(running, error):
    frame, code = PROTOCOL_ERRORS[error]
    raw = raw_websocket(running.port)
    try:
        read_frame(raw)
        raw.sendall(frame)
        frames = frames_in(read_until_the_server_hangs_up(raw, PROMPTLY))
    finally:
        raw.close()
    assert [opcode for opcode, _ in frames] == [0x8]
    assert int.from_bytes(frames[0][1][:2], "big") == code


def test_a_ping_inside_a_fragmented_message_is_answered_before_the_message_is_carried_out(running):
    text = json.dumps({"command": "send-message", "ref": "r-3", "message": {"user": "Azin", "text": "split"}})
    client = client_frames()
    raw = raw_websocket(running.port)
    try:
        read_frame(raw)
        raw.sendall(client.send_data(text[:10], fin=False) + client.ping(b"between") + client.send_data(text[10:]))
        raw.settimeout(PROMPTLY)
        replies = []
        while not replies or replies[-1][0] != 0x1 or json.loads(replies[-1][1])["command"] != "sent":
            replies.append(read_frame(raw))
        assert replies[0] == (0xA, b"between")
    finally:
        raw.close()


# Every frame costs from the address's allowance


@pytest.fixture(params=["flask run", "gunicorn"])
def rate_limited(request):
    """A server with flood control at its default, started afresh: the allowance is full."""
    server = FlaskRun(free_port()) if request.param == "flask run" else Gunicorn()
    server.start()
    yield server
    server.stop()


def post_status(server):
    """POST a message from this address; return the status."""
    return server.request("POST", "/messages", {"user": "Azin", "text": "hello"}).status


@pytest.mark.parametrize("flood", ["pings", "empty continuation frames"])
def test_pings_and_empty_fragments_cost_from_the_addresss_allowance_so_a_flood_of_them_is_paced(
        rate_limited, flood):
    raw = raw_websocket(rate_limited.port)
    try:
        read_frame(raw)
        client = client_frames()
        if flood == "pings":
            frames = [client.ping(b"%d" % n) for n in range(BURST + 150)]
        else:  # a message begun and never ended
            frames = [client.send_data("", fin=False) for _ in range(BURST + 150)]
        # A ping marks where the server has got to; more of the flood follows it.
        before_mark = BURST + 10
        started = time.monotonic()
        raw.sendall(b"".join(frames[:before_mark]) + client.ping(b"mark") + b"".join(frames[before_mark:]))
        raw.settimeout(PROMPTLY)
        while read_frame(raw) != (0xA, b"mark"):
            pass
        elapsed = time.monotonic() - started
        # A burst at once, then RATE_LIMIT frames a second: the mark comes no sooner than that allows.
        assert before_mark + 1 <= BURST + RATE_LIMIT * elapsed + 2, f"{before_mark + 1} frames in {elapsed:.2f} s"
        # They spend the address's allowance, which its HTTP requests share: a change must wait.
        assert post_status(rate_limited) == 429
    finally:
        raw.close()


# Slow readers


@pytest.mark.skipif(sys.platform != "linux", reason="reads the kernel's send queue from /proc/net/tcp")
@pytest.mark.config(RATE_LIMIT=0, STALL_SECONDS=1)
def test_a_client_that_never_reads_pins_little_kernel_memory_and_is_hung_up_on_in_a_quiet_chat(
        server, broadcaster):
    raw = raw_websocket(server.port, receive_buffer=2048)
    try:
        wait_until(lambda: len(broadcaster.subscribers) == 1)
        for n in range(1500):  # about 1.5 MB of chat, then silence
            server.app.extensions["chat"].store.add("flood", f"{n:04} " + "x" * 990)
        held = []

        def send_queue():
            held.append(kernel_send_queue(server.port, raw.getsockname()[1]))
            return len(held) > 20 or not broadcaster.subscribers

        wait_until(send_queue, timeout=PROMPTLY)
        assert max(held) <= 256 * 1024, f"the kernel holds {max(held)} bytes for a client that reads nothing"
        # Nothing more is sent, and the client takes nothing: it is hung up on all the same.
        wait_until(lambda: not broadcaster.subscribers, timeout=PROMPTLY)
    finally:
        raw.close()


def kernel_send_queue(server_port, client_port):
    """Bytes the kernel holds to send from the server's end of the connection to `client_port`."""
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if (local, remote) == (server_port, client_port):
                return int(fields[4].split(":")[0], 16)
    return 0  # gone: the server hung up


# Every read has a deadline, TLS included


def test_a_wss_client_that_sends_part_of_a_tls_record_and_stops_is_pinged_and_closed(start, tmp_path):
    server = start(FlaskRunTLS(tmp_path, env={
        "FLASK_SOCK_SERVER_OPTIONS": json.dumps({"max_message_size": 65536, "ping_interval": 0.5}),
        "FLASK_CLOSE_SECONDS": "0.5"}))
    trust = server.trust
    with trust.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                           server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        tls.settimeout(PROMPTLY)
        assert tls.recv(4096).startswith(b"HTTP/1.1 101")
        # 10 bytes of a TLS record that says 64 more follow, underneath the TLS layer; then nothing.
        with socket.socket(fileno=os.dup(tls.fileno())) as plain:
            plain.sendall(b"\x17\x03\x03\x00\x40" + b"\0" * 5)
        received = b""
        try:
            while chunk := tls.recv(65536):
                received += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass  # the server hung up mid-record: it let go all the same
        except TimeoutError:
            pytest.fail(f"still connected after {PROMPTLY} s")
        assert b"\x89\x00" in received  # it was pinged


# Large frames


def test_a_frame_larger_than_the_send_queue_reaches_a_client_that_reads():
    app = Flask(__name__)
    sock = Sock(app)

    @sock.route("/big")
    def big(ws):
        ws.send("x" * 300_000)
        ws.wait_closed()

    live = LiveServer(app)
    try:
        with connect(f"ws://127.0.0.1:{live.port}/big", max_size=None) as ws:
            assert ws.recv(timeout=PROMPTLY) == "x" * 300_000
    finally:
        live.stop()

