"""Serving the app: how many sockets fit, connections that say nothing, clean stops, proxies.

A server can hold only so many connections at once: under `flask run` each
takes a thread and open files, under gunicorn (gunicorn.conf.py) each takes one
of the worker's `worker_connections`. A WebSocket or a long poll keeps its
connection for minutes, a page or an API request for milliseconds. So sockets
and long polls get a share, and beyond it a 503 before the upgrade, while the
rest stays free for pages and the API.

`init_app` adjusts werkzeug's development server, which `flask run` builds
after `create_app`:

- a connection that completes no request within REQUEST_SECONDS (silent, or a
  TLS handshake that never starts) is closed, and the TLS handshake happens in
  the connection's own thread, so it holds up no one else;
- out of open files, the server pauses instead of spinning;
- stopping (Ctrl+C, SIGTERM) closes every WebSocket with 1001, "going away".

It also believes `TRUSTED_PROXIES` proxies in front of the app about who the
client is (werkzeug's ProxyFix): flood control counts per client address.
"""

import atexit
import errno
import os
import resource
import signal
import socket
import threading
import time

import werkzeug.serving
from werkzeug.middleware.proxy_fix import ProxyFix

import connection

# A connection that completes no request within this many seconds is closed.
REQUEST_SECONDS = 10
# Out of open files, wait this long before accepting again.
OUT_OF_FILES_PAUSE = 0.5
# gunicorn.conf.py tells the app, through this environment variable, how many
# connections its worker serves at once.
CONNECTIONS_VARIABLE = "CHAT_WORKER_CONNECTIONS"
# Under flask run, a WebSocket holds one open file (its socket: it waits
# with poll, which opens none), as a long poll does. Together they may use
# three quarters of the limit; the rest is kept for pages, API requests and log files.
FILES_PER_WEBSOCKET = 1


def init_app(app):
    """Serve `app` as this module says: proxies believed, idle connections closed, clean stops."""
    proxies = int(app.config["TRUSTED_PROXIES"])
    if proxies:
        # Each proxy appends the address it got the request from to X-Forwarded-For;
        # believe only the last `proxies` entries, the ones our own proxies wrote.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    # flask run calls make_server, which builds the server class named here.
    werkzeug.serving.ThreadedWSGIServer = ThreadedServer


def capacity(app):
    """Return how many WebSockets and waiting long polls this process holds while pages still get answers."""
    open_files = open_file_limit()
    websockets = open_files * 5 // 8 // FILES_PER_WEBSOCKET
    long_polls = open_files // 8
    at_once = os.environ.get(CONNECTIONS_VARIABLE)
    if at_once:  # under gunicorn, its worker's connections run out first
        # A fifth stays free for pages and API requests; of the rest, sockets
        # get two thirds and long polls one.
        shared = int(at_once) - max(2, int(at_once) // 5)
        websockets = min(websockets, max(0, shared * 2 // 3))
        long_polls = min(long_polls, max(0, shared // 3))
    app.logger.info("Room for %d WebSockets and %d waiting long polls (%s).", websockets, long_polls,
                    f"{at_once} connections at once" if at_once else f"{open_files} open files")
    return websockets, long_polls


def open_file_limit():
    """Raise this process's limit of open files as far as it may; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # macOS calls its hard limit "infinity", then refuses more than 10240.
    for limit in (hard, 10240):
        if soft < limit != resource.RLIM_INFINITY:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                return limit
            except (ValueError, OSError):
                continue
    return soft


class RequestHandler(werkzeug.serving.WSGIRequestHandler):
    """werkzeug's request handler, which gives up on a connection that says nothing for REQUEST_SECONDS."""

    # socketserver sets it on the connection: each read (a TLS handshake's
    # included) and write waits at most this long. A WebSocket lifts it (connection.py).
    timeout = REQUEST_SECONDS


class ThreadedServer(werkzeug.serving.ThreadedWSGIServer):
    """The server `flask run` builds, with the defences this module describes."""

    def __init__(self, host, port, app, handler=None, *args, **kwargs):
        super().__init__(host, port, app, handler or RequestHandler, *args, **kwargs)

    def get_request(self):
        """Accept a connection, leaving its TLS handshake to the connection's thread."""
        try:
            if self.ssl_context is None:
                return self.socket.accept()
            # A TLS socket's accept() would do the handshake here, and a client
            # that never starts it would keep everyone else waiting.
            plain, address = socket.socket.accept(self.socket)
            return self.ssl_context.wrap_socket(plain, server_side=True, do_handshake_on_connect=False), address
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                # The connection waits in the queue; trying again at once would
                # only burn the CPU until a file is closed.
                time.sleep(OUT_OF_FILES_PAUSE)
            raise

    def serve_forever(self, poll_interval=0.5):
        """Serve until Ctrl+C or SIGTERM."""
        # Signals reach the main thread only (with --debug, the server runs in another).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)
        super().serve_forever(poll_interval)


def close_websockets():
    """Close every WebSocket of this process with 1001, "going away": the server is stopping."""
    connection.close_all()


# However flask run ends (Ctrl+C, or SIGTERM as below), pages hear why. (gunicorn
# waits for its threads before this runs: gunicorn.conf.py closes the sockets first.)
atexit.register(close_websockets)


def stop_as_on_ctrl_c(signum, frame):
    """Stop the server as Ctrl+C does: werkzeug ends, and the atexit hook closes the WebSockets."""
    raise KeyboardInterrupt
