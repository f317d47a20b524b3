"""One WebSocket connection, made safe against clients that read slowly, flood, or vanish.

flask-sock gives each WebSocket route a simple-websocket `Server`, which is
fine for well-behaved clients. For the others, this module adds what it lacks:

- Sending never blocks and never queues without bound. A client that stops
  reading is hung up on; the broadcaster gives a client at most one frame at a
  time, and a client that is behind skips rounds instead of piling them up.
- Receiving is bounded too: when a few frames wait to be carried out, we stop
  reading the socket, and TCP makes the client wait.
- Frames over the size limit, counted in bytes, close the connection with 1009.
- Every connection ends with a close frame and nothing after it. (Left alone,
  werkzeug writes an HTTP response after the WebSocket closes: flask-sock #20.)
- When the server stops, `close_all` closes every connection with 1001
  ("going away"), so pages know to reconnect.

It does this by standing in for the socket that simple-websocket writes to and
reads from. The attributes of simple-websocket it relies on are listed in
`SIMPLE_WEBSOCKET_INTERNALS`, and checked by a test.
"""

import selectors
import socket
import ssl
import threading
import time
from collections import deque
from functools import wraps

import logging

import flask_sock
from simple_websocket import ConnectionClosed
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import CloseReason, FrameProtocol
from wsproto.utilities import LocalProtocolError

# A client that takes none of the bytes we send for this long is hung up on.
STALL_SECONDS = 5
# Bytes that may wait for a client besides one broadcast frame: errors, pongs, the close frame.
MAX_QUEUED_BYTES = 65536
# Frames received but not yet carried out. With this many waiting, we stop reading the socket.
MAX_WAITING_FRAMES = 4
# How long the closing handshake may take, and how long we listen for the client's last bytes.
CLOSE_SECONDS = 2
# How often a route waiting for frames checks that its connection is still open.
RECEIVE_TIMEOUT = 30

# Windows has no MSG_DONTWAIT: there, sends block and a stalled client slows the others.
DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0)
# The most a TLS socket is given at once: one TLS record.
TLS_RECORD_BYTES = 16384

# The connections open in this process, so that a server that stops can close them all.
open_connections = set()
open_connections_lock = threading.Lock()

# simple-websocket's `Server` attributes used here, so an upgrade that renames one fails a test.
SIMPLE_WEBSOCKET_INTERNALS = ("sock", "ws", "event", "thread", "input_buffer", "connected",
                              "max_message_size", "receive", "close")


log = logging.getLogger(__name__)


class Sock(flask_sock.Sock):
    """flask-sock's `Sock`, whose routes get a `Connection` instead of a bare simple-websocket `Server`."""

    def init_app(self, app):
        """Give the app's sockets reader threads that can't die and leave their connection open."""
        super().init_app(app)
        app.config["SOCK_SERVER_OPTIONS"] = {"thread_class": ReaderThread,
                                             **app.config["SOCK_SERVER_OPTIONS"]}

    def route(self, path, bp=None, **kwargs):
        """Register a WebSocket route, as flask-sock's `route` does."""

        def decorator(handler):
            @wraps(handler)
            def serve(ws, *args, **kwargs):
                connection = Connection(ws)
                with open_connections_lock:
                    open_connections.add(connection)
                try:
                    handler(connection, *args, **kwargs)
                finally:
                    connection.close()
                    with open_connections_lock:
                        open_connections.discard(connection)

            return flask_sock.Sock.route(self, path, bp, **kwargs)(serve)

        return decorator


