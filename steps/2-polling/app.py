"""Step 2: a chat over plain HTTP: GET /messages?since=N&wait=S (long polling) and POST /messages."""

import re
import threading
from datetime import datetime, timezone

from flask import Flask, render_template, request

app = Flask(__name__)
app.register_error_handler(ValueError, lambda error: ({"error": str(error)}, 400))  # bad input: say why
messages = []  # message n, whose id is n, is messages[n - 1]: the cursor is how many a client has
changed = threading.Condition()  # held to read or change `messages`; notified at each change

def add_message(fields):
    """Store a message from {"user": ..., "text": ...} and return it; raise ValueError if it isn't one."""
    if not (isinstance(fields, dict) and all(isinstance(fields.get(key), str) and fields[key].strip()
                                             for key in ("user", "text"))):
        raise ValueError('Send a JSON object with a user and a text: {"user": "Azin", "text": "Hello"}.')
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
        if not (re.fullmatch("[0-9]{1,16}", value) and int(value) <= most):
            raise ValueError(f"{name} must be a whole number from 0 to {most}.")

@app.get("/", defaults={"transport": "polling"})
def chat_page(transport):
    return render_template("chat.html", transport=transport)

@app.get("/messages")
def get_messages():
    since = request.args.get("since", 0, type=int)
    with changed:  # with `wait`, hold the answer until there is something new (long polling)
        changed.wait_for(lambda: len(messages) > since, timeout=request.args.get("wait", 0, type=int))
    return messages_since(since)

@app.post("/messages")
def post_message():
    return add_message(request.get_json(silent=True)), 201
