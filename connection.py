"""One WebSocket connection, made safe against clients that read slowly, flood, or vanish.

flask-sock gives each WebSocket route a simple-websocket `Server`, which is
fine for well-behaved clients. For the others, this module adds what it lacks:

- Sending never blocks and never queues without bound. A client that stops
  reading is hung up on; the broadcaster gives a client at most one frame at a
  time, and a client that is behind skips rounds instead of piling them up.
- Receiving is bounded too: the socket is read only when the route asks for
  the next frame, so a client that sends faster than its frames are carried
  out is made to wait by TCP.
- Frames over the size limit, counted in bytes, close the connection with 1009.
- Every connection ends with a close frame and nothing after it. (Left alone,
  werkzeug writes an HTTP response after the WebSocket closes: flask-sock #20.)
- When the server stops, `close_all` closes every connection with 1001
  ("going away"), so pages know to reconnect.

How. simple-websocket would start a reader thread for each socket (under
gunicorn, a greenlet), which reads frames into a list for `receive()` to take.
Each such thread costs memory, and the route's own thread is there anyway,
waiting for frames. So simple-websocket gets a thread that never starts
(`NoReaderThread`), and `for frame in connection` reads in the route's thread:
it waits until the client's bytes arrive, sending a ping every `ping_interval`
while none do, and hands them to simple-websocket's `_handle_events`, which
answers pings and close frames and collects whole messages. (A route that
stops asking for frames reads nothing more: no pings go out, and a client's
close frame waits until the route ends and closes.)

Sending goes through `GuardedSocket`, which stands in for the socket that
simple-websocket writes to: the broadcaster sends from its own thread while
the route reads. The attributes of simple-websocket relied on are listed in
`SIMPLE_WEBSOCKET_INTERNALS`, and checked by a test.
"""

import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from functools import wraps

import flask_sock
from wsproto.connection import ConnectionState
from wsproto.events import Ping
from wsproto.frame_protocol import CloseReason, FrameProtocol
from wsproto.utilities import LocalProtocolError

# A client that takes none of the bytes we send for this long is hung up on.
STALL_SECONDS = 5
# Bytes that may wait for a client besides one broadcast frame: errors, pongs, the close frame.
MAX_QUEUED_BYTES = 65536
# How long the closing handshake may take, and how long we listen for the client's last bytes.
CLOSE_SECONDS = 2

# Windows has no MSG_DONTWAIT: there, sends block and a stalled client slows the others.
DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0)
# The most a TLS socket is given at once: one TLS record.
TLS_RECORD_BYTES = 16384

# The connections open in this process, so that a server that stops can close
# them all; notified whenever one ends, so that it can wait for them.
open_connections = set()
open_connections_changed = threading.Condition()

# simple-websocket's `Server` attributes used here, so an upgrade that renames one fails a test.
SIMPLE_WEBSOCKET_INTERNALS = ("sock", "ws", "input_buffer", "connected", "max_message_size",
                              "receive_bytes", "ping_interval", "pong_received", "_handle_events",
                              "close")


log = logging.getLogger(__name__)


class Sock(flask_sock.Sock):
    """flask-sock's `Sock`, whose routes get a `Connection` instead of a bare simple-websocket `Server`."""

    def init_app(self, app):
        """Register the routes, and have each socket read in its route's thread instead of a thread of its own."""
        super().init_app(app)
        # Whatever the settings say: a reader thread would take the bytes the route waits for.
        app.config["SOCK_SERVER_OPTIONS"] = {**app.config.get("SOCK_SERVER_OPTIONS", {}),
                                             "thread_class": NoReaderThread}

    def route(self, path, bp=None, **kwargs):
        """Register a WebSocket route, as flask-sock's `route` does."""

        def decorator(handler):
            @wraps(handler)
            def serve(ws, *args, **kwargs):
                connection = Connection(ws)
                with open_connections_changed:
                    open_connections.add(connection)
                try:
                    handler(connection, *args, **kwargs)
                finally:
                    try:
                        connection.close()
                    finally:
                        with open_connections_changed:
                            open_connections.discard(connection)
                            open_connections_changed.notify_all()

            return flask_sock.Sock.route(self, path, bp, **kwargs)(serve)

        return decorator


