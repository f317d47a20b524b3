"""The WebSocket handshake: what the server refuses with plain HTTP, and the socket handed to a Connection.

sockets.py calls `guard(bp)` once. Then, before each handshake: a page of
another site gets 403, a handshake that RFC 6455 wouldn't accept gets 400 with
the reason, and a client that would take more than the server's or its
address's share of sockets gets 503 or 429. After the upgrade a browser can
only see "closed", so this is the last moment to say why.

Its routes are `Sock`'s: simple-websocket does the handshake, then its
undocumented `sock` (the socket) goes to a `Connection` (connection.py), which
does the rest, and its `ws` and `connected` let go of the handshake
(`take_over`). test_internals.py checks all three.
"""

import base64
import binascii
from functools import wraps

import flask_sock
import simple_websocket
from flask import current_app, g, jsonify, request
from werkzeug.exceptions import BadRequest, Forbidden
from werkzeug.routing import WebsocketMismatch
from wsproto.connection import Connection as Protocol, ConnectionType
from wsproto.utilities import RemoteProtocolError

import serving
from connection import Connection
from guards import from_another_site, quote, take_place, whole_number


def guard(bp):
    """Check every handshake to the routes of `bp` before the upgrade, and give back what each took."""
    bp.before_request(check_handshake)
    bp.teardown_request(give_back_place)
    bp.after_request(log_as_switching_protocols)
    bp.register_error_handler(RemoteProtocolError, handshake_failed)
    bp.register_error_handler(simple_websocket.ConnectionError, handshake_failed)
    bp.app_errorhandler(WebsocketMismatch)(not_a_handshake)


def check_handshake():
    """Refuse a handshake the server can't or won't take, with an HTTP error before the upgrade."""
    if request.endpoint == "sockets.chat_socket":
        whole_number("since")  # an invalid cursor is refused now, while a status code can say so
    # Browsers send cookies with a WebSocket handshake from any site, so a page
    # elsewhere could chat in a visitor's name.
    if from_another_site():
        raise Forbidden(f"WebSocket connections from {quote(request.headers['Origin'])} are not allowed.")
    check_upgrade(request.headers)
    # Compressed frames would be inflated before any size check: a 200 KB frame
    # can hold 200 MB. Without the client's offer, none is negotiated.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    # Past its limit of open files, a server can't even accept a connection to
    # say no: refuse new sockets while there is still room to answer.
    take_place(current_app.extensions["chat"].sockets, "WebSockets open")
    g.socket_place = request.remote_addr


def give_back_place(error=None):
    """Give back the place of a WebSocket that has ended (or never started)."""
    address = g.pop("socket_place", None)
    if address is not None:
        current_app.extensions["chat"].sockets.give_back(address)


def log_as_switching_protocols(response):
    """Make werkzeug's log say 101, the status the handshake answered with."""
    # The 101 went out when the socket opened. What werkzeug logs, once the
    # socket has closed, is the status of flask-sock's response, which is never sent.
    if response.status_code == 200:
        response.status_code = 101
    return response


class VersionNotSupported(BadRequest):
    """A handshake for another version of WebSocket: RFC 6455 (4.4) names the one we speak."""

    def get_headers(self, *args, **kwargs):
        return [*super().get_headers(*args, **kwargs), ("Sec-WebSocket-Version", "13")]


def check_upgrade(headers):
    """Raise BadRequest unless the headers ask for a WebSocket as RFC 6455 says."""
    connection = [token.strip().lower() for token in headers.get("Connection", "").split(",")]
    if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
        raise BadRequest("This address speaks WebSocket: open it with new WebSocket(url), "
                         "or a request with Upgrade: websocket.")
    if headers.get("Sec-WebSocket-Version") != "13":
        raise VersionNotSupported("Sec-WebSocket-Version must be 13, the version of RFC 6455.")
    try:
        key = base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 16:
        raise BadRequest("Sec-WebSocket-Key must be 16 random bytes in base64.")


def not_a_handshake(error):
    """Say what is wrong when a plain request reaches a WebSocket address (werkzeug refuses it first)."""
    try:
        check_upgrade(request.headers)
    except BadRequest as reason:
        headers = [(name, value) for name, value in reason.get_headers() if name != "Content-Type"]
        return jsonify(error=reason.description), 400, headers
    return jsonify(error="This address speaks plain HTTP, not WebSocket."), 400


def handshake_failed(error):
    """Answer a handshake that failed anyway (the client left, say) with 400, and no traceback in the log."""
    return jsonify(error=f"The WebSocket handshake failed: {error}"), 400


class Sock(flask_sock.Sock):
    """flask-sock's `Sock`, whose routes get a `Connection` instead of a bare simple-websocket `Server`."""

    def __init__(self, app=None, pace=None):
        self.pace = pace  # called in each handshake's request: returns the connection's `pace`
        super().__init__(app)

    def init_app(self, app):
        """Register the routes; simple-websocket does only the handshake (its reader thread never starts)."""
        super().init_app(app)
        app.config["SOCK_SERVER_OPTIONS"] = {**app.config.get("SOCK_SERVER_OPTIONS", {}),
                                             "thread_class": NoReaderThread}

    def route(self, path, bp=None, **kwargs):
        """Register a WebSocket route, as flask-sock's `route` does."""
        def decorator(handler):
            @wraps(handler)
            def serve(ws, *args, **kwargs):
                connection = Connection(ws.sock, take_over(ws), current_app.config, self.pace and self.pace())
                serving.opened(connection)  # a stopping server closes it
                try:
                    if args or kwargs:
                        handler(connection, *args, **kwargs)
                    else:  # a call with * or ** goes through C: 600 bytes more on each idle greenlet's stack
                        handler(connection)
                finally:
                    try:
                        connection.close()
                    finally:
                        serving.closed(connection)

            return flask_sock.Sock.route(self, path, bp, **kwargs)(serve)
        return decorator


def take_over(ws):
    """Return a wsproto connection for what follows simple-websocket's handshake, and let go of that handshake.

    simple-websocket's `ws` keeps its wsproto WSConnection, and that keeps the
    whole handshake (h11's parser, the request's headers): 3 KB a socket for as
    long as it is open. After a handshake done elsewhere, wsproto documents its
    `Connection` with the extensions agreed: none, since check_handshake drops
    the client's offer. flask-sock calls `ws.close()` once the route has ended; not
    connected, it raises ConnectionClosed, which flask-sock ignores.
    """
    ws.ws, ws.connected = None, False
    return Protocol(ConnectionType.SERVER)


class NoReaderThread:
    """What simple-websocket takes for its reader thread (its `thread_class` option), and starts: nothing."""

    def __init__(self, target=None, **kwargs):
        self.name = "no reader thread: the route's own thread reads"

    def start(self):
        pass
