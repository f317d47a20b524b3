"""Pushing every change in the store to every connected WebSocket.

One thread, the broadcaster, waits on the store just like a long-polling
client. When something changes it builds one frame and hands the same bytes to
every subscriber. Sending never blocks: bytes that a client can't take yet wait
in its queue, and a client that stops taking them is disconnected. It comes
back with its cursor and misses nothing.
"""

import json
import socket
import threading
import time

from wsproto.frame_protocol import FrameProtocol

# A client that stops reading first fills the kernel's buffers (a few MB on
# Linux), then our queue. When it has taken nothing for this long, we hang up.
# (Not a limit on the queue's size: one frame of a long history can be MBs.)
STALL_SECONDS = 5

# While some client has bytes waiting, try again this often (seconds). When no
# one is behind, still look this often: a long first frame may have left bytes.
RETRY_INTERVAL = 0.02
IDLE_INTERVAL = 0.5

# Windows has no MSG_DONTWAIT: there, sends block and a stalled client slows the others.
DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0)


class Broadcaster:
    """The registry of connected sockets, and the thread that feeds them."""

    def __init__(self, store):
        self.store = store
        self.subscribers = set()
        # Held while a frame goes out to everyone, and while someone joins or
        # leaves, so a newcomer gets each change either in its first frame or
        # in a broadcast, never in both and never in neither.
        self.lock = threading.Lock()
        self.thread = None

    def subscribe(self, ws, since, epoch):
        """Register `ws`, send it everything after `since`, and return its Subscriber."""
        with self.lock:
            answer = self.store.since(since, epoch)
            subscriber = Subscriber(ws, answer["cursor"])
            subscriber.send_text(messages_frame(answer))
            self.subscribers.add(subscriber)
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="broadcaster", daemon=True)
                self.thread.start()
        return subscriber

    def unsubscribe(self, subscriber):
        """Forget a subscriber whose connection has ended."""
        with self.lock:
            self.subscribers.discard(subscriber)

    def run(self):
        """Wait for changes and send each one to every subscriber, forever."""
        cursor = self.store.cursor
        someone_behind = False
        while True:
            self.store.wait(cursor, timeout=RETRY_INTERVAL if someone_behind else IDLE_INTERVAL)
            answer = self.store.since(cursor)
            # Encoded once: a server's frames are not masked, so every client gets the same bytes.
            # (Not when the wait only timed out: then no one is sent a frame.)
            if answer["cursor"] != cursor:
                shared_frame = encode_text_frame(messages_frame(answer))
            with self.lock:
                for subscriber in self.subscribers:
                    if subscriber.cursor == answer["cursor"]:
                        subscriber.send(b"")  # nothing new for it: just push out its queue
                    elif subscriber.cursor == cursor:
                        subscriber.send_frame(shared_frame, answer["cursor"])
                    else:
                        # Joined while this round was being prepared: its first
                        # frame went further than `cursor`, so it needs its own.
                        subscriber.catch_up(self.store)
                someone_behind = any(subscriber.queued for subscriber in self.subscribers)
            cursor = answer["cursor"]


class Subscriber:
    """One WebSocket client: its socket, the bytes it has yet to take, and the cursor it has been sent."""

    def __init__(self, ws, cursor):
        self.cursor = cursor
        self.queued = bytearray()
        self.last_progress = time.monotonic()
        self._ws = ws
        self._socket = ws.sock
        # werkzeug leaves Nagle's algorithm on, which holds a small frame back
        # until the client acknowledges the one before (up to 40 ms). Frames
        # are whole messages: send each at once.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()
        # simple-websocket's own thread writes pongs and close frames with a
        # blocking `ws.sock.send()`. Standing in for its socket routes those
        # bytes through our queue too, so frames never interleave and no
        # thread ever blocks on a client that stopped reading.
        ws.sock = self

    def send_text(self, text):
        """Send one text frame to this client only."""
        self.send(encode_text_frame(text))

    def send_frame(self, frame, cursor):
        """Send a ready-made `messages` frame that brings this client up to `cursor`."""
        self.send(frame)
        self.cursor = cursor

    def catch_up(self, store):
        """Send whatever changed after this client's own cursor, if anything."""
        answer = store.since(self.cursor)
        if answer["messages"]:
            self.send_frame(encode_text_frame(messages_frame(answer)), answer["cursor"])
        else:
            self.send(b"")  # nothing new, but push out what is queued

    def send(self, data):
        """Queue bytes and push out as many as the socket takes now (the socket interface)."""
        with self._lock:
            if not self.queued:
                self.last_progress = time.monotonic()
            self.queued += data
            try:
                sent = self._socket.send(self.queued, DONT_WAIT) if self.queued else 0
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = len(self.queued)  # the connection is gone; its reader thread ends it
            del self.queued[:sent]
            if sent:
                self.last_progress = time.monotonic()
            elif self.queued and time.monotonic() - self.last_progress > STALL_SECONDS:
                self.queued.clear()
                self._hang_up()
        return len(data)

    def recv(self, size):
        """Read from the socket (the socket interface simple-websocket uses)."""
        return self._socket.recv(size)

    def fileno(self):
        """Return the socket's file descriptor (the socket interface, for selectors)."""
        return self._socket.fileno()

    def close(self):
        """End the connection (the socket interface), as simple-websocket's reader thread ends."""
        # Shut the socket down rather than only closing it: werkzeug still holds
        # it, and would otherwise wait for the client to hang up first.
        self._hang_up()
        self._socket.close()
        # simple-websocket can end a connection (a frame too big, say) without
        # waking a `receive()` that waits for the next frame. Wake it here.
        self._ws.event.set()

    def _hang_up(self):
        # A close frame would only wait behind everything else in the queue.
        # Shutting the socket down ends the connection now; simple-websocket's
        # reader thread sees it and the route's `finally` unsubscribes.
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def messages_frame(answer):
    """Return the JSON text of a `messages` frame holding a `Store.since()` answer."""
    return json.dumps({"command": "messages", **answer}, ensure_ascii=False)


def encode_text_frame(text):
    """Return the bytes of one unmasked, uncompressed WebSocket text frame, as a server sends it."""
    return bytes(FrameProtocol(client=False, extensions=[]).send_data(text))