class NoReaderThread:
    """What simple-websocket takes for its reader thread, and starts: nothing. The route reads instead."""

    def __init__(self, target=None, **kwargs):
        self.name = "no reader thread: the route's own thread reads"

    def start(self):
        pass

    def is_alive(self):
        return False

    def join(self, timeout=None):
        pass


class Connection:
    """One client's WebSocket: send and receive text frames, and close it cleanly."""

    def __init__(self, ws):
        self._ws = ws
        self._socket = GuardedSocket(ws)
        ws.sock = self._socket  # from now on, every byte simple-websocket sends goes through it
        # wsproto keeps the connection's state: the route's thread changes it as
        # it reads, and close_all's thread as it closes. One at a time.
        self._protocol_lock = threading.Lock()
        self._next_ping = time.monotonic() + (ws.ping_interval or 0)

    @property
    def connected(self):
        """True until the connection starts to close, from either side."""
        # Not `ws.connected` alone: the broadcaster hangs up without telling simple-websocket.
        return self._ws.connected and not self._socket.finishing and not self._socket.closing

    @property
    def client_said_goodbye(self):
        """True once the client's close frame has arrived, unless we had closed first."""
        return not self._socket.closed_by_us and self._ws.ws.state in (
            ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED)

    def send(self, text):
        """Send one text frame. Never blocks: a client that stops reading is hung up on."""
        self._socket.send(encode_text_frame(text))

    def __iter__(self):
        """Yield each frame the client sends (text, or bytes for a binary frame) until the connection ends."""
        waiting = self._ws.input_buffer  # whole frames read and not yet taken, oldest first
        while True:
            if not waiting:
                try:
                    if not self._read_more():
                        return
                except Exception:
                    # Our failure, not the client's (out of memory, say): this
                    # connection ends, with a close frame that says so, and no other.
                    log.exception("Reading a WebSocket failed; closing it with 1011.")
                    self.close(CloseReason.INTERNAL_ERROR, "The server failed; connect again.")
                    return
                continue
            frame = waiting.pop(0)
            # Frames that arrived before the client's close frame were sent
            # on purpose, and count. After we hang up or close, or after the
            # connection broke, none is carried out.
            if not self.connected and not self.client_said_goodbye:
                return
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
        try:
            self.start_closing(code, reason)
            self._finish_closing()
        finally:
            self._socket.hang_up()  # even if closing failed, nothing more goes out

    def start_closing(self, code, reason):
        """Queue our close frame, unless a close frame has gone out already; never waits."""
        with self._protocol_lock:
            if self._socket.finishing:  # a close frame, ours or our answer to the client's, went out
                return
            self._socket.finish()  # no frame may follow the close frame
            if self._ws.connected:
                self._ws.close(code, reason)  # queues our close frame

    def _finish_closing(self):
        """Send our close frame and our end of TCP, read until the client's answer (CLOSE_SECONDS at most), hang up."""
        self._socket.stop_sending()
        # The client may still be sending (the rest of a frame too big, say).
        # Read on until its close frame, or its end of TCP: a socket closed with
        # bytes unread is reset, which can lose our close frame before the client
        # reads it, 1009 and all.
        deadline = time.monotonic() + CLOSE_SECONDS
        while self._ws.ws.state is ConnectionState.LOCAL_CLOSING:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.wait_readable(remaining):
                break
            try:
                if not self._receive():
                    break
            except Exception:
                break  # our failure (logged if it came while serving): the socket is shut down below
            self._ws.input_buffer.clear()  # sent after our close frame: never carried out
        self._socket.shut_down()

    def _read_more(self):
        """Wait for the client's next bytes, pinging meanwhile, and hand them on; False once the connection ended."""
        while self.connected:
            timeout = None  # without pings, wait as long as it takes
            if self._ws.ping_interval:
                timeout = max(0, self._next_ping - time.monotonic())
            # Bytes that came are read first: the pong to our last ping may be among them.
            if self._socket.wait_readable(timeout):
                return self._receive()
            if not self._ping():
                return False
        return False

    def _ping(self):
        """Ping the client, as simple-websocket's reader thread would; False if the last ping went unanswered."""
        ws = self._ws
        if not ws.pong_received:
            self.start_closing(CloseReason.POLICY_VIOLATION, "Ping/Pong timeout")
            return False
        ws.pong_received = False  # simple-websocket sets it again when the pong comes
        with self._protocol_lock:
            if ws.ws.state is ConnectionState.OPEN:
                self._socket.send(ws.ws.send(Ping()))
        self._next_ping = time.monotonic() + ws.ping_interval
        return True

    def _receive(self):
        """Read what the client sent and hand it to simple-websocket; False if the connection broke."""
        ws = self._ws
        try:
            data = self._socket.recv(ws.receive_bytes)
        except OSError:
            data = b""
        if not data:  # the client went away, or we hung up
            ws.connected = False
            return False
        with self._protocol_lock:
            try:
                ws.ws.receive_data(data)
            except LocalProtocolError:  # bytes after the closing handshake
                ws.connected = False
                return False
            # Answers pings and the client's close frame, appends whole messages to
            # input_buffer, and closes with 1009 when one grows past max_message_size.
            ws.connected = ws._handle_events() and ws.connected
        return True


