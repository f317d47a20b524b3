"""The chat's memory: messages, likes, and a cursor that counts every change.

Nothing here knows about Flask or sockets, so it can be tested alone. `app.py`
turns HTTP requests and WebSocket frames into calls to a `Store`.

`redis_store.py` offers the same interface for several server processes:
`epoch`, `cursor`, `add`, `like`, `dislike`, `since`, `before`, `wait` and
`close`.
"""

import json
import secrets
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from datetime import datetime, timezone
from itertools import islice

from text_rules import checked_message


class Store:
    """An in-memory chat history that remembers the order in which things changed."""

    # Why the chat can't be read or changed right now, or None: never, for this one.
    unavailable = None
    # Where the chat is kept, for the start-up log.
    where = "in this process's memory (one process only; set FLASK_REDIS_URL to share it)"

    def __init__(self, max_messages=10000, page_size=200, max_answer_bytes=262144):
        # A new random epoch on every start tells clients that the ids and the
        # cursor they hold belong to a store that no longer exists.
        self.epoch = secrets.token_hex(8)
        self.max_messages = max_messages
        self.page_size = page_size
        self.room = max_answer_bytes - ENVELOPE_BYTES  # for the messages of one answer
        self.cursor = 0
        self._next_id = 1
        # message id -> message, oldest first, so the oldest is dropped in O(1).
        self._messages = OrderedDict()
        # (cursor, message id) of each message's latest change, in cursor order,
        # and message id -> that cursor. A binary search finds where a client's
        # cursor starts, however many messages are stored.
        self._latest_changes = []
        self._changed_at = {}
        self._cursor_moved = threading.Condition()  # the lock for all of the above, too

    def add(self, user, text):
        """Store a new message and return it; raise ValueError if user or text is invalid."""
        user, text = checked_message(user, text)
        with self._cursor_moved:
            message = new_message(self._next_id, user, text)
            self._next_id += 1
            self._messages[message["id"]] = message
            if len(self._messages) > self.max_messages:
                oldest_id, _ = self._messages.popitem(last=False)
                self._forget_change(oldest_id)
            self._record_change(message["id"])
            return dict(message)

    def like(self, message_id):
        """Add one like and return the message; raise KeyError if there is no such message."""
        return self._count(message_id, "likes")

    def dislike(self, message_id):
        """Add one dislike and return the message; raise KeyError if there is no such message."""
        return self._count(message_id, "dislikes")

    def since(self, cursor, epoch=None):
        """Return the answer to "what changed after `cursor`?", in the contract's shape.

        Each message that is new or changed after `cursor` appears once, in its
        current state, in id order, at most `page_size` of them and at most
        `max_answer_bytes` of JSON (but at least one): the ones that changed
        first, with the cursor of the last change included, so asking again
        from there gets the rest.

        A first load (cursor 0 and no epoch: the client has nothing yet) gets
        the newest page of messages instead, and `more` says whether older ones
        exist. If `epoch` names another life of the store, or `cursor` is one
        this store never gave out, the answer is a first load that says `reset`,
        so the client throws away what it shows.
        """
        with self._cursor_moved:
            reset = (epoch is not None and epoch != self.epoch) or cursor > self.cursor
            if reset or (cursor == 0 and epoch is None):
                newest = self._fill(islice(reversed(self._messages.values()), self.page_size))[::-1]
                more = len(self._messages) > len(newest)
                return self._answer(newest, self.cursor, reset=reset, more=more)
            start = bisect_right(self._latest_changes, (cursor, float("inf")))
            changes = self._latest_changes[start:start + self.page_size]
            page = self._fill(changes, lambda change: self._messages[change[1]])
            more_changes = start + len(page) < len(self._latest_changes)
            page_cursor = page[-1][0] if more_changes else self.cursor
            messages = [self._messages[message_id] for message_id in sorted(i for _, i in page)]
            return self._answer(messages, page_cursor)

    def before(self, message_id, limit, epoch=None):
        """Return the newest `limit` messages older than `message_id`, and `more` if even older ones exist."""
        with self._cursor_moved:
            if epoch is not None and epoch != self.epoch:
                return self.since(0, epoch)
            # Ids have no gaps: only the oldest messages are ever dropped.
            oldest_id = next(iter(self._messages), self._next_id)
            message_id = min(message_id, self._next_id)  # past the newest: the newest page
            first = max(oldest_id, message_id - limit)
            newest_first = (self._messages[i] for i in reversed(range(first, min(message_id, self._next_id))))
            messages = self._fill(newest_first)[::-1]
            start = messages[0]["id"] if messages else first
            return self._answer(messages, self.cursor, more=start > oldest_id)

    def wait(self, cursor, timeout):
        """Block until the store moves past `cursor` or `timeout` seconds pass; return True if it moved."""
        with self._cursor_moved:
            return self._cursor_moved.wait_for(lambda: self.cursor != cursor, timeout)

    def close(self):
        """Let go of what the store holds outside Python objects: nothing, for this one."""

    def _count(self, message_id, field):
        with self._cursor_moved:
            message = self._messages[message_id]
            message[field] += 1
            self._record_change(message_id)
            return dict(message)

    def _record_change(self, message_id):
        # Called with the lock held: one change, one step of the cursor.
        self._forget_change(message_id)
        self.cursor += 1
        self._latest_changes.append((self.cursor, message_id))
        self._changed_at[message_id] = self.cursor
        self._cursor_moved.notify_all()

    def _forget_change(self, message_id):
        # A message's earlier change is superseded by its latest (or by its end).
        changed_at = self._changed_at.pop(message_id, None)
        if changed_at is not None:
            del self._latest_changes[bisect_left(self._latest_changes, (changed_at,))]

    def _fill(self, items, message_of=lambda item: item):
        """Take items in order while their messages fit in one answer (the first always does)."""
        taken, size = [], 0
        for item in items:
            size += message_bytes(message_of(item))
            if taken and size > self.room:
                break
            taken.append(item)
        return taken

    def _answer(self, messages, cursor, reset=False, more=False):
        # Copies, so that later changes don't alter an answer on its way out.
        return {"messages": [dict(message) for message in messages], "cursor": cursor,
                "epoch": self.epoch, "reset": reset, "more": more}


class StoreUnavailable(Exception):
    """The store can't be reached for now (Redis is down, say). This in-memory store never raises it."""


# What an answer holds besides its messages, at most: the field names, the
# cursor, the epoch, and `"command":"messages"` in a WebSocket frame.
ENVELOPE_BYTES = 200


def message_bytes(message):
    """The size of a message in an answer: its JSON as the app sends it (UTF-8, compact), and a comma."""
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()) + 1


def new_message(message_id, user, text):
    """Return a new message as the contract shapes it, stored now."""
    return {"id": message_id, "user": user, "text": text, "timestamp": now(),
            "likes": 0, "dislikes": 0}


def now():
    """Return the current UTC time as ISO 8601 with milliseconds, e.g. 2026-11-25T23:59:01.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
