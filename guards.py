"""What guards the HTTP API, so that no client can hurt the others.

api.py calls `protect(bp)` once; from then on every change (a POST) must come
from this site, be declared JSON and stay within its address's flood allowance,
and the routes read their input with the helpers below, which refuse what is
malformed, too long or too large with an error a person can read.
"""

import json
import math
from contextlib import contextmanager
from urllib.parse import urlsplit

from flask import current_app, request
from werkzeug.exceptions import (BadRequest, Forbidden, RequestEntityTooLarge, ServiceUnavailable,
                                 TooManyRequests, UnsupportedMediaType)

from limits import too_many_changes

# The largest id or cursor accepted: JavaScript counts exactly up to 2**53.
LARGEST_NUMBER = 2**53


def protect(bp):
    """Check every request to the routes of `bp` before they run."""
    bp.before_request(check_change)


def check_change():
    """Refuse a POST from another site, with a body that is not JSON, or beyond the address's allowance."""
    if request.method != "POST":
        return
    if from_another_site():
        raise Forbidden(f"Pages on {quote(request.headers['Origin'])} may not change this chat.")
    # A page elsewhere may send a "simple" request (a form, or text/plain) without
    # asking first. Asking for JSON makes the browser ask first, and we say no.
    if (request.content_length or is_chunked()) and request.mimetype != "application/json":
        raise UnsupportedMediaType('Send JSON, with the header "Content-Type: application/json".')
    wait = current_app.extensions["chat"].changes_per_address.take(request.remote_addr)
    if wait:
        raise TooManyRequests(too_many_changes(current_app.config["RATE_LIMIT"], wait),
                              retry_after=math.ceil(wait))


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


@contextmanager
def waiting_slot():
    """Hold a place for a waiting long poll while the block runs; raise 503 or 429 if none is free."""
    # A waiting request holds a thread and a socket: their number is bounded.
    long_polls = current_app.extensions["chat"].long_polls
    take_place(long_polls, "requests waiting")
    try:
        yield
    finally:
        long_polls.give_back(request.remote_addr)


def take_place(places, what):
    """Take one of `places` for the client's address: 503 if the server is full, 429 if the address is."""
    refusal = places.take(request.remote_addr)
    if refusal == "server":
        raise ServiceUnavailable(f"The server holds as many {what} as it can; try again in a moment.")
    if refusal == "address":
        raise TooManyRequests(f"Your address already has {places.per_address} {what}; "
                              "close some pages first.", retry_after=5)


def json_body():
    """Return the request's JSON body; raise 413 if it is over the size limit, 400 if not UTF-8 JSON."""
    body = request.get_data()
    # werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without a word: check for more.
    if is_chunked() and request.input_stream.read(1):
        raise RequestEntityTooLarge()
    try:
        return parse_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("The body is not valid UTF-8 text.") from None
    except ValueError as error:
        raise BadRequest(str(error)) from None


def is_chunked():
    """True if the body comes in chunks, without a Content-Length (header values ignore case)."""
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def whole_number(name, default=0, most=LARGEST_NUMBER):
    """Return the query argument `name` as an integer from 0 to `most`, or raise BadRequest."""
    value = request.args.get(name)
    if not value:  # absent, or empty
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 16 or int(value) > LARGEST_NUMBER:
        raise BadRequest(f"{name} must be a whole number from 0 to 2**53, not {quote(value)}.")
    if int(value) > most:
        raise BadRequest(f"{name} must be at most {most}.")
    return int(value)


def parse_json(text):
    """Return the value of a JSON text; raise ValueError, with a reason, if it is not JSON."""
    try:
        return json.loads(text)
    # Deep nesting like [[[[...]]]] is a RecursionError; a number of 5000 digits, a ValueError.
    except (ValueError, RecursionError):
        raise ValueError("That is not valid JSON.") from None


def quote(value, limit=40):
    """Return `value` as Python would write it, cut to about `limit` characters: enough to recognize it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
