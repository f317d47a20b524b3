"""What connection.py borrows from simple-websocket and wsproto, checked by name.

connection.py stands in for simple-websocket's socket and reads a few of its
attributes. requirements.txt pins the versions this was tested with; if an
upgrade renames one of them, this test says which, rather than a WebSocket
test failing somewhere far away.
"""

import socket
from importlib.metadata import version

import simple_websocket
from wsproto.connection import ConnectionState

from connection import SIMPLE_WEBSOCKET_INTERNALS, encode_text_frame


def test_simple_websocket_still_has_the_internals_that_connection_py_relies_on():
    server_end, client_end = socket.socketpair()
    environ = {
        "werkzeug.socket": server_end,
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    ws = simple_websocket.Server(environ, ping_interval=25, max_message_size=65536)
    try:
        assert client_end.recv(4096).startswith(b"HTTP/1.1 101")
        for name in SIMPLE_WEBSOCKET_INTERNALS:
            assert hasattr(ws, name), (
                f"simple-websocket {version('simple-websocket')}'s Server has no attribute {name!r}: "
                f"connection.py uses it. Pin simple-websocket to the version in requirements.txt, "
                f"or update connection.py.")
        assert ws.sock is server_end, "simple-websocket no longer reads and writes through ws.sock"
        assert isinstance(ws.input_buffer, list), "ws.input_buffer is no longer a list of frames"
        assert ws.thread.is_alive(), "ws.thread is no longer simple-websocket's reader thread"
        assert ws.ws.state is ConnectionState.OPEN, "ws.ws is no longer the wsproto connection"
    finally:
        client_end.close()
        ws.thread.join(timeout=5)
        server_end.close()


def test_wsproto_still_encodes_a_server_text_frame_as_rfc_6455_says():
    # FIN and opcode 1 (text), no mask, a length of 5, then the bytes.
    assert encode_text_frame("Hello") == b"\x81\x05Hello"
