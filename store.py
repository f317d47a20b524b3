"""The chat's memory: messages, likes, and a cursor that counts every change.

Nothing here knows about Flask or sockets, so it can be tested alone. `app.py`
turns HTTP requests and WebSocket frames into calls to a `Store`.

A Redis-backed store for several server processes can replace this one as long
as it offers the same interface: `epoch`, `cursor`, `add`, `like`, `dislike`,
`since` and `wait`.
"""

import secrets
import threading
from collections import OrderedDict
from datetime import datetime, timezone

MAX_USER = 50
MAX_TEXT = 1000


class Store:
    """An in-memory chat history that remembers the order in which things changed."""

    def __init__(self, max_messages=10000):
        # A new random epoch on every start tells clients that the ids and the
        # cursor they hold belong to a store that no longer exists.
        self.epoch = secrets.token_hex(8)
        self.max_messages = max_messages
        self.cursor = 0
        self._next_id = 1
        # message id -> message, oldest first, so the oldest is dropped in O(1).
        self._messages = OrderedDict()
        # message id -> cursor of its last change, least recently changed first.
        # `since` walks it from the newest end, so asking for the latest changes
        # costs the same with 100 messages stored as with 100,000.
        self._changed = OrderedDict()
        self._changes = threading.Condition()

    def add(self, user, text):
        """Store a new message and return it; raise ValueError if user or text is invalid."""
        user = _checked(user, "Name (user)", MAX_USER)
        text = _checked(text, "Message (text)", MAX_TEXT)
        with self._changes:
            message = {
                "id": self._next_id,
                "user": user,
                "text": text,
                "timestamp": _now(),
                "likes": 0,
                "dislikes": 0,
            }
            self._next_id += 1
            self._messages[message["id"]] = message
            if len(self._messages) > self.max_messages:
                oldest_id, _ = self._messages.popitem(last=False)
                self._changed.pop(oldest_id, None)
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
        current state, in id order. If `epoch` names another life of the store,
        or `cursor` is one this store never gave out, the answer starts from
        nothing and says `reset`, so the client throws away what it shows.
        """
        with self._changes:
            reset = (epoch is not None and epoch != self.epoch) or cursor > self.cursor
            if reset:
                cursor = 0
            changed_ids = []
            for message_id in reversed(self._changed):
                if self._changed[message_id] <= cursor:
                    break
                changed_ids.append(message_id)
            changed_ids.sort()
            return {
                "messages": [dict(self._messages[i]) for i in changed_ids],
                "cursor": self.cursor,
                "epoch": self.epoch,
                "reset": reset,
            }

    def wait(self, cursor, timeout):
        """Block until the store moves past `cursor` or `timeout` seconds pass; return True if it moved."""
        with self._changes:
            return self._changes.wait_for(lambda: self.cursor != cursor, timeout)

    def _count(self, message_id, field):
        with self._changes:
            message = self._messages[message_id]
            message[field] += 1
            self._record_change(message_id)
            return dict(message)

    def _record_change(self, message_id):
        # Called with the lock held: one change, one step of the cursor.
        self.cursor += 1
        self._changed[message_id] = self.cursor
        self._changed.move_to_end(message_id)
        self._changes.notify_all()


def _checked(value, name, limit):
    """Return `value` trimmed, or raise ValueError saying what a person should fix."""
    if value is None:
        raise ValueError(f"{name} is missing.")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" decodes to half a character, which can't be sent on
        raise ValueError(f"{name} contains an invalid character (half of a surrogate pair).") from None
    value = value.strip()
    if not value:
        raise ValueError(f"{name} must not be empty.")
    if len(value) > limit:
        raise ValueError(f"{name} is too long: {len(value)} characters, the limit is {limit}.")
    return value


def _now():
    """Return the current UTC time as ISO 8601 with milliseconds, e.g. 2026-11-25T23:59:01.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
