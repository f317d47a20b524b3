"""Step 2: a chat over plain HTTP: GET /messages?since=N&wait=S (long polling) and POST /messages."""

import secrets
import threading
from datetime import datetime, timezone

from flask import Flask, abort, render_template, request
from flask_sock import Sock
from werkzeug.exceptions import HTTPException

app = Flask(__name__)
app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": 65536}  # see step 1
sock = Sock(app)
# Every refusal (abort(400, "why"), an unknown URL) is answered with JSON that says why, for the page to show.
app.register_error_handler(HTTPException, lambda refusal: ({"error": refusal.description}, refusal.code))
epoch = secrets.token_hex(8)  # names this run of the server: a restart starts an empty chat, ids from 1
messages = []  # message n, whose id is n, is messages[n - 1]: the cursor is how many a client has
changed = threading.Condition()  # held to read or change `messages`; notified at each change


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
                         "text": fields["text"].strip(), "timestamp": timestamp})
        changed.notify_all()  # wake everyone waiting for a change
        return messages[-1]


def messages_since(cursor):
    """The messages after `cursor`, and the cursor to ask from next time."""
    with changed:
        return {"messages": messages[cursor:], "cursor": len(messages)}


@app.before_request  # a bad since or wait gets its 400 before any route runs, so no route has to
def check_query():
    for name, most in (("since", 10**15), ("wait", 30)):
        value = request.args.get(name, "0")
        if not (value.isascii() and value.isdigit() and len(value) <= 16 and int(value) <= most):
            abort(400, f"{name} must be a whole number from 0 to {most}.")


@app.get("/", defaults={"transport": "polling"})
def chat_page(transport):
    return render_template("chat.html", transport=transport)


@app.get("/messages")
def get_messages():
    reset = request.args.get("epoch", epoch) != epoch  # the client's cursor counted another run's changes:
    since = 0 if reset else request.args.get("since", 0, type=int)  # it gets everything, and starts afresh
    with changed:  # with `wait`, hold the answer until there is something new (long polling)
        changed.wait_for(lambda: reset or len(messages) > since, timeout=request.args.get("wait", 0, type=int))
    return messages_since(since) | {"epoch": epoch, "reset": reset}


@app.post("/messages")
def post_message():
    return add_message(request.get_json(silent=True)), 201
