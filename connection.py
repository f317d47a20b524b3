"""One WebSocket after its handshake: wsproto's state machine, and our own reading and writing.

simple-websocket does the handshake (handshake.py hands its socket over); then
the route's own thread does the rest on wsproto's public API (its `Connection`:
`receive_data`, `events()`, `send()`, `state`), so that each limit sits where
the bytes are:
- sending never blocks: the broadcaster offers one frame at a time, and a
  client that takes none of our bytes for STALL_SECONDS is hung up on (a small
  kernel send buffer lets us see it, and bounds what it pins);
- a message is counted in bytes as its fragments arrive (1009 as it passes the
  limit), and every other frame (pings, pongs, fragments) costs from the
  address's allowance, so a flood of tiny frames gets no more CPU than that;
- every wait has a deadline: a ping each `ping_interval`, TLS included;
- every connection ends with a close frame and nothing after: what came before
  the client's close frame is carried out, and answered, before ours.
"""

import logging
import math
import select
import socket
import ssl
import threading
import time
from contextlib import suppress

from wsproto.connection import ConnectionState as State
from wsproto.events import CloseConnection, Message, Ping, Pong
from wsproto.frame_protocol import CloseReason, FrameProtocol

# Bytes that may wait for a client besides one broadcast frame: error and sent frames, pongs, the close frame.
MAX_QUEUED_BYTES = 65536
# The kernel's send buffer for each WebSocket (Linux doubles it): what a client that reads nothing can pin.
SEND_BUFFER_BYTES = 65536
# Read, and give a TLS socket, at most this much at once (one TLS record): what a message may pass its limit by.
CHUNK_BYTES = 16384

log = logging.getLogger(__name__)
OPEN, REMOTE_CLOSING, LOCAL_CLOSING = State.OPEN, State.REMOTE_CLOSING, State.LOCAL_CLOSING
BEFORE_OUR_CLOSE = (OPEN, REMOTE_CLOSING)  # frames the client sent before its close frame still get answers


