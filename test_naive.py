"""Why not just loop over the sockets? One client that stops reading, against three broadcasts.

bench/naive_app.py's `/loop/ws` is what most examples write: the route that
receives a message sends it to every socket in turn, under a lock. Once a client
that stopped reading has let its buffers fill, the loop's send to it waits for
ever, holding the lock, and everyone else stops getting messages, for good.
Step 3 (a thread per socket, each following the store from its own cursor) and
the app (one broadcaster whose sends never wait) keep delivering to the others.

Each test sends more than the stalled client's buffers can hold: the most the
kernel lets a server's socket buffer (tcp_wmem's last figure, 4 MB by default
on Linux), and as much again, in messages of about 900 characters.
"""

import itertools
import json
import socket
import struct
import time
from pathlib import Path

import pytest

from app import create_app
from helpers import PROJECT, PROMPTLY, LiveServer, close_app, import_fresh, raw_websocket, receive_json

TEXT = "x" * 900  # with its number, within the app's limit of 1000 characters
# When the reader has received nothing for this long, deliveries have stopped; and a client
# connecting afterwards that gets no first frame in NEWCOMER_SECONDS is kept waiting. Only the
# loop's test waits them out, and there a busy machine can only make a stall look longer.
QUIET_SECONDS = 1
NEWCOMER_SECONDS = 1

copies = itertools.count()


def messages_to_send():
    """Enough messages of TEXT to overflow a stalled client's buffers twice over, whatever this kernel allows."""
    most_buffered = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return 2 * most_buffered // len(TEXT) + 1000


@pytest.fixture
def broadcast(request):
    """A live server of the broadcast named by the test's parameter, and the path of its WebSocket."""
    if request.param == "loop":
        app = import_fresh(PROJECT / "bench" / "naive_app.py", f"naive_app_{next(copies)}").app
        path = "/loop/ws"
    elif request.param == "step 3":
        app = import_fresh(PROJECT / "steps" / "3-websocket" / "app.py", f"step_3_{next(copies)}").app
        path = "/ws"
    else:
        # The sender here is far faster than a person, and sends more than the app keeps by default.
        app = create_app({"TESTING": True, "RATE_LIMIT": 0, "MAX_MESSAGES": 10**6})
        path = "/ws"
    live = LiveServer(app)
    live.path = path
    yield live
    live.stop()
    if request.param == "app":
        close_app(app)


def numbers_in(frame):
    """The numbers of this test's messages in a `messages` frame."""
    return [int(message["text"].split()[0]) for message in json.loads(frame)["messages"]]


def stop_reading_and_send(server):
    """Connect a client that never reads, one that reads and one that sends, then send; return the reader."""
    # A small receive buffer, set before connecting: the kernel then keeps it small.
    server.stalled = raw_websocket(server.port, server.path, receive_buffer=4096)
    # No limit on what these clients queue unread: neither may slow the server down.
    reader = server.connect(server.path, max_queue=None)
    server.sender = sender = server.connect(server.path, max_queue=None)
    receive_json(reader), receive_json(sender)
    for number in range(messages_to_send()):
        sender.send(json.dumps({"command": "send-message", "message": {"user": "bench", "text": f"{number} {TEXT}"}}))
    return reader


def take(reader, quiet=None, timeout=120):
    """Return the numbers of the messages the reader gets, up to the last one sent.

    With `quiet`, stop early when nothing has come for that many seconds.
    """
    received, last = [], messages_to_send() - 1
    deadline = time.monotonic() + timeout
    while last not in received[-1:]:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"gave up after {timeout} s with {len(received)} messages of {last + 1}"
        try:
            received += numbers_in(reader.recv(timeout=min(quiet or remaining, remaining)))
        except TimeoutError:
            if quiet:
                break
    return received


@pytest.mark.parametrize("broadcast", ["loop"], indirect=True)
def test_with_a_loop_over_the_sockets_one_client_that_stops_reading_stops_everyone_else(broadcast):
    received = take(stop_reading_and_send(broadcast), quiet=QUIET_SECONDS)

    assert received, "the reader got nothing at all, not even before the stalled client's buffers filled"
    assert received == list(range(len(received)))
    assert len(received) < messages_to_send()  # and nothing came for QUIET_SECONDS: the loop is stuck
    newcomer = broadcast.connect(broadcast.path)
    with pytest.raises(TimeoutError):  # its route waits for the lock that the stuck loop holds
        newcomer.recv(timeout=NEWCOMER_SECONDS)
    broadcast.stalled.close()  # which lets the loop go at last...
    # ...through the thousands of frames it has still to read from the sender: drop them with a reset,
    # else the other clients' closing handshakes wait behind them.
    broadcast.sender.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    broadcast.sender.socket.close()


@pytest.mark.parametrize("broadcast", ["step 3", "app"], indirect=True)
def test_with_a_thread_per_socket_or_the_apps_broadcaster_a_client_that_stops_reading_stops_no_one(broadcast):
    received = take(stop_reading_and_send(broadcast))

    assert received == list(range(messages_to_send()))  # every message, once, in order
    assert receive_json(broadcast.connect(broadcast.path), timeout=PROMPTLY)["command"] == "messages"
    broadcast.stalled.close()
