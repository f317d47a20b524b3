"""Serving the app: how many sockets fit, requests that take too long, clean stops, proxies.

A server can hold only so many connections at once: under `flask run` each
takes a thread and open files, under gunicorn (gunicorn.conf.py) each takes one
of the worker's `worker_connections`. A WebSocket or a long poll keeps its
connection for minutes, a page or an API request for milliseconds. So sockets
and long polls get a share (`capacity`), and beyond it a 503 before the
upgrade, while the rest stays free for pages and the API.

`init_app` wraps the app, under every server, so that:
- `TRUSTED_PROXIES` proxies in front of the app are believed about who the
  client is (werkzeug's ProxyFix): flood control counts per client address;
- a request body must arrive within REQUEST_SECONDS, however it trickles (408);
- a refused body (403, 408, 413, 415, 429) is not read on: the answer says
  `Connection: close`, and under gunicorn the socket's reading side is shut,
  so its "discard the rest of the body" loop ends as soon as nothing is waiting.

Under `flask run`, and only there, it also changes werkzeug's development
server, which `flask run` builds after `create_app`, by naming our subclass as
`werkzeug.serving.ThreadedWSGIServer` (the class `make_server` builds):
- a request, headers and body, must arrive within REQUEST_SECONDS of the
  connection's start (silent, trickled, or a TLS handshake that never starts),
  and nothing is read after the answer (werkzeug would read on for 10 GB);
- the TLS handshake happens in the connection's own thread, not the one that
  accepts everyone's connections;
- out of open files, the server pauses instead of spinning;
- stopping (Ctrl+C, SIGTERM) closes every WebSocket with 1001, "going away".
Flask's own hooks can't do this: they run inside a request, after the server
has accepted, handshaken and read it, and `flask run` offers no option for the
server class or request handler it passes to werkzeug's `run_simple`.
gunicorn has its own answers, set in gunicorn.conf.py; tests and a Python
shell get werkzeug untouched.
"""

import atexit
import errno
import io
import os
import resource
import signal
import socket
import sys
import threading
import time
from contextlib import nullcontext, suppress
from functools import partial

import click
import flask.cli
import werkzeug.serving
from werkzeug.exceptions import RequestTimeout
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import ClosingIterator
from wsproto.frame_protocol import CloseReason

# Out of open files, wait this long before accepting again.
OUT_OF_FILES_PAUSE = 0.5
# gunicorn.conf.py tells the app, through this environment variable, how many
# connections its worker serves at once.
CONNECTIONS_VARIABLE = "CHAT_WORKER_CONNECTIONS"
# Answers that refuse a request without reading its body.
REFUSALS = {403, 408, 413, 415, 429}


def init_app(app):
    """Serve `app` as this module says: proxies believed, slow and refused bodies cut off, flask run hardened."""
    seconds = float(app.config["REQUEST_SECONDS"])
    # Here and below, a bound method rather than the object: a call to an object goes through
    # C, which under gunicorn adds 600 bytes to the stack each idle WebSocket's greenlet keeps.
    app.wsgi_app = BodyDeadline(app.wsgi_app, seconds).__call__
    proxies = int(app.config["TRUSTED_PROXIES"])
    if proxies:
        # Each proxy appends the address it got the request from to X-Forwarded-For;
        # believe only the last `proxies` entries, the ones our own proxies wrote.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies).__call__
    command = click.get_current_context(silent=True)  # the command line's, while flask run loads the app
    if command is not None and command.command is flask.cli.run_command:
        reloads = command.params.get("reload")
        harden_werkzeug(seconds, app.debug if reloads is None else reloads)  # as flask run decides


def harden_werkzeug(seconds, reloads):
    """Make the server that flask run is about to build the one this module describes."""
    RequestHandler.timeout = seconds
    werkzeug.serving.ThreadedWSGIServer = ThreadedServer
    if reloads and werkzeug.serving.is_running_from_reloader():
        stop_when_the_reloader_asks()
    elif reloads:
        pass_stops_to_the_served_process()


def capacity(app):
    """Return how many WebSockets and waiting long polls this process holds while pages still get answers."""
    open_files = open_file_limit()
    # Under flask run, a WebSocket holds one open file (its socket: it waits
    # with poll, which opens none), as a long poll does. Together they may use
    # three quarters of the limit; the rest is kept for pages, API requests and log files.
    websockets = open_files * 5 // 8
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


class BodyDeadline:
    """WSGI middleware: a body that takes longer than `seconds` gets 408; a refused body is not read on."""

    def __init__(self, wsgi_app, seconds):
        self.wsgi_app = wsgi_app
        self.seconds = seconds

    def __call__(self, environ, start_response):
        # The client's socket, as werkzeug and gunicorn hand it to the app (flask-sock reads the same keys).
        raw = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
        if raw is not None:  # a real server, not Flask's test client
            environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"], raw, time.monotonic() + self.seconds)
        refused = False

        def start(status, headers, exc_info=None):
            nonlocal refused
            refused = int(status[:3]) in REFUSALS
            if refused:
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)

        answer = self.wsgi_app(environ, start)
        # gunicorn ignores an application's `Connection: close` and, to serve the
        # next request, would read the rest of the body first. (Under flask run,
        # RequestHandler reads nothing after an answer.)
        if refused and "gunicorn.socket" in environ:
            return ClosingIterator(answer, partial(stop_reading, environ["gunicorn.socket"]))
        return answer


def stop_reading(raw):
    """Shut the socket for reading, once the answer is sent: the server's drain of the body ends at once."""
    # With reading shut, the socket gives what has arrived, then its end.
    with suppress(OSError):  # the client has gone already
        raw.shutdown(socket.SHUT_RD)


