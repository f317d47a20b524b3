"""The broadcast a learner writes first with flask-sock, in two versions, for bench/naive.py to measure.

- `/loop/ws`, variant (a): the route that receives a message sends it to every
  client in turn, in a loop, under a lock.
- `/threads/ws`, variant (b): each client has a queue and a thread of its own
  that sends what is queued; the receiving route only fills the queues.

Both speak just enough of the chat's `/ws` protocol for bench/loadgen.py: a
first `messages` frame on connect, then one `messages` frame for each
`send-message` frame. There is no validation, no limit and no flood control,
because only the broadcast is under study; bench/naive.py runs each variant in
a process of its own. To try one by hand:

    .venv/bin/flask --app bench/naive_app run
"""

import faulthandler
import json
import queue
import secrets
import signal
import sys
import threading
from datetime import datetime, timezone

from flask import Flask
from flask_sock import Sock
from simple_websocket import ConnectionClosed

app = Flask(__name__)
sock = Sock(app)

EPOCH = secrets.token_hex(8)
messages = []


def history_frame():
    """Return the first frame a client gets: no messages, and the cursor to continue from."""
    return json.dumps({"command": "messages", "messages": [], "cursor": len(messages),
                       "epoch": EPOCH, "reset": False, "more": False})


def add_message(message):
    """Store the message of a `send-message` frame; return the `messages` frame that announces it."""
    stored = {"id": len(messages) + 1, "user": message["user"], "text": message["text"],
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
              "likes": 0, "dislikes": 0}
    messages.append(stored)
    return json.dumps({"command": "messages", "messages": [stored], "cursor": stored["id"],
                       "epoch": EPOCH, "reset": False, "more": False})


# Variant (a): a loop over the sockets.

clients = set()
lock = threading.Lock()  # guards clients, outboxes and messages


@sock.route("/loop/ws")
def chat_with_a_loop(ws):
    """Send the history, then send each message this client sends to every client."""
    with lock:
        ws.send(history_frame())
        clients.add(ws)
    try:
        while True:
            command = json.loads(ws.receive())
            with lock:
                frame = add_message(command["message"])
                for client in clients:
                    client.send(frame)
    finally:
        with lock:
            clients.discard(ws)


# Variant (b): a queue and a thread for each client.

outboxes = set()


@sock.route("/threads/ws")
def chat_with_a_thread_per_client(ws):
    """Like variant (a), but queue each frame for every client's own sending thread."""
    outbox = queue.Queue()
    threading.Thread(target=send_queued, args=(ws, outbox), daemon=True).start()
    with lock:
        outbox.put(history_frame())
        outboxes.add(outbox)
    try:
        while True:
            command = json.loads(ws.receive())
            with lock:
                frame = add_message(command["message"])
                for each in outboxes:
                    each.put(frame)
    finally:
        with lock:
            outboxes.discard(outbox)
        outbox.put(None)


def send_queued(ws, outbox):
    """Send each frame put in `outbox`, until None; a client that stops reading makes its queue grow."""
    try:
        while (frame := outbox.get()) is not None:
            ws.send(frame)
    except ConnectionClosed:
        pass


if __name__ == "__main__":
    # How bench/naive.py runs it: werkzeug's server with a thread per
    # connection, as `flask run` starts it, and a dump of every thread's stack
    # in the log on SIGUSR1, so that naive.py can see where the threads wait.
    faulthandler.register(signal.SIGUSR1)
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
