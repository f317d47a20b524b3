"""Pushing every change in the store to every connected WebSocket.

One thread, the broadcaster, waits on the store just like a long-polling
client. When something changes it builds one frame and hands the same bytes to
every subscriber that is up to date. Each subscriber remembers the cursor it
has been sent, so a client that is still taking an earlier frame simply skips
rounds: when it has taken it, it gets one frame with everything since its own
cursor. Its backlog is the store, so a slow client costs at most one frame of
memory, misses nothing, and never slows down anyone else.

When the store can't be read or changed (Redis is down, say), each round
tells every subscriber so with a `status` frame, and tells it again once the
store works: a page that is only watching would otherwise never know.
"""

import json
import logging
import threading
import time

from connection import encode_text_frame
from store import StoreUnavailable

log = logging.getLogger(__name__)

# While some client is behind, serve the next round this soon (seconds). When
# no one is, still look this often, in case a wake-up was missed.
RETRY_INTERVAL = 0.02
IDLE_INTERVAL = 0.5
# After a round fails (say, the store can't be reached), wait this long before the next.
FAILURE_PAUSE = 0.5


class Broadcaster:
    """The registry of connected sockets, and the thread that feeds them."""

    def __init__(self, store):
        self.store = store
        self.subscribers = set()
        self.lock = threading.Lock()  # guards `subscribers`, and nothing slow
        self.thread = None
        self.stopped = threading.Event()

    def subscribe(self, connection, since, epoch):
        """Send `connection` everything after `since` at once, then register it; return its Subscriber.

        While the store is unavailable, the client hears why first; its first
        `messages` frame comes once the store can be read again.
        """
        subscriber = Subscriber(connection, since, epoch)  # not registered yet: no other thread feeds it
        subscriber.tell(self.store.unavailable)
        try:
            first = self.store.since(since, epoch)
        except StoreUnavailable as error:
            subscriber.tell(str(error))
        else:
            connection.offer(encode_text_frame(messages_frame(first)))
            subscriber.cursor, subscriber.epoch, subscriber.greeted = first["cursor"], first["epoch"], True
        with self.lock:
            self.subscribers.add(subscriber)
            if self.thread is None or not self.thread.is_alive():  # not started yet, or killed
                self.thread = threading.Thread(target=self.run, name="broadcaster", daemon=True)
                self.thread.start()
        # A round may have gone by while it joined: the cursor says what it lacks.
        # (If the store can't be reached now, the broadcaster's rounds catch it up later.)
        try:
            subscriber.feed(self.store, {}, unavailable=self.store.unavailable)
        except StoreUnavailable:
            pass
        return subscriber

    def unsubscribe(self, subscriber):
        """Forget a subscriber whose connection has ended."""
        with self.lock:
            self.subscribers.discard(subscriber)

    def run(self):
        """Serve round after round, forever: an error in one round is logged, and the next goes ahead."""
        failed_rounds = 0
        while not self.stopped.is_set():
            try:
                latest, someone_behind = self.serve_round()
                if failed_rounds:
                    log.warning("Broadcasting again after %d failed rounds.", failed_rounds)
                    failed_rounds = 0
                self.store.wait(latest, timeout=RETRY_INTERVAL if someone_behind else IDLE_INTERVAL)
            except Exception as error:
                if isinstance(error, StoreUnavailable):
                    self.tell_everyone(str(error))
                if not failed_rounds:  # once, not on every round while the cause lasts
                    log_failure(error)
                failed_rounds += 1
                time.sleep(FAILURE_PAUSE)

    def stop(self):
        """Stop the thread (within IDLE_INTERVAL); for tests, which start many apps in one process."""
        self.stopped.set()

    def serve_round(self):
        """Send each subscriber what changed since its cursor; return (the latest cursor, whether anyone is behind)."""
        latest = self.store.cursor  # read first: a change after this wakes the next round
        unavailable = self.store.unavailable
        with self.lock:
            subscribers = list(self.subscribers)
        frames = {}  # shared by everyone at the same cursor: each frame is built and encoded once
        someone_behind = False
        for subscriber in subscribers:
            someone_behind |= subscriber.feed(self.store, frames, latest, unavailable)
        return latest, someone_behind

    def tell_everyone(self, unavailable):
        """Tell each subscriber that the store is unavailable, and why, unless it has heard already."""
        with self.lock:
            subscribers = list(self.subscribers)
        for subscriber in subscribers:
            with subscriber.lock:
                subscriber.tell(unavailable)


class Subscriber:
    """One client of the broadcast: its connection, and the cursor and epoch it has been sent up to."""

    def __init__(self, connection, cursor, epoch):
        self.connection = connection
        self.cursor = cursor
        self.epoch = epoch
        self.greeted = False  # whether its first `messages` frame has been sent
        self.told_unavailable = False  # whether the last `status` frame it got said "not available"
        self.lock = threading.Lock()  # the route's thread and the broadcaster may both feed it

    def tell(self, unavailable):
        """Send a `status` frame if the store's availability is not what this client last heard (lock held)."""
        if bool(unavailable) != self.told_unavailable:
            self.safely(self.connection.send, status_frame(unavailable))
            self.told_unavailable = bool(unavailable)

    def feed(self, store, frames, latest=None, unavailable=None):
        """Say whether the store is available, if that changed; send what changed after this client's cursor,
        unless it is still taking its last frame.

        `frames` maps (cursor, epoch) to a frame built this round, so clients at
        the same place share it. Return True if the client is still behind.
        """
        with self.lock:
            if not self.connection.connected:
                return False
            self.tell(unavailable)
            if not self.safely(self.connection.push):
                return True  # still taking its last frame: it skips this round
            place = (self.cursor, self.epoch)
            if place not in frames:
                answer = store.since(self.cursor, self.epoch)
                news = answer["messages"] or answer["reset"]
                frame = encode_text_frame(messages_frame(answer)) if news else None
                frames[place] = (frame, answer)
            frame, answer = frames[place]
            if frame is None and not self.greeted:  # its first frame, even with nothing in it
                frame = encode_text_frame(messages_frame(answer))
            # With nothing to show (the changes were to messages dropped since),
            # the cursor moves on without a frame.
            if frame is None or self.safely(self.connection.offer, frame):
                self.cursor, self.epoch, self.greeted = answer["cursor"], answer["epoch"], True
            return latest is not None and self.cursor < latest

    def safely(self, send, *args):
        """Call `send`; if it fails unexpectedly, hang up on this client alone, and return False.

        A store that fails fails the whole round (it is logged once, and the
        next round tries again); a connection that fails costs only its client.
        """
        try:
            return send(*args)
        except Exception:
            log.exception("Could not send to a client; hanging up on it.")
            self.connection.hang_up()
            return False


def log_failure(error):
    """Log why a round failed; never raise, since the broadcaster must go on (even out of memory)."""
    try:
        if isinstance(error, StoreUnavailable):  # the reason says it all
            log.warning("A broadcast round failed: %s Retrying every %s s.", error, FAILURE_PAUSE)
        else:
            log.exception("A broadcast round failed; retrying every %s s.", FAILURE_PAUSE)
    except Exception:
        pass


def messages_frame(answer):
    """Return the JSON text of a `messages` frame holding a store's answer, compact as store.message_bytes counts it."""
    return json.dumps({"command": "messages", **answer}, ensure_ascii=False, separators=(",", ":"))


def status_frame(unavailable):
    """Return the JSON text of a `status` frame: available, or not and why."""
    frame = {"command": "status", "available": not unavailable}
    if unavailable:
        frame["error"] = unavailable
    return json.dumps(frame, ensure_ascii=False)
