"""Step 4: likes and dislikes. The cursor now counts changes, not messages: a like moves it on too."""

import json
import secrets
import threading
from contextlib import suppress
from datetime import datetime, timezone

from flask import Flask, abort, render_template, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.exceptions import HTTPException

app = Flask(__name__)
app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": 65536}  # see step 1
sock = Sock(app)
# Every refusal (abort(400, "why"), an unknown URL) is answered with JSON that says why, for the page to show.
app.register_error_handler(HTTPException, lambda refusal: ({"error": refusal.description}, refusal.code))
epoch = secrets.token_hex(8)  # names this run of the server: a restart starts an empty chat, ids from 1
messages = []  # message n, whose id is n, is messages[n - 1]
changes = []  # the id of the message each change changed: the cursor is how many a client has seen
changed = threading.Condition()  # held to read or change the lists; notified at each change


@sock.route("/hello/ws")  # step 1's socket, kept: steps/README.md tries it from the browser's console
def hello(ws):
    ws.send("Hello")
    while True:
        ws.receive()


def add_message(fields):
    """Store a message from {"user": ..., "text": ...} and return it; refuse with 400 if it isn't one."""
    if not (isinstance(fields, dict) and all(isinstance(fields.get(key), str) and fields[key].strip()
                                             for key in ("user", "text"))):
        abort(400, 'Send a JSON object with a user and a text: {"user": "Azin", "text": "Hello"}.')
    timestamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with changed:
        messages.append({"id": len(messages) + 1, "user": fields["user"].strip(),
                         "text": fields["text"].strip(), "timestamp": timestamp, "likes": 0, "dislikes": 0})
        changes.append(len(messages))
        changed.notify_all()  # wake everyone waiting for a change
        return messages[-1]


@app.post("/messages/<int:message_id>/<any(like, dislike):vote>")  # like and dislike frames call it too
def add_vote(message_id, vote):
    with changed:
        if type(message_id) is not int or not 1 <= message_id <= len(messages):  # (True is not an id)
            abort(404, f"There is no message with id {message_id}.")
        messages[message_id - 1][vote + "s"] += 1
        changes.append(message_id)
        changed.notify_all()
        return messages[message_id - 1]


def messages_since(cursor):
    """Each message changed after `cursor` once, as it is now, in id order; and the new cursor."""
    with changed:
        return {"messages": [messages[i - 1] for i in sorted(set(changes[cursor:]))], "cursor": len(changes)}


@app.before_request  # a bad since or wait gets its 400 before any route runs: /ws, before it upgrades
def check_query():
    for name, most in (("since", 10**15), ("wait", 30)):
        value = request.args.get(name, "0")
        if not (value.isascii() and value.isdigit() and len(value) <= 16 and int(value) <= most):
            abort(400, f"{name} must be a whole number from 0 to {most}.")


@app.get("/", defaults={"transport": "polling"})
@app.get("/websocket", defaults={"transport": "websocket"})
def chat_page(transport):
    return render_template("chat.html", transport=transport)


@app.get("/messages")
def get_messages():
    reset = request.args.get("epoch", epoch) != epoch  # the client's cursor counted another run's changes:
    since = 0 if reset else request.args.get("since", 0, type=int)  # it gets everything, and starts afresh
    with changed:  # with `wait`, hold the answer until something changes (long polling)
        changed.wait_for(lambda: reset or len(changes) > since, timeout=request.args.get("wait", 0, type=int))
    return messages_since(since) | {"epoch": epoch, "reset": reset}


@app.post("/messages")
def post_message():
    return add_message(request.get_json(silent=True)), 201


@sock.route("/ws")  # sends what changed after since, then each change; carries out what the client sends
def chat_socket(ws):
    sending = threading.Lock()  # two threads send on this socket: one frame at a time
    reset = request.args.get("epoch", epoch) != epoch  # as in get_messages
    since = 0 if reset else request.args.get("since", 0, type=int)
    threading.Thread(target=follow_the_store, args=(ws, since, reset, sending), daemon=True).start()
    try:
        while True:
            try:
                carry_out(ws.receive())
            except HTTPException as refusal:  # abort(400, ...): the same refusals as over HTTP
                with sending:
                    ws.send(json.dumps({"command": "error", "error": refusal.description}))
    finally:
        with changed:
            changed.notify_all()  # wake this socket's follower, to see that the socket closed


def carry_out(command):
    """Do what a client's frame says, by its `command`; refuse with 400 what isn't a command we know."""
    with suppress(ValueError):  # text that isn't JSON stays text, and isn't a command
        command = json.loads(command)
    match command:
        case {"command": "send-message"}:
            add_message(command.get("message"))
        case {"command": "like" | "dislike" as vote}:
            add_vote(command.get("id"), vote)
        case _:
            abort(400, "Unknown command: send send-message, like or dislike.")


def follow_the_store(ws, cursor, reset, sending):
    """Send `ws` what changed after `cursor`, then each change, in a thread that only its client can stall."""
    with suppress(ConnectionClosed, OSError):  # raised when the client leaves while we send
        while ws.connected:
            answer = messages_since(cursor) | {"epoch": epoch, "reset": reset}
            with sending:
                ws.send(json.dumps({"command": "messages", **answer}))
            cursor, reset = answer["cursor"], False  # only the first frame can start afresh
            with changed:  # sleep until the store moves past our cursor, or the socket closes
                changed.wait_for(lambda: len(changes) > cursor or not ws.connected)
