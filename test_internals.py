"""What connection.py borrows from simple-websocket and wsproto, checked by name and by use.

connection.py reads each socket in its route's own thread, doing what
simple-websocket's reader thread would have done: it hands the bytes to wsproto
and calls simple-websocket's `_handle_events`. requirements.txt pins the
versions this was tested with; if an upgrade renames or changes one of these
internals, these tests say which, rather than a WebSocket test failing
somewhere far away.
"""

import socket
from importlib.metadata import version

import pytest
import simple_websocket
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import FrameProtocol, Opcode

from connection import SIMPLE_WEBSOCKET_INTERNALS, NoReaderThread, encode_text_frame

MAX_MESSAGE_SIZE = 65536


@pytest.fixture
def accepted():
    """A simple-websocket Server as connection.py configures it, and the client's end of its socket."""
    server_end, client_end = socket.socketpair()
    environ = {
        "werkzeug.socket": server_end,
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    ws = simple_websocket.Server(environ, ping_interval=25, max_message_size=MAX_MESSAGE_SIZE,
                                 thread_class=NoReaderThread)
    assert client_end.recv(4096).startswith(b"HTTP/1.1 101")
    client_end.settimeout(5)
    yield ws, client_end
    client_end.close()
    server_end.close()


def client_frames():
    """A WebSocket client's frame encoder: its frames are masked."""
    return FrameProtocol(client=True, extensions=[])


def from_client(ws, data):
    """Hand bytes from the client to the server as connection.py does; return what `_handle_events` returns."""
    ws.ws.receive_data(data)
    return ws._handle_events()


def frames_sent(client_end):
    """The frames the server has sent to the client, as (opcode, payload) pairs."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(client_end.recv(65536))
    return [(frame.opcode, frame.payload) for frame in client.received_frames()]


def test_simple_websocket_still_has_the_internals_that_connection_py_relies_on(accepted):
    ws, _ = accepted
    for name in SIMPLE_WEBSOCKET_INTERNALS:
        assert hasattr(ws, name), (
            f"simple-websocket {version('simple-websocket')}'s Server has no attribute {name!r}: "
            f"connection.py uses it. Pin simple-websocket to the version in requirements.txt, "
            f"or update connection.py.")
    assert isinstance(ws.sock, socket.socket), "simple-websocket no longer writes through ws.sock"
    assert isinstance(ws.thread, NoReaderThread), "simple-websocket no longer takes its reader from thread_class"
    assert ws.ws.state is ConnectionState.OPEN, "ws.ws is no longer the wsproto connection"
    assert ws.input_buffer == [] and ws.connected and ws.pong_received
    assert ws.max_message_size == MAX_MESSAGE_SIZE and ws.ping_interval == 25
    assert isinstance(ws.receive_bytes, int)


def test_handle_events_collects_whole_messages_in_input_buffer(accepted):
    ws, _ = accepted
    client = client_frames()
    assert from_client(ws, client.send_data("Hel", fin=False) + client.send_data("lo") +
                       client.send_data(b"\x00\x01")) is True
    assert ws.input_buffer == ["Hello", b"\x00\x01"]


def test_handle_events_answers_pings_and_notes_pongs(accepted):
    ws, client_end = accepted
    ws.pong_received = False  # as connection.py sets it when it pings
    assert from_client(ws, client_frames().ping(b"are you there") + client_frames().pong(b"")) is True
    assert frames_sent(client_end) == [(Opcode.PONG, b"are you there")]
    assert ws.pong_received


def test_handle_events_answers_the_clients_close_frame_and_says_to_stop(accepted):
    ws, client_end = accepted
    assert from_client(ws, client_frames().close(1000, "bye")) is False
    assert not ws.connected
    assert ws.ws.state is ConnectionState.CLOSED
    assert frames_sent(client_end) == [(Opcode.CLOSE, (1000, "bye"))]


def test_handle_events_closes_with_1009_when_a_message_grows_past_the_limit(accepted):
    ws, client_end = accepted
    client = client_frames()
    half = "x" * (MAX_MESSAGE_SIZE // 2 + 1)
    assert from_client(ws, client.send_data(half, fin=False) + client.send_data(half)) is False
    assert ws.input_buffer == []
    assert ws.ws.state is ConnectionState.LOCAL_CLOSING
    assert frames_sent(client_end) == [(Opcode.CLOSE, (1009, "Message is too big"))]


def test_close_sends_our_close_frame_through_ws_sock_and_marks_the_connection_closed(accepted):
    ws, client_end = accepted
    ws.close(1001, "going away")
    assert not ws.connected
    assert ws.ws.state is ConnectionState.LOCAL_CLOSING
    assert frames_sent(client_end) == [(Opcode.CLOSE, (1001, "going away"))]


def test_wsproto_still_encodes_a_server_text_frame_as_rfc_6455_says():
    # FIN and opcode 1 (text), no mask, a length of 5, then the bytes.
    assert encode_text_frame("Hello") == b"\x81\x05Hello"