class DeadlineInput:
    """A request body (`wsgi.input`) whose every read waits at most until the deadline; then 408."""

    def __init__(self, body, raw, deadline):
        self.body = body
        self.raw = raw
        self.deadline = deadline

    def read(self, *size):
        return self.before_deadline(self.body.read, *size)

    def readline(self, *size):
        return self.before_deadline(self.body.readline, *size)

    def readlines(self, *hint):
        return self.before_deadline(self.body.readlines, *hint)

    def __iter__(self):
        return iter(self.readline, b"")

    def before_deadline(self, read, *args):
        """Call `read(*args)`, which may wait for bytes many times, until the deadline at most; then 408."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout("The request's body took too long to arrive.")
        timeout = self.raw.gettimeout()
        self.raw.settimeout(left)  # for each wait; under werkzeug, DeadlineReader counts them together
        try:
            with whole_read_deadline(left):
                return read(*args)
        except TimeoutError:
            raise RequestTimeout("The request's body took too long to arrive.") from None
        finally:
            self.raw.settimeout(timeout)


def whole_read_deadline(seconds):
    """Under gevent (gunicorn's worker), a deadline for every wait of a read together; else none."""
    if "gevent.monkey" in sys.modules and sys.modules["gevent.monkey"].is_module_patched("socket"):
        import gevent

        return gevent.Timeout(seconds, TimeoutError)
    return nullcontext()


# werkzeug's development server, as flask run builds it


class DeadlineReader(io.RawIOBase):
    """The connection as werkzeug reads a request from it: nothing past the deadline, nothing after the answer."""

    def __init__(self, handler):
        self.handler = handler

    def readable(self):
        return True

    def readinto(self, buffer):
        handler = self.handler
        if handler.answered:
            return 0  # werkzeug would read on for up to 10 GB, to discard it
        left = handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("The request took too long to arrive.")
        handler.connection.settimeout(left)
        try:
            return handler.connection.recv_into(buffer)
        finally:
            handler.connection.settimeout(handler.timeout)


class RequestHandler(werkzeug.serving.WSGIRequestHandler):
    """werkzeug's request handler, which gives a request REQUEST_SECONDS from the connection's start."""

    # REQUEST_SECONDS (init_app sets it). socketserver sets it on the connection,
    # for each write; a WebSocket lifts it (connection.py).
    timeout = 10

    def setup(self):
        """Read requests through a DeadlineReader."""
        super().setup()
        self.rfile = io.BufferedReader(DeadlineReader(self))

    def handle_one_request(self):
        """Read and answer one request, which must arrive within REQUEST_SECONDS."""
        self.deadline = time.monotonic() + self.timeout
        self.answered = False
        super().handle_one_request()

    def end_headers(self):
        """Send the answer's headers; werkzeug closes the connection after the answer, so stop reading."""
        self.answered = True
        super().end_headers()


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
        """Serve until Ctrl+C or SIGTERM, then close every WebSocket with 1001."""
        if threading.current_thread() is not threading.main_thread():
            # --debug: the server runs in a thread, and werkzeug's reloader ends
            # the process (Ctrl+C, SIGTERM, a saved file) from the main thread.
            atexit.register(close_all)
        else:  # Python's default SIGTERM ends at once; as Ctrl+C, werkzeug stops serving.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            super().serve_forever(poll_interval)
        finally:
            close_all()


# Stopping, under either server: every WebSocket gets a close frame (gunicorn.conf.py calls close_all too)


# The connections open in this process (handshake.Sock's routes add and remove them), to close when it stops.
open_connections = set()
open_connections_changed = threading.Condition()


def opened(connection):
    """Count `connection` as open, until `closed`."""
    with open_connections_changed:
        open_connections.add(connection)


def closed(connection):
    """Count `connection` as closed, and wake `close_all` if it waits for it."""
    with open_connections_changed:
        open_connections.discard(connection)
        open_connections_changed.notify_all()


def close_all():
    """Close every open WebSocket of this process with 1001, all at once, within a few seconds."""
    with open_connections_changed:
        connections = list(open_connections)
    for connection in connections:  # every close frame is queued at once; each route sends it and ends
        connection.start_closing(CloseReason.GOING_AWAY, "The server is stopping; connect again.")
    seconds = max((connection.close_seconds for connection in connections), default=0)
    with open_connections_changed:
        open_connections_changed.wait_for(lambda: open_connections.isdisjoint(connections), timeout=seconds)
        unanswered = open_connections.intersection(connections)
    for connection in unanswered:  # hanging up wakes its route, which ends
        connection.hang_up()


# flask --debug run: a first process restarts, at every saved file, a second
# process that serves. On SIGTERM, werkzeug's first process kills the second
# with SIGKILL, which leaves no time to close the WebSockets. So it passes the
# request on, through a pipe the second process inherits, and waits for it.
STOP_VARIABLE = "CHAT_RELOADER_STOP_FD"


def pass_stops_to_the_served_process():
    """In the reloader's first process: on SIGTERM, ask the serving process to stop, and wait for it."""
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    os.environ[STOP_VARIABLE] = str(read_end)

    def ask_to_stop(signum, frame):
        os.write(write_end, b"!")

    def after_werkzeug(event, args):
        # werkzeug sets its SIGTERM handler after the app is created, then
        # starts the serving process: take the handler back as it does.
        if event == "subprocess.Popen" and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, ask_to_stop)

    sys.addaudithook(after_werkzeug)


def stop_when_the_reloader_asks():
    """In the serving process: stop as on SIGTERM when the first process asks, or is gone."""
    if STOP_VARIABLE not in os.environ:
        return  # started by another reloader than ours
    read_end = int(os.environ[STOP_VARIABLE])

    def wait():
        os.read(read_end, 1)  # a byte, or the end of the pipe if the first process died
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="waiting for the reloader", daemon=True).start()