class Connection:
    """One client's WebSocket: send and receive text frames, and close it cleanly."""

    def __init__(self, ws):
        self._ws = ws
        self._socket = GuardedSocket(ws)
        ws.sock = self._socket  # from now on, every byte simple-websocket sends goes through it
        # simple-websocket's reader thread starts during the handshake, before
        # this route: it may have sent a close frame through the bare socket
        # already (wsproto, which writes it, says so first). Then nothing may follow.
        if ws.ws.state is not ConnectionState.OPEN:
            self._socket.finish()

    @property
    def connected(self):
        """True until the connection starts to close, from either side."""
        # Not `ws.connected` alone: simple-websocket sets it again each time it
        # reads more frames, even after a close frame has gone out.
        return self._ws.connected and not self._socket.finishing and not self._socket.closing

    @property
    def client_said_goodbye(self):
        """True once the client's close frame has arrived, unless we had closed first."""
        # wsproto knows it before simple-websocket's `connected` says so.
        return not self._socket.closed_by_us and self._ws.ws.state in (
            ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED)

    def send(self, text):
        """Send one text frame. Never blocks: a client that stops reading is hung up on."""
        self._socket.send(encode_text_frame(text))

    def __iter__(self):
        """Yield each frame the client sends (text, or bytes for a binary frame) until the connection ends."""
        while True:
            try:
                frame = self._ws.receive(timeout=RECEIVE_TIMEOUT)
            except ConnectionClosed:
                return
            self._socket.frame_taken()
            # Frames that arrived before the client's close frame were sent
            # on purpose, and count. After we hang up or close, or after the
            # connection broke, none is carried out.
            if not self.connected and not self.client_said_goodbye:
                return
            if frame is None:
                continue
            # simple-websocket counts the size of text in characters; the limit is in bytes.
            size = len(frame.encode()) if isinstance(frame, str) else len(frame)
            if size > self._ws.max_message_size:
                self.close(CloseReason.MESSAGE_TOO_BIG, "Message is too big")
                return
            yield frame

    def wait_closed(self):
        """Wait until the client leaves, ignoring what it sends."""
        for _ in self:
            pass

    def offer(self, frame):
        """Queue ready-made frame bytes, unless the last ones are still on their way; return whether queued."""
        return self._socket.offer(frame)

    def push(self):
        """Send what waits for this client, as far as its socket takes it; True if no offered frame waits."""
        return self._socket.push()

    def hang_up(self):
        """End the connection at once, without a closing handshake (for a client that can't be served)."""
        self._socket.hang_up()

    def close(self, code=CloseReason.NORMAL_CLOSURE, reason=""):
        """Close: our close frame, the client's answer, the TCP connection; nothing after, whoever started."""
        self.start_closing(code, reason)
        self.finish_closing(time.monotonic() + CLOSE_SECONDS * 3)

    def start_closing(self, code, reason):
        """Queue our close frame, unless a close frame has gone out already; never waits."""
        if not self._socket.finishing:  # else a close frame, ours or our answer to the client's, went out
            self._socket.finish()  # no frame may follow the close frame
            if self._ws.connected:
                try:
                    self._ws.close(code, reason)  # queues our close frame
                except (ConnectionClosed, LocalProtocolError):
                    pass  # the client's close frame came first: simple-websocket has answered it

    def finish_closing(self, deadline):
        """Send our close frame and wait for the client's answer, until `deadline` at most; then hang up."""
        self._socket.flush(wait=min(CLOSE_SECONDS, deadline - time.monotonic()))
        # simple-websocket's reader thread ends when the client answers our close
        # frame, and then closes its socket (that is, calls `GuardedSocket.close`).
        self._ws.thread.join(max(0, deadline - time.monotonic()))
        self._socket.hang_up()


def close_all(code=CloseReason.GOING_AWAY, reason="The server is stopping; connect again.",
              seconds=CLOSE_SECONDS):
    """Close every open connection of this process, all at once, within about `seconds`: the server is stopping."""
    with open_connections_lock:
        connections = list(open_connections)
    for connection in connections:  # every close frame goes out first...
        connection.start_closing(code, reason)
    deadline = time.monotonic() + seconds
    for connection in connections:  # ...then the answers are awaited together
        connection.finish_closing(deadline)


