"""What connection.py borrows from simple-websocket beyond its documented API, checked by name and by use.

simple-websocket does the handshake; connection.py then takes over the
connection through two undocumented attributes of its `Server`: `sock` (the
client's socket) and `ws` (the wsproto `WSConnection` the handshake opened).
Everything after that is wsproto's public API. requirements.txt pins the
versions this was tested with; if an upgrade renames or changes one of these,
these tests say which, rather than a WebSocket test failing somewhere far away.
"""

import socket
from importlib.metadata import version

import pytest
import simple_websocket
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import FrameProtocol, Opcode
from wsproto.utilities import LocalProtocolError

from connection import Connection, NoReaderThread, encode_text_frame

MAX_MESSAGE_SIZE = 65536
# The client end here never hangs up: each close waits out CLOSE_SECONDS, so it is short.
CONFIG = {"SOCK_SERVER_OPTIONS": {"max_message_size": MAX_MESSAGE_SIZE, "ping_interval": 25},
          "CLOSE_SECONDS": 0.2}


@pytest.fixture
def accepted():
    """A simple-websocket Server as connection.py's `Sock` configures it, and the client's end of its socket."""
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
    yield ws, server_end, client_end
    client_end.close()
    server_end.close()


def client_frames():
    """A WebSocket client's frame encoder: its frames are masked."""
    return FrameProtocol(client=True, extensions=[])


def frames_until_closed(client_end):
    """Everything the server sends until it hangs up, as (opcode, payload) pairs."""
    client = client_frames()
    while chunk := client_end.recv(65536):
        client.receive_bytes(chunk)
    return [(frame.opcode, frame.payload) for frame in client.received_frames()]


def test_simple_websocket_hands_over_its_socket_as_sock_and_its_open_wsproto_connection_as_ws(accepted):
    ws, server_end, _ = accepted
    where = f"simple-websocket {version('simple-websocket')}'s Server"
    assert ws.sock is server_end, f"{where} no longer keeps the client's socket as `sock`"
    assert isinstance(ws.ws, WSConnection), f"{where} no longer keeps its wsproto connection as `ws`"
    assert ws.ws.state is ConnectionState.OPEN, "the handshake no longer leaves wsproto's connection open"
    assert isinstance(ws.thread, NoReaderThread), "simple-websocket no longer takes its reader from thread_class"


def test_a_connection_on_sock_and_ws_receives_messages_and_answers_pings_and_the_close_frame(accepted):
    ws, _, client_end = accepted
    connection = Connection(ws.sock, ws.ws, CONFIG)
    client = client_frames()
    client_end.sendall(client.send_data("Hel", fin=False) + client.ping(b"are you there") +
                       client.send_data("lo") + client.send_data(b"\x00\x01") + client.close(1000, "bye"))
    assert list(connection) == ["Hello", b"\x00\x01"]
    connection.close()
    assert ws.ws.state is ConnectionState.CLOSED
    assert frames_until_closed(client_end) == [(Opcode.PONG, b"are you there"), (Opcode.CLOSE, (1000, "bye"))]


def test_simple_websockets_own_close_after_ours_sends_nothing(accepted):
    # flask-sock calls the Server's close() once the route has ended.
    ws, _, client_end = accepted
    connection = Connection(ws.sock, ws.ws, CONFIG)
    client_end.sendall(client_frames().close(1000))
    connection.wait_closed()
    connection.close()
    with pytest.raises(LocalProtocolError):
        ws.close(1001, "going away")  # wsproto refuses a second close frame; flask-sock ignores the error
    assert frames_until_closed(client_end) == [(Opcode.CLOSE, (1000, ""))]


def test_a_message_over_the_limit_closes_with_1009_as_its_fragments_arrive(accepted):
    ws, _, client_end = accepted
    connection = Connection(ws.sock, ws.ws, CONFIG)
    client = client_frames()
    # More than the limit, in fragments, and never finished: nothing waits for the end.
    client_end.sendall(client.send_data("x" * 40000, fin=False) + client.send_data("y" * 40000, fin=False))
    assert list(connection) == []
    assert ws.ws.state is ConnectionState.LOCAL_CLOSING
    client_end.sendall(client.close(1000))
    connection.close()
    assert frames_until_closed(client_end) == [(Opcode.CLOSE, (1009, "Message is too big"))]


def test_wsproto_still_encodes_a_server_text_frame_as_rfc_6455_says():
    # FIN and opcode 1 (text), no mask, a length of 5, then the bytes.
    assert encode_text_frame("Hello") == b"\x81\x05Hello"