def close_all(code=CloseReason.GOING_AWAY, reason="The server is stopping; connect again.",
              seconds=CLOSE_SECONDS):
    """Close every open connection of this process, all at once, within about `seconds`: the server is stopping."""
    with open_connections_changed:
        connections = list(open_connections)
    for connection in connections:  # every close frame is queued first...
        connection.start_closing(code, reason)
    deadline = time.monotonic() + seconds
    for connection in connections:  # ...then sent, as far as each client takes it
        connection._socket.flush(wait=max(0, deadline - time.monotonic()))
    # Each route reads its client's answer, shuts its socket down and ends
    # (Connection.__iter__, then close): wait for them all together.
    with open_connections_changed:
        open_connections_changed.wait_for(lambda: open_connections.isdisjoint(connections),
                                          timeout=max(0, deadline - time.monotonic()))
        unanswered = open_connections.intersection(connections)
    for connection in unanswered:  # hanging up wakes its route, which ends
        connection.hang_up()


class GuardedSocket:
    """The socket as simple-websocket sees it: writes go through a bounded queue that never blocks."""

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
        self.finishing = False  # a close frame is on its way: nothing may follow it
        self.closing = False  # nothing more goes out: the connection is ending, or we hung up
        self.closed_by_us = False  # our close frame went first (not an answer to the client's)

    # What simple-websocket calls

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

    # For the connection, which reads in the route's thread

    def wait_readable(self, timeout):
        """Wait until the client's bytes can be read, up to `timeout` seconds (None: no limit); False if none came."""
        # A TLS socket may hold bytes it has decrypted already, which waiting wouldn't see.
        if isinstance(self._raw, ssl.SSLSocket) and self._raw.pending():
            return True
        return wait_until_ready(self._raw, selectors.EVENT_READ, timeout)

    def recv(self, size):
        """Read up to `size` bytes the client sent; b"" once it has gone."""
        return self._raw.recv(size)

    def stop_sending(self):
        """Send what is queued (CLOSE_SECONDS at most), then nothing more; tell a plain socket's client so at once."""
        self.flush(wait=CLOSE_SECONDS)
        with self._lock:
            self.closing = True
        # The end of our half of TCP follows the close frame: a client that waits
        # for it before answering is not kept waiting. (A TLS socket shut down
        # halfway can't decrypt what still comes, so it waits for shut_down.)
        if not isinstance(self._raw, ssl.SSLSocket):
            try:
                self._raw.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def shut_down(self):
        """End the connection cleanly: our end of TCP, then, briefly, the client's; then hang up."""
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

    def hang_up(self):
        """End the TCP connection now; whatever anyone writes after this is lost, werkzeug's bytes included."""
        with self._lock:
            self._hang_up()

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
                self._hang_up()  # the connection is gone; the route, reading, sees it and ends
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
        # down ends the connection now: the route, waiting for the client's
        # bytes, wakes up to find none, and ends.
        self.closing = True
        self._queue.clear()
        self._offered_waiting = False
        self._sent_bytes_waiting = 0
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drain(self):
        """Read and drop what the client still sends, briefly, until it closes its end too.

        Closing a socket with unread bytes makes the kernel reset the
        connection, and the client may lose our last bytes before reading them.
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
    """Wait until `sock` can be read or written (`events`), or is closed; return False on timeout."""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, events)
            return bool(selector.select(timeout))
    except (OSError, ValueError):
        return True  # closed: the read or write that follows finds out


def encode_text_frame(text):
    """Return the bytes of one unmasked, uncompressed WebSocket text frame, as a server sends it."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))