class Connection:
    """One client's WebSocket: send and receive text frames, and close it cleanly."""

    def __init__(self, sock, protocol, config, pace=None):
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._protocol = protocol  # wsproto's Connection: the one state of the connection
        options = config.get("SOCK_SERVER_OPTIONS", {})
        self.max_message_size = options.get("max_message_size")
        self.ping_interval = options.get("ping_interval")
        self.stall_seconds = float(config.get("STALL_SECONDS", 5))
        self.close_seconds = float(config.get("CLOSE_SECONDS", 2))
        self.flood_seconds = float(config.get("FLOOD_SECONDS", 5))
        self.pace = pace  # returns 0, or how long to read nothing: frames cost from the client's allowance
        # The route's thread reads and writes, the broadcaster writes, a stopping server closes: one at a time.
        self._lock = threading.RLock()
        self._out = bytearray()  # bytes on their way to the client, in order
        self._offered_until = 0  # where in them the offered frame ends (0: none waits)
        self._last_progress = self._last_ping = time.monotonic()
        self._awaiting_pong = self._hung_up = False
        self._messages = []  # whole messages read and not yet carried out (an empty deque takes 760 bytes)
        self._parts, self._size = [], 0  # the message arriving, and its size in bytes
        self._client_close = None  # the client's close frame, answered once the messages before it are carried out
        self._paced_seconds = 0  # how long its frames have waited for its allowance, without a break
        # The server's request timeout (serving.py) is not for a WebSocket: from now on, nothing waits.
        sock.setblocking(False)
        with suppress(OSError):  # not TCP (a Unix socket behind a proxy)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            # Without TCP_NODELAY, a small frame waits for the last one's acknowledgement (up to 40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def connected(self):
        """True until the connection starts to close, from either side."""
        return self._protocol.state is OPEN and not self._hung_up

    def send(self, text):
        """Send one text frame, unless our close frame has gone out; never blocks."""
        with self._lock:
            if self._protocol.state in BEFORE_OUR_CLOSE:
                # Not wsproto's send, which refuses once the client's close frame came: what came before it counts.
                self._write(encode_text_frame(text))

    def offer(self, frame):
        """Queue ready-made frame bytes, unless the last ones are still on their way; return whether queued."""
        with self._lock:
            if not self.connected or self._offered_until:
                return False
            self._write(frame, offered=True)
            self._offered_until = len(self._out)
            return True

    def push(self):
        """Send what waits for this client, as far as its socket takes it; True if no offered frame waits."""
        if not self._out:  # the usual case: no need to wait for the lock
            return True
        with self._lock:
            self._send_some()
            return not self._offered_until

    def receive(self):
        """Return the client's next message (text, or bytes); None once the connection has ended."""
        # Not a generator: iterating one keeps 400 bytes more on every idle greenlet's saved stack.
        while True:
            if self._messages:
                if self._hung_up or self._protocol.state not in BEFORE_OUR_CLOSE:
                    return None  # after we closed, or the connection broke, nothing is carried out
                return self._messages.pop(0)
            if self._client_close:  # the messages before its close frame are carried out: answer it
                self._send_event(self._client_close.response())
                return None
            try:
                if not self._read_more():
                    return None
            except Exception:
                # Our failure, not the client's (out of memory, say): this connection ends, saying so.
                log.exception("Reading a WebSocket failed; closing it with 1011.")
                self._send_event(CloseConnection(CloseReason.INTERNAL_ERROR, "The server failed; connect again."))
                return None

    def wait_closed(self):
        """Wait until the client leaves, ignoring what it sends."""
        while self.receive() is not None:
            pass

    def close(self, code=CloseReason.NORMAL_CLOSURE, reason=""):
        """Close: our close frame, the client's answer, the TCP connection; nothing after, whoever started."""
        try:
            self._send_event(CloseConnection(code, reason))
            self._finish_closing()
        finally:
            self.hang_up()  # nothing more goes out, not even the HTTP answer werkzeug writes (flask-sock #20)

    def start_closing(self, code, reason):
        """Queue our close frame, without waiting: the route, reading, finishes the closing handshake and ends."""
        self._send_event(CloseConnection(code, reason))

    def hang_up(self):
        """End the TCP connection now, without a closing handshake; whatever anyone writes after is lost."""
        with self._lock:  # the route, waiting for the client's bytes, wakes to find none, and ends
            self._hung_up = True
            self._out.clear()
            self._offered_until = 0
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _send_event(self, event):
        """Queue what wsproto makes of `event`, if its state allows (no ping after a close frame); never waits."""
        # A close frame may be ours, or our answer to the client's.
        allowed = BEFORE_OUR_CLOSE if isinstance(event, CloseConnection) else (OPEN,)
        with self._lock:
            if not self._hung_up and self._protocol.state in allowed:
                self._write(self._protocol.send(event))

    def _read_more(self):
        """Wait for the client's next frames, pinging while none come, and handle them; False once it ended."""
        while self.connected:
            deadline = self._last_ping + self.ping_interval if self.ping_interval else math.inf
            if self._out:  # a client that takes none of our bytes is hung up on, quiet chat or not
                deadline = min(deadline, self._last_progress + self.stall_seconds)
            data = self._wait_for_bytes(deadline)
            if data == b"":
                return False  # the client went away, or we hung up
            if data:
                with self._lock:
                    self._protocol.receive_data(data)
                return self._handle_events()
            if self.ping_interval and time.monotonic() >= self._last_ping + self.ping_interval:
                if self._awaiting_pong:  # the last ping went unanswered
                    self._send_event(CloseConnection(CloseReason.POLICY_VIOLATION, "Ping/Pong timeout"))
                    return False
                self._send_event(Ping())
                self._awaiting_pong, self._last_ping = True, time.monotonic()
        return False

    def _wait_for_bytes(self, deadline):
        """Send what waits while waiting for the client's bytes; return them, None if none came, b"" if it left."""
        timeout = None if deadline == math.inf else math.ceil(max(0, deadline - time.monotonic()) * 1000)
        # A TLS socket may hold bytes it has decrypted already, which poll can't see.
        if not (self._tls and self._sock.pending()):
            # poll opens no file (an epoll selector would), and gevent's patched poll waits in a greenlet.
            poll = select.poll()
            poll.register(self._sock, select.POLLIN | (select.POLLOUT if self._out else 0))
            ready = poll.poll(timeout)
            self.push()
            if not ready or not ready[0][1] & ~select.POLLOUT:
                return None
        try:
            return self._sock.recv(CHUNK_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None  # a TLS record not yet whole
        except OSError:
            return b""

    def _handle_events(self):
        """Act on the frames wsproto has parsed: answer pings, collect messages; False once closing."""
        events = self._protocol.events()
        while True:
            with self._lock:  # wsproto's state changes as it parses a close frame
                event = next(events, None)
            if event is None:
                self._paced_seconds = 0  # it sent nothing more: it keeps within its allowance
                return True
            # Every frame but a message's last (which the route counts) costs from the client's allowance.
            piece = isinstance(event, Message) and event.frame_finished and not event.message_finished
            if (piece or isinstance(event, (Ping, Pong))) and not self._pay():
                return False
            if isinstance(event, Ping):  # answered at once, even inside a fragmented message
                self._send_event(event.response())
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, CloseConnection):
                if self._protocol.state is REMOTE_CLOSING:
                    self._client_close = event
                    return True
                self._send_event(event)  # a protocol error: wsproto says which (1002, 1007)
                return False
            elif isinstance(event, Message):
                text = isinstance(event.data, str)
                self._size += len(event.data.encode()) if text else len(event.data)
                if self.max_message_size and self._size > self.max_message_size:
                    self._send_event(CloseConnection(CloseReason.MESSAGE_TOO_BIG, "Message is too big"))
                    return False
                self._parts.append(event.data)
                if event.message_finished:
                    self._messages.append(("" if text else b"").join(self._parts))
                    self._parts, self._size = [], 0

    def _pay(self):
        """Take a token of the client's allowance, reading nothing until there is one; False if it floods."""
        while self.pace and (wait := self.pace()):
            if not self.connected:  # we closed meanwhile (the server is stopping): stop waiting
                return False
            self._paced_seconds += wait
            if self._paced_seconds > self.flood_seconds:  # it keeps on: close, as for a flood of messages
                self._send_event(CloseConnection(CloseReason.POLICY_VIOLATION, "Too many frames: slow down."))
                return False
            time.sleep(wait)  # the rest waits in wsproto, and in TCP
        return True

    def _finish_closing(self):
        """Send our close frame, then read until the client's answer and its end of TCP (CLOSE_SECONDS at most)."""
        deadline = time.monotonic() + self.close_seconds
        shut_down = False
        # A socket closed with bytes unread is reset, which can lose our close frame before the client reads it.
        while time.monotonic() < deadline and not self._hung_up:
            if self._tls and not self._out and self._protocol.state is State.CLOSED:
                return  # both close frames went through: a TLS client waits for us to end TCP
            # Our close frame is out: our end of TCP says so at once. (A TLS socket shut
            # down halfway can't decrypt what still comes: it waits for the hang-up.)
            if not self._out and not shut_down and not self._tls:
                shut_down = True
                with suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
            data = self._wait_for_bytes(deadline)
            if data == b"":
                return
            if data and self._protocol.state is LOCAL_CLOSING:
                with self._lock:
                    self._protocol.receive_data(data)
                    for _ in self._protocol.events():
                        pass  # sent after our close frame: never carried out

    # Called with the lock held

    def _write(self, data, offered=False):
        """Queue bytes and send what the socket takes now; hang up on a client that took too little."""
        waiting = len(self._out) - self._offered_until  # besides the offered frame: a large frame goes alone
        if waiting and waiting + len(data) > MAX_QUEUED_BYTES and not offered:
            log.info("Hanging up on a WebSocket client that took none of the %d bytes waiting for it.", waiting)
            self.hang_up()
        elif not self._hung_up:
            if not self._out:
                self._last_progress = time.monotonic()
            self._out += data
            self._send_some()

    def _send_some(self):
        while self._out and not self._hung_up:
            try:
                sent = self._sock.send(self._out[:CHUNK_BYTES] if self._tls else self._out)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                sent = 0
            except OSError:
                self.hang_up()  # the connection is gone; the route, reading, sees it and ends
                return
            if not sent:
                if time.monotonic() - self._last_progress > self.stall_seconds:
                    self.hang_up()
                return
            del self._out[:sent]  # cheap: a bytearray drops its start without copying the rest
            self._offered_until = max(0, self._offered_until - sent)
            self._last_progress = time.monotonic()


def encode_text_frame(text):
    """Return the bytes of one unmasked, uncompressed WebSocket text frame, as a server sends it."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))
