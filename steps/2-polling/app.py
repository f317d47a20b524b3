"""Step 2: a chat over plain HTTP. The messages live in a list in memory; a client asks for those
after the last it has (its cursor) with GET /messages?since=N, and with wait=S the server holds the
answer until there is something new (long polling). POST /messages sends one."""

import threading
from datetime import datetime, timezone

from flask import Flask, render_template, request

app = Flask(__name__)
messages = []  # message n, whose id is n, is messages[n - 1]: the cursor is how many a client has
changed = threading.Condition()  # held to read or change `messages`; notified at each change


def add_message(fields):
    """Store a message from {"user": ..., "text": ...} and return it; raise ValueError if it isn't one."""
    if not (isinstance(fields, dict) and all(isinstance(fields.get(key), str) and fields[key].strip()
                                             for key in ("user", "text"))):
        raise ValueError('Send a JSON object with a user and a text: {"user": "Azin", "text": "Hello"}.')
    timestamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with changed:
        messages.append({"id": len(messages) + 1, "user": fields["user"].strip(), "text": fields["text"].strip(),
                         "timestamp": timestamp})
        changed.notify_all()  # wake everyone waiting for a change
        return messages[-1]


def messages_since(cursor):
    """Return the messages after `cursor`, and the cursor to ask from next time."""
    with changed:
        return {"messages": messages[cursor:], "cursor": len(messages)}


@app.get("/", defaults={"transport": "polling"})
def chat_page(transport):
    """The chat page, kept up to date by long polling."""
    return render_template("chat.html", transport=transport)


@app.get("/messages")
def get_messages():
    """Answer what is new after `since`; with `wait`, hold the answer until there is something."""
    since, wait = whole_number("since"), whole_number("wait")
    if wait > 30:
        raise ValueError("wait must be at most 30 seconds.")
    with changed:
        changed.wait_for(lambda: len(messages) > since, timeout=wait)
    return messages_since(since)


@app.post("/messages")
def post_message():
    """Store the message sent as JSON; answer 201 with it."""
    return add_message(request.get_json(silent=True)), 201


def whole_number(name):
    """Return the query argument `name` (0 if absent) as a whole number; raise ValueError if it isn't one."""
    value = request.args.get(name, "0")
    if not (value.isascii() and value.isdigit() and len(value) < 16):  # isascii: int() would take "٣"
        raise ValueError(f"{name} must be a whole number.")
    return int(value)


@app.errorhandler(ValueError)
def refuse(error):
    """Say what is wrong, for a person, with 400."""
    return {"error": str(error)}, 400