class ReaderThread(threading.Thread):
    """simple-websocket's reader thread, which ends its connection if an unexpected error ends it.

    simple-websocket's thread stops on network errors only. Anything else (a
    MemoryError, say) would end the thread and leave the connection open, its
    route waiting for frames that never come, its slot taken, and no pings sent.
    """

    def run(self):
        ws = self._target.__self__  # the simple-websocket Server this thread reads for
        try:
            super().run()
        except BaseException:
            try:
                log.exception("A WebSocket's reader failed; closing its connection with 1011.")
                if ws.connected:
                    ws.close(CloseReason.INTERNAL_ERROR, "The server failed; connect again.")
            except BaseException:
                pass  # out of memory, even for that: the connection still ends below
            ws.connected = False
            ws.event.set()  # wakes the route, which ends
            ws.sock.close()


class GuardedSocket:
    """What simple-websocket sees as its socket: writes go through a bounded queue, reads wait their turn."""

    def __init__(self, ws):
        self._ws = ws
        self._raw = ws.sock
        # The server's timeout for reading a request (serving.py) is not for the
        # WebSocket that follows: with a timeout, even a send that must not wait waits.
        self._raw.settimeout(None)
        # Under gevent, a socket's send waits for room even when told not to
        # (MSG_DONTWAIT). The operating system's socket it wraps never waits.
        self._unwaiting = getattr(self._raw, "_sock", self._raw)
        try:
            # werkzeug leaves Nagle's algorithm on, which holds a small frame
            # back until the client acknowledges the one before (up to 40 ms).
            self._raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket behind a proxy): nothing to do
        self._lock = threading.Lock()
        # Bytes to send, in order, as [view, offered]; the first may be partly sent already.
        self._queue = deque()
        self._offered_waiting = False  # whether a frame from `offer` is in the queue
        self._sent_bytes_waiting = 0  # bytes from `send` in the queue
        self._last_progress = time.monotonic()
        self._frame_taken = threading.Condition()
        self.finishing = False  # a close frame is on its way: nothing may follow it
        self.closing = False  # the connection is closed, or closing from the client's side
        self.closed_by_us = False  # our close frame went first (not an answer to the client's)

    # The socket interface that simple-websocket uses

    def send(self, data):
        """Queue bytes and send what the socket takes now; hang up if too much waits."""
        with self._lock:
            # A close frame (FIN and opcode 8: 0x88), ours or our answer to the
            # client's, is the last thing sent: drop anything after it.
            is_close_frame = data[:1] == b"\x88"
            if self.closing or (self.finishing and not is_close_frame):
                return len(data)
            # wsproto waits for the client's answer to a close frame that went first.
            self.closed_by_us |= is_close_frame and self._ws.ws.state is ConnectionState.LOCAL_CLOSING
            self.finishing |= is_close_frame
            if self._sent_bytes_waiting + len(data) > MAX_QUEUED_BYTES:
                self._hang_up()
            else:
                self._append(data, offered=False)
                self._send_queued()
        return len(data)

    def recv(self, size):
        """Read from the socket once the route has taken its waiting frames."""
        with self._frame_taken:
            while len(self._ws.input_buffer) >= MAX_WAITING_FRAMES and not self.closing:
                if self.finishing:
                    # No one will carry these out: drop them, and read on until
                    # the client's answer to our close frame.
                    self._ws.input_buffer.clear()
                    break
                self._frame_taken.wait(timeout=1)
        return self._raw.recv(size)

    def fileno(self):
        """The socket's file descriptor, for simple-websocket's selector."""
        return self._raw.fileno()

    def close(self):
        """End the connection; simple-websocket's reader thread calls this when it stops."""
        self.flush(wait=CLOSE_SECONDS)  # our close frame, if one is queued
        with self._lock:
            self.closing = True
        try:
            self._raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._drain()
        self.hang_up()

    # For the connection and the broadcaster

    def finish(self):
        """Take no more offered frames: our close frame is about to be queued."""
        with self._lock:
            self.finishing = True
        with self._frame_taken:
            self._frame_taken.notify()

    def offer(self, frame):
        """Queue `frame` unless an earlier offered frame still waits; return whether it was queued."""
        with self._lock:
            if self.closing or self.finishing or self._offered_waiting:
                return False
            if not self._queue:  # the usual case, and the one to make fast: send it at once
                try:
                    sent = self._send_some(frame)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._hang_up()
                    return True
                if sent == len(frame):
                    self._last_progress = time.monotonic()
                    return True
                frame = memoryview(frame)[sent:]
            self._append(frame, offered=True)
            self._send_queued()
            return True

    def push(self):
        """Send queued bytes as far as the socket takes them; return True if no offered frame waits."""
        if not self._queue:  # nothing to send: no need to wait for the lock
            return True
        with self._lock:
            self._send_queued()
            return not self._offered_waiting

    def flush(self, wait=0):
        """Send queued bytes, waiting up to `wait` seconds for the socket to take them; True if all went."""
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                self._send_queued()
                if not self._queue:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not wait_until_ready(self._raw, selectors.EVENT_WRITE, remaining):
                return False

    def frame_taken(self):
        """Tell the reader thread that the route has taken a frame, so it may read more."""
        with self._frame_taken:
            self._frame_taken.notify()

    def hang_up(self):
        """End the TCP connection now; whatever anyone writes after this is lost, werkzeug's bytes included."""
        with self._lock:
            self._hang_up()
        with self._frame_taken:
            self._frame_taken.notify()
        # simple-websocket can end a connection (a frame too big, say) without
        # waking a `receive()` that waits for the next frame. Wake it here.
        self._ws.event.set()

    # Called with the lock held

    def _append(self, data, offered):
        if not self._queue:
            self._last_progress = time.monotonic()
        self._queue.append([memoryview(data), offered])
        if offered:
            self._offered_waiting = True
        else:
            self._sent_bytes_waiting += len(data)

    def _send_queued(self):
        while self._queue:
            first, offered = self._queue[0]
            try:
                sent = self._send_some(first)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._hang_up()  # the connection is gone; the reader thread ends it
                return
            if sent:
                self._last_progress = time.monotonic()
                if not offered:
                    self._sent_bytes_waiting -= sent
            if sent < len(first):
                self._queue[0][0] = first[sent:]  # a view: nothing is copied
                if time.monotonic() - self._last_progress > STALL_SECONDS:
                    self._hang_up()
                return
            self._queue.popleft()
            if offered:
                self._offered_waiting = False

    def _send_some(self, data):
        """Send what the socket takes now, without waiting for more room; return how many bytes went."""
        if isinstance(self._raw, ssl.SSLSocket):
            # TLS sockets take no flags (flask run --cert): send one TLS record's
            # worth, and only when the socket has room for more.
            if not wait_until_ready(self._raw, selectors.EVENT_WRITE, 0):
                return 0
            return self._raw.send(data[:TLS_RECORD_BYTES])
        return self._unwaiting.send(data, DONT_WAIT)

    def _hang_up(self):
        # A close frame would wait behind everything else. Shutting the socket
        # down ends the connection now: simple-websocket's reader thread sees
        # it, and the route ends.
        self.closing = True
        self._queue.clear()
        self._offered_waiting = False
        self._sent_bytes_waiting = 0
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drain(self):
        """Read and drop what the client still sends, briefly, so that it reads our close frame.

        Closing a socket with unread bytes makes the kernel reset the
        connection, and the client may lose our close frame (with its code,
        such as 1009 for a frame too big) before reading it.
        """
        if isinstance(self._raw, ssl.SSLSocket):
            return  # reading without waiting needs flags, which TLS sockets don't take
        deadline = time.monotonic() + CLOSE_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            if not wait_until_ready(self._raw, selectors.EVENT_READ, remaining):
                return
            try:
                if not self._unwaiting.recv(65536, DONT_WAIT):
                    return  # the client has closed too
            except BlockingIOError:
                continue
            except OSError:
                return


def wait_until_ready(sock, events, timeout):
    """Wait until `sock` can be read or written (`events`); return False on timeout or if it is closed."""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, events)
            return bool(selector.select(timeout))
    except (OSError, ValueError):
        return False


def encode_text_frame(text):
    """Return the bytes of one unmasked, uncompressed WebSocket text frame, as a server sends it."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))
