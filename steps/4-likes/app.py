"""Step 4: likes and dislikes. The cursor now counts changes, not messages: a new message, a like
and a dislike each move it on by one, and since=N answers each message changed after N, as it is now."""

import json
import threading
from datetime import datetime, timezone

from flask import Flask, render_template, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

app = Flask(__name__)
sock = Sock(app)
messages = []  # message n, whose id is n, is messages[n - 1]
changes = []  # the id of the message that each change changed: the cursor is len(changes)
changed = threading.Condition()  # held to read or change the lists; notified at each change


def add_message(fields):
    """Store a message from {"user": ..., "text": ...} and return it; raise ValueError if it isn't one."""
    if not (isinstance(fields, dict) and all(isinstance(fields.get(key), str) and fields[key].strip()
                                             for key in ("user", "text"))):
        raise ValueError('Send a JSON object with a user and a text: {"user": "Azin", "text": "Hello"}.')
    timestamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with changed:
        messages.append({"id": len(messages) + 1, "user": fields["user"].strip(), "text": fields["text"].strip(),
                         "timestamp": timestamp, "likes": 0, "dislikes": 0})
        changes.append(len(messages))
        changed.notify_all()  # wake everyone waiting for a change
        return messages[-1]


def add_vote(message_id, vote):
    """Count a "like" or a "dislike" and return the message; raise LookupError if there is no such message."""
    with changed:
        if type(message_id) is not int or not 1 <= message_id <= len(messages):  # (True is not an id)
            raise LookupError(f"There is no message with id {message_id}.")
        messages[message_id - 1][vote + "s"] += 1
        changes.append(message_id)
        changed.notify_all()
        return messages[message_id - 1]


def messages_since(cursor):
    """Return each message changed after `cursor` once, as it is now, in id order; and the new cursor."""
    with changed:
        return {"messages": [messages[i - 1] for i in sorted(set(changes[cursor:]))], "cursor": len(changes)}


@app.before_request
def check_since():
    """Refuse a bad `since` with 400 before any route runs: before /ws has upgraded the connection."""
    whole_number("since")


@app.get("/", defaults={"transport": "polling"})
@app.get("/websocket", defaults={"transport": "websocket"})
def chat_page(transport):
    """The same page, kept up to date by long polling at /, and over the WebSocket at /websocket."""
    return render_template("chat.html", transport=transport)


@app.get("/messages")
def get_messages():
    """Answer what changed after `since`; with `wait`, hold the answer until something does."""
    since, wait = whole_number("since"), whole_number("wait")
    if wait > 30:
        raise ValueError("wait must be at most 30 seconds.")
    with changed:
        changed.wait_for(lambda: len(changes) > since, timeout=wait)
    return messages_since(since)


@app.post("/messages")
def post_message():
    """Store the message sent as JSON; answer 201 with it."""
    return add_message(request.get_json(silent=True)), 201


@app.post("/messages/<int:message_id>/<any(like, dislike):vote>")
def post_vote(message_id, vote):
    """Count a like or a dislike; answer with the message as it is now."""
    return add_vote(message_id, vote)


@sock.route("/ws")
def chat_socket(ws):
    """Send what changed after `since`, then each change; carry out the commands the client sends."""
    sending = threading.Lock()  # two threads send on this socket: one frame at a time
    threading.Thread(target=follow_the_store, args=(ws, whole_number("since"), sending), daemon=True).start()
    try:
        while True:
            try:
                carry_out(json.loads(ws.receive()))
            except (ValueError, LookupError) as error:
                with sending:
                    ws.send(json.dumps({"command": "error", "error": str(error)}))
    finally:
        with changed:
            changed.notify_all()  # wake this socket's follower, to see that the socket closed


def follow_the_store(ws, cursor, sending):
    """Send `ws` what changed after `cursor`, then each change, until it closes. A thread of its own
    for each socket: a client that stops reading holds up that thread, and no one else."""
    try:
        while ws.connected:
            answer = messages_since(cursor)
            with sending:
                ws.send(json.dumps({"command": "messages", **answer}))
            cursor = answer["cursor"]
            with changed:  # sleep until the store moves past our cursor, or the socket closes
                changed.wait_for(lambda: len(changes) > cursor or not ws.connected)
    except (ConnectionClosed, OSError):
        pass  # the client left while we were sending


def carry_out(command):
    """Carry out a command from a client: a new message, a like or a dislike."""
    match command:
        case {"command": "send-message"}:
            add_message(command.get("message"))
        case {"command": "like" | "dislike" as vote}:
            add_vote(command.get("id"), vote)
        case _:
            raise ValueError("Unknown command: send send-message, like or dislike.")


def whole_number(name):
    """Return the query argument `name` (0 if absent) as a whole number; raise ValueError if it isn't one."""
    value = request.args.get(name, "0")
    if not (value.isascii() and value.isdigit() and len(value) < 16):  # isascii: int() would take "٣"
        raise ValueError(f"{name} must be a whole number.")
    return int(value)


@app.errorhandler(ValueError)
@app.errorhandler(LookupError)
def refuse(error):
    """Say what is wrong, for a person: 404 for a message that isn't there, 400 for other bad input."""
    return {"error": str(error)}, 404 if isinstance(error, LookupError) else 400
