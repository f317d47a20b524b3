"""What the app borrows from other packages beyond their documented APIs, each checked by name and by use.

- simple-websocket does the handshake; handshake.py then hands the connection
  to connection.py through undocumented attributes of its `Server`: `sock`
  (the client's socket), and `ws` (the wsproto `WSConnection` it opened) and
  `connected`, which it sets so that the Server lets go of the handshake and
  its own close() sends nothing. What follows is wsproto's documented
  `Connection`, for what follows a handshake done elsewhere.
- connection.py encodes a broadcast frame once, with wsproto's `FrameProtocol`
  (wsproto documents its connections and events, not this class).
- serving.py, under `flask run` only: werkzeug's `make_server` builds the class
  named `werkzeug.serving.ThreadedWSGIServer` when it is called, over a
  listening socket it wrapped in the TLS context; werkzeug's request handler
  reads the request through its `rfile` and calls `end_headers` as the answer
  starts; `flask --debug run`'s first process sets its SIGTERM handler before
  it starts the serving process.
- serving.py, under both servers: the client's socket is in the WSGI environ as
  `werkzeug.socket` or `gunicorn.socket`. gunicorn.conf.py: gevent's worker is
  an `AsyncWorker`, whose `cfg.worker_connections` is the setting, and a worker
  calls the app it keeps as `wsgi` (which gunicorn.conf.py sets to Flask's
  `wsgi_app`, to keep a call through C off every WebSocket's stack).
requirements.txt pins the versions this was tested with; if an upgrade renames
or changes one of these, these tests say which, rather than a test failing
somewhere far away.
"""

import gc
import http.client
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import weakref
from importlib.metadata import version

import pytest
import simple_websocket
import werkzeug.serving
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import FrameProtocol, Opcode

from connection import Connection, encode_text_frame
from handshake import NoReaderThread, take_over
from helpers import PROJECT, PROMPTLY, Gunicorn

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
    assert ws.connected is True, f"{where} no longer says it is open with `connected`"
    assert isinstance(ws.thread, NoReaderThread), "simple-websocket no longer takes its reader from thread_class"


def test_taking_over_lets_go_of_the_handshake_and_leaves_an_open_connection(accepted):
    ws, _, _ = accepted
    handshake = weakref.ref(ws.ws)
    protocol = take_over(ws)
    gc.collect()
    assert handshake() is None, "the Server still holds its handshake, 3 KB for every open socket"
    assert protocol.state is ConnectionState.OPEN


def test_a_connection_on_sock_and_ws_receives_messages_and_answers_pings_and_the_close_frame(accepted):
    ws, _, client_end = accepted
    protocol = take_over(ws)
    connection = Connection(ws.sock, protocol, CONFIG)
    client = client_frames()
    client_end.sendall(client.send_data("Hel", fin=False) + client.ping(b"are you there") +
                       client.send_data("lo") + client.send_data(b"\x00\x01") + client.close(1000, "bye"))
    assert list(iter(connection.receive, None)) == ["Hello", b"\x00\x01"]
    connection.close()
    assert protocol.state is ConnectionState.CLOSED
    assert frames_until_closed(client_end) == [(Opcode.PONG, b"are you there"), (Opcode.CLOSE, (1000, "bye"))]


def test_simple_websockets_own_close_after_ours_sends_nothing(accepted):
    # flask-sock calls the Server's close() once the route has ended.
    ws, _, client_end = accepted
    connection = Connection(ws.sock, take_over(ws), CONFIG)
    client_end.sendall(client_frames().close(1000))
    connection.wait_closed()
    connection.close()
    with pytest.raises(simple_websocket.ConnectionClosed):
        ws.close(1001, "going away")  # taken over, it is no longer connected; flask-sock ignores the error
    assert frames_until_closed(client_end) == [(Opcode.CLOSE, (1000, ""))]


def test_a_message_over_the_limit_closes_with_1009_as_its_fragments_arrive(accepted):
    ws, _, client_end = accepted
    protocol = take_over(ws)
    connection = Connection(ws.sock, protocol, CONFIG)
    client = client_frames()
    # More than the limit, in fragments, and never finished: nothing waits for the end.
    client_end.sendall(client.send_data("x" * 40000, fin=False) + client.send_data("y" * 40000, fin=False))
    assert list(iter(connection.receive, None)) == []
    assert protocol.state is ConnectionState.LOCAL_CLOSING
    client_end.sendall(client.close(1000))
    connection.close()
    assert frames_until_closed(client_end) == [(Opcode.CLOSE, (1009, "Message is too big"))]


def test_wsproto_still_encodes_a_server_text_frame_as_rfc_6455_says():
    # FIN and opcode 1 (text), no mask, a length of 5, then the bytes.
    assert encode_text_frame("Hello") == b"\x81\x05Hello"


