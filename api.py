"""The HTTP API: GET /messages to read and long-poll, POST to send, like and dislike.

Each route only translates between HTTP and store calls. What guards them
(writes from this site only, JSON bodies, flood control, a bound on waiting
requests, input that is malformed or too large) is in guards.py: one call
below puts it in front of every route here.
"""

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound

import guards
from guards import LARGEST_NUMBER, json_body, whole_number
from store import StoreUnavailable

bp = Blueprint("api", __name__)
guards.protect(bp)


@bp.get("/messages")
def get_messages():
    """Answer what changed since `since`, or a page of older messages before `before`.

    With `wait`, the answer is held until something changes (long polling).
    """
    store = current_app.extensions["chat"].store
    epoch = request.args.get("epoch") or None
    if "before" in request.args:
        return older_messages(store, epoch)
    since = whole_number("since")
    wait = whole_number("wait", most=current_app.config["MAX_WAIT"])
    answer = store.since(since, epoch)
    if wait and not answer["messages"] and not answer["reset"]:
        with guards.waiting_slot():
            store.wait(answer["cursor"], timeout=wait)
        answer = store.since(since, epoch)
    return answer


def older_messages(store, epoch):
    """Answer GET /messages?before=ID&limit=L: a page of history older than what the client shows."""
    if "since" in request.args or "wait" in request.args:
        raise BadRequest("before can't be combined with since or wait: ask for one or the other.")
    page_size = current_app.config["PAGE_SIZE"]
    limit = whole_number("limit", default=page_size)
    if not 1 <= limit <= page_size:
        raise BadRequest(f"limit must be from 1 to {page_size}.")
    return store.before(whole_number("before"), limit, epoch)


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


@bp.app_errorhandler(StoreUnavailable)
def store_unavailable(error):
    """Answer 503 when the store can't be reached (Redis is down): the request changed nothing."""
    return jsonify(error=str(error)), 503, {"Retry-After": "2"}


@bp.app_errorhandler(HTTPException)
def json_error(error):
    """Answer every HTTP error with JSON a person can read: {"error": "..."}."""
    headers = [(name, value) for name, value in error.get_headers() if name != "Content-Type"]
    return jsonify(error=error.description), error.code, headers
