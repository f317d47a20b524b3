"""The chat's web server: pages, the HTTP API and the WebSocket routes.

Every route only translates: HTTP requests and WebSocket frames become calls to
the store (`store.py`), and the store's answers become JSON. The broadcaster
(`broadcaster.py`) pushes each change to every open WebSocket.
"""

import json
from urllib.parse import urlsplit

from flask import Flask, jsonify, render_template, request
from flask_sock import Sock
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound

from broadcaster import Broadcaster
from store import MAX_TEXT, MAX_USER, Store

# How long a WebSocket route waits for a frame before it checks anyway that
# the connection is still open, so that no route thread can wait forever.
RECEIVE_TIMEOUT = 30


def create_app(test_config=None):
    """Create the chat app; settings come from defaults, then FLASK_* variables, then `test_config`."""
    app = Flask(__name__)
    app.config.from_mapping(
        MAX_MESSAGES=10000,
        ALLOWED_ORIGINS=[],
        MAX_WAIT=30,
        MAX_CONTENT_LENGTH=65536,
        SOCK_SERVER_OPTIONS={"max_message_size": 65536, "ping_interval": 25},
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)

    store = Store(max_messages=app.config["MAX_MESSAGES"])
    broadcaster = Broadcaster(store)
    sock = Sock(app)
    app.extensions["chat_store"] = store
    app.extensions["chat_broadcaster"] = broadcaster

    # Pages

    @app.get("/")
    def index():
        return render_template("index.html")

    @app.get("/polling")
    def polling_page():
        return render_template("polling.html", limits=LIMITS)

    @app.get("/websocket")
    def websocket_page():
        return render_template("websocket.html", limits=LIMITS)

    @app.get("/hello")
    def hello_page():
        return render_template("hello.html")

    # HTTP API

    @app.get("/messages")
    def get_messages():
        """Answer what changed since `since`; with `wait`, hold the answer until something does."""
        since = whole_number(request.args, "since", default=0)
        wait = whole_number(request.args, "wait", default=0)
        if wait > app.config["MAX_WAIT"]:
            raise BadRequest(f"wait must be at most {app.config['MAX_WAIT']} seconds.")
        epoch = request.args.get("epoch") or None
        answer = store.since(since, epoch)
        if wait and not answer["messages"] and not answer["reset"]:
            store.wait(answer["cursor"], timeout=wait)
            answer = store.since(since, epoch)
        return answer

    @app.post("/messages")
    def post_message():
        try:
            return add_message(store, parse_json(request.get_data(as_text=True))), 201
        except ValueError as error:
            raise BadRequest(str(error))

    @app.post("/messages/<int:message_id>/<any(like, dislike):vote>")
    def post_vote(message_id, vote):
        try:
            return add_vote(store, vote, message_id)
        except KeyError:
            raise NotFound(f"There is no message with id {message_id}.")

    @app.errorhandler(HTTPException)
    def json_error(error):
        """Answer every HTTP error with JSON a person can read: {"error": "..."}."""
        return jsonify(error=error.description), error.code

    # WebSockets

    @app.before_request
    def check_websocket_handshake():
        """Refuse a bad WebSocket handshake with an HTTP error, before the upgrade."""
        if request.url_rule is None or not request.url_rule.websocket:
            return
        # Browsers send cookies with a WebSocket handshake from any site, so a
        # page elsewhere could chat in a visitor's name. Browsers also say which
        # page asked, in Origin; programs that are not browsers send none.
        origin = request.headers.get("Origin")
        allowed = app.config["ALLOWED_ORIGINS"]
        if isinstance(allowed, str):  # FLASK_ALLOWED_ORIGINS="https://a.example https://b.example"
            allowed = allowed.replace(",", " ").split()
        if origin and urlsplit(origin).netloc != request.host and origin not in allowed:
            raise Forbidden(f"WebSocket connections from {origin} are not allowed.")
        whole_number(request.args, "since", default=0)

    @sock.route("/hello/ws")
    def hello_socket(ws):
        ws.send("Hello")
        # Then wait for the page to hang up. If the server hung up first,
        # flask-sock would let werkzeug write an HTTP response after the close
        # frame, and browsers would report a broken connection (flask-sock #20).
        while ws.connected:
            ws.receive(timeout=RECEIVE_TIMEOUT)

    @sock.route("/ws")
    def chat_socket(ws):
        """Send the client what it missed, then every change; carry out the frames it sends."""
        since = whole_number(request.args, "since", default=0)
        subscriber = broadcaster.subscribe(ws, since, request.args.get("epoch") or None)
        try:
            while True:
                frame = ws.receive(timeout=RECEIVE_TIMEOUT)
                if frame is not None:
                    error = carry_out(store, frame)
                    if error:
                        subscriber.send_text(json.dumps({"command": "error", "error": error}))
        finally:
            broadcaster.unsubscribe(subscriber)

    return app


# What the pages check before sending, so a person hears about it at once.
LIMITS = {"user": MAX_USER, "text": MAX_TEXT}


def whole_number(args, name, default):
    """Return the query argument `name` as an integer >= 0, or raise BadRequest."""
    value = args.get(name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{name} must be a whole number of 0 or more, not {value!r}.")
    return int(value)


def parse_json(text):
    """Return the value of a JSON text; raise ValueError, with a reason, if it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # deep nesting like [[[[...]]]] is a RecursionError
        raise ValueError("That is not valid JSON.") from None


def add_message(store, body):
    """Store the message in a request body {"user": ..., "text": ...}; raise ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError('Send a JSON object like {"user": "Azin", "text": "Hello!"}.')
    return store.add(body.get("user"), body.get("text"))


def add_vote(store, vote, message_id):
    """Add a like or dislike; raise ValueError for a bad id, KeyError for an unknown one."""
    # bool is a kind of int in Python, but `true` is not a message id.
    if type(message_id) is not int:
        raise ValueError("id must be a message id, a whole number.")
    return store.like(message_id) if vote == "like" else store.dislike(message_id)


def carry_out(store, frame):
    """Carry out one frame from a client; return what was wrong with it, or None."""
    if not isinstance(frame, str):
        return "Frames must be JSON text; binary frames are not understood."
    try:
        request = parse_json(frame)
        if not isinstance(request, dict):
            raise ValueError('Frames must be JSON objects with a "command" field.')
        command = request.get("command")
        match command:
            case "send-message":
                add_message(store, request.get("message"))
            case "like" | "dislike":
                add_vote(store, command, request.get("id"))
            case _:
                return f"Unknown command {command!r}: use send-message, like or dislike."
    except ValueError as error:
        return str(error)
    except KeyError:
        return f"There is no message with id {request['id']}."
    return None