# werkzeug, as serving.py changes it under flask run


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello"]


def test_werkzeug_builds_the_server_class_its_module_names_when_make_server_is_called(monkeypatch):
    class Named(werkzeug.serving.ThreadedWSGIServer):
        pass

    monkeypatch.setattr(werkzeug.serving, "ThreadedWSGIServer", Named)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server = werkzeug.serving.make_server("127.0.0.1", 0, hello, threaded=True, ssl_context=context)
    try:
        assert type(server) is Named, "make_server no longer builds werkzeug.serving.ThreadedWSGIServer"
        # So its accept() would do each TLS handshake in the accepting thread: serving.py accepts plainly.
        assert isinstance(server.socket, ssl.SSLSocket) and server.ssl_context is context
    finally:
        server.server_close()


def test_werkzeug_reads_a_request_through_the_handlers_rfile_and_hands_the_app_its_socket():
    seen = {}

    class Counted(io.RawIOBase):  # as serving.DeadlineReader reads it
        def __init__(self, connection):
            self.connection = connection

        def readable(self):
            return True

        def readinto(self, buffer):
            size = self.connection.recv_into(buffer)
            seen["read through rfile"] = seen.get("read through rfile", 0) + size
            return size

    class Watched(werkzeug.serving.WSGIRequestHandler):
        def setup(self):
            super().setup()
            self.rfile = io.BufferedReader(Counted(self.connection))

        def end_headers(self):
            seen["end_headers"] = seen.get("end_headers", 0) + 1
            super().end_headers()

    def app(environ, start_response):
        seen["body"] = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        seen["socket"] = environ["werkzeug.socket"].getpeername()
        return hello(environ, start_response)

    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True, request_handler=Watched)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        client = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=PROMPTLY)
        client.request("POST", "/", body=b"the body")
        address = client.sock.getsockname()
        assert client.getresponse().read() == b"Hello"
        assert seen["body"] == b"the body"
        assert seen["socket"] == address, "werkzeug.socket is no longer the client's socket"
        assert seen["read through rfile"] >= len(b"POST / HTTP/1.1\r\n") + len(b"the body")
        assert seen["end_headers"] == 1
        client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_werkzeugs_reloader_sets_its_sigterm_handler_before_it_starts_the_serving_process():
    # serving.py takes SIGTERM back at that moment (an audit hook on subprocess.Popen).
    probe = """
import os, signal, sys
import werkzeug.serving

def audit(event, args):
    if event == "subprocess.Popen":
        print("set" if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None) else "not set", flush=True)
        os._exit(0)

sys.addaudithook(audit)
werkzeug.serving.run_simple("127.0.0.1", 0, lambda environ, start_response: [], use_reloader=True)
"""
    env = {name: value for name, value in os.environ.items() if not name.startswith("WERKZEUG_")}
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert finished.stdout.strip() == "set", finished.stdout + finished.stderr


# gunicorn, as serving.py and gunicorn.conf.py use it


def test_gunicorn_hands_the_app_its_socket_runs_gevents_worker_as_an_asyncworker_and_calls_worker_wsgi(tmp_path):
    (tmp_path / "probe.py").write_text("""
import json, os

class Probe:
    # As a Flask app: calling it calls its wsgi_app.
    def __call__(self, environ, start_response):
        return self.answer(environ, start_response, "the app object")

    def wsgi_app(self, environ, start_response):
        return self.answer(environ, start_response, "wsgi_app")

    def answer(self, environ, start_response, called):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"socket": environ["gunicorn.socket"].getpeername(), "called": called,
                            "at_once": os.environ.get("CHAT_WORKER_CONNECTIONS")}).encode()]

app = Probe()
""")

    class Probe(Gunicorn):
        def command(self):
            return [sys.executable, "-m", "gunicorn", "-c", str(PROJECT / "gunicorn.conf.py"),
                    "-b", f"127.0.0.1:{self.port}", "probe:app"]

    server = Probe()
    server.cwd = tmp_path
    try:
        server.start()
        client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=PROMPTLY)
        client.request("GET", "/")
        address = client.sock.getsockname()
        seen = json.loads(client.getresponse().read())
        assert tuple(seen["socket"]) == address, "gunicorn.socket is no longer the client's"
        # gunicorn.conf.py's post_fork found an AsyncWorker, and read worker_connections from its cfg.
        assert seen["at_once"] == "10000"
        # Its post_worker_init replaced the worker's `wsgi`, and gunicorn called what it found there.
        assert seen["called"] == "wsgi_app", "gunicorn no longer calls the app it keeps as worker.wsgi"
        client.close()
    finally:
        server.stop()
