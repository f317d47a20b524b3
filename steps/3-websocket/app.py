"""Step 3: the same chat over a WebSocket, beside the polling page. /ws?since=N first sends everything
after N, then each new message; the client sends its messages over the same socket."""

import json
import threading
from datetime import datetime, timezone

from flask import Flask, render_template, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

app = Flask(__name__)
sock = Sock(app)
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


@sock.route("/ws")
def chat_socket(ws):
    """Send what is new after `since`, then each new message; carry out the commands the client sends."""
    sending = threading.Lock()  # two threads send on this socket: one frame at a time
    threading.Thread(target=follow_the_store, args=(ws, whole_number("since"), sending), daemon=True).start()
    try:
        while True:
            try:
                carry_out(json.loads(ws.receive()))
            except ValueError as error:
                with sending:
                    ws.send(json.dumps({"command": "error", "error": str(error)}))
    finally:
        with changed:
            changed.notify_all()  # wake this socket's follower, to see that the socket closed


def follow_the_store(ws, cursor, sending):
    """Send `ws` what is new after `cursor`, then each new message, until it closes. A thread of its own
    for each socket: a client that stops reading holds up that thread, and no one else."""
    try:
        while ws.connected:
            answer = messages_since(cursor)
            with sending:
                ws.send(json.dumps({"command": "messages", **answer}))
            cursor = answer["cursor"]
            with changed:  # sleep until the store moves past our cursor, or the socket closes
                changed.wait_for(lambda: len(messages) > cursor or not ws.connected)
    except (ConnectionClosed, OSError):
        pass  # the client left while we were sending


def carry_out(command):
    """Carry out a command from a client: a new message."""
    match command:
        case {"command": "send-message"}:
            add_message(command.get("message"))
        case _:
            raise ValueError("Unknown command: send send-message.")


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
