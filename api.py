"""The HTTP API: GET /messages to read and long-poll, POST to send, like and dislike.

Each route only translates between HTTP and store calls. Before any change,
`check_change` refuses what must never reach the store: a write from another
site's page, a body that is not JSON, and a flood.
"""

import json
import math
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import (BadRequest, Forbidden, HTTPException, NotFound,
                                 RequestEntityTooLarge, ServiceUnavailable, TooManyRequests,
                                 UnsupportedMediaType)

from store import StoreUnavailable

bp = Blueprint("api", __name__)

# The largest id or cursor accepted: JavaScript counts exactly up to 2**53.
LARGEST_NUMBER = 2**53


@bp.get("/messages")
def get_messages():
    """Answer what changed since `since`, or a page of older messages before `before`.

    With `wait`, the answer is held until something changes (long polling).
    """
    chat = current_app.extensions["chat"]
    epoch = request.args.get("epoch") or None
    if "before" in request.args:
        if "since" in request.args or "wait" in request.args:
            raise BadRequest("before can't be combined with since or wait: ask for one or the other.")
        page_size = current_app.config["PAGE_SIZE"]
        limit = whole_number(request.args, "limit", default=page_size)
        if not 1 <= limit <= page_size:
            raise BadRequest(f"limit must be from 1 to {page_size}.")
        return chat.store.before(whole_number(request.args, "before", default=0), limit, epoch)

    since = whole_number(request.args, "since", default=0)
    wait = whole_number(request.args, "wait", default=0)
    if wait > current_app.config["MAX_WAIT"]:
        raise BadRequest(f"wait must be at most {current_app.config['MAX_WAIT']} seconds.")
    answer = chat.store.since(since, epoch)
    if wait and not answer["messages"] and not answer["reset"]:
        # A waiting request holds a thread and a socket: their number is bounded.
        if not chat.long_poll_slots.acquire(blocking=False):
            raise ServiceUnavailable("Too many requests are waiting already; ask again in a moment.")
        try:
            chat.store.wait(answer["cursor"], timeout=wait)
        finally:
            chat.long_poll_slots.release()
        answer = chat.store.since(since, epoch)
    return answer


@bp.post("/messages")
def post_message():
    """Store the message in the JSON body, {"user": ..., "text": ...}; answer 201 with it."""
    try:
        return add_message(current_app.extensions["chat"].store, json_body()), 201
    except ValueError as error:
        raise BadRequest(str(error))


@bp.post("/messages/<int:message_id>/<any(like, dislike):vote>")
def post_vote(message_id, vote):
    """Add a like or a dislike; answer with the updated message."""
    try:
        return add_vote(current_app.extensions["chat"].store, vote, message_id)
    except (KeyError, ValueError):
        raise NotFound(f"There is no message with id {message_id}.")


@bp.before_request
def check_change():
    """Refuse a POST from another site, with a body that is not JSON, or beyond the rate limit."""
    if request.method != "POST":
        return
    if from_another_site():
        raise Forbidden(f"Pages on {quote(request.headers['Origin'])} may not change this chat.")
    # A page elsewhere may send a "simple" request (a form, or text/plain) without
    # asking first. Asking for JSON makes the browser ask first, and we say no.
    has_body = request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "")
    if has_body and request.mimetype != "application/json":
        raise UnsupportedMediaType('Send JSON, with the header "Content-Type: application/json".')
    wait = current_app.extensions["chat"].posts_per_address.take(request.remote_addr)
    if wait:
        rate = current_app.config["RATE_LIMIT"]
        raise TooManyRequests(f"Too many changes: at most {rate} a second. Try again in a moment.",
                              retry_after=math.ceil(wait))


@bp.app_errorhandler(StoreUnavailable)
def store_unavailable(error):
    """Answer 503 when the store can't be reached (Redis is down): the request changed nothing."""
    return jsonify(error=str(error)), 503, {"Retry-After": "2"}


@bp.app_errorhandler(HTTPException)
def json_error(error):
    """Answer every HTTP error with JSON a person can read: {"error": "..."}."""
    headers = [(name, value) for name, value in error.get_headers() if name != "Content-Type"]
    return jsonify(error=error.description), error.code, headers


def from_another_site():
    """True if a browser says a page of another site sent this request, and that site isn't allowed.

    Browsers name the page's site in the Origin header of every POST and every
    WebSocket handshake; programs that are not browsers send none.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    allowed = current_app.config["ALLOWED_ORIGINS"]
    if isinstance(allowed, str):  # FLASK_ALLOWED_ORIGINS="https://a.example https://b.example"
        allowed = allowed.replace(",", " ").split()
    try:
        host = urlsplit(origin).netloc
    except ValueError:  # such as "http://[::1"
        return True
    return host != request.host and origin not in allowed


def json_body():
    """Return the request's JSON body; raise 413 if it is over the size limit, 400 if not UTF-8 JSON."""
    body = request.get_data()
    # werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without a word: check for more.
    if "chunked" in request.headers.get("Transfer-Encoding", "") and request.input_stream.read(1):
        raise RequestEntityTooLarge()
    try:
        return parse_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("The body is not valid UTF-8 text.") from None
    except ValueError as error:
        raise BadRequest(str(error)) from None


def whole_number(args, name, default):
    """Return the query argument `name` as an integer from 0 to 2**53, or raise BadRequest."""
    value = args.get(name)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 16 or int(value) > LARGEST_NUMBER:
        raise BadRequest(f"{name} must be a whole number from 0 to 2**53, not {quote(value)}.")
    return int(value)


def parse_json(text):
    """Return the value of a JSON text; raise ValueError, with a reason, if it is not JSON."""
    try:
        return json.loads(text)
    # Deep nesting like [[[[...]]]] is a RecursionError; a number of 5000 digits, a ValueError.
    except (ValueError, RecursionError):
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
    if not 0 < message_id <= LARGEST_NUMBER:
        raise KeyError(message_id)
    return store.like(message_id) if vote == "like" else store.dislike(message_id)


def quote(value, limit=40):
    """Return `value` as Python would write it, cut to about `limit` characters: enough to recognize it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
