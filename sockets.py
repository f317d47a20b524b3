"""The two WebSocket routes: /hello/ws, the smallest there is, and /ws, the chat.

Each route gets a `Connection` (connection.py): flask-sock's WebSocket, made
safe against clients that read slowly, flood, or vanish. Before the upgrade,
`check_handshake` refuses with a plain HTTP error what the server can't or
won't take.
"""

import base64
import binascii
import json

import simple_websocket
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import BadRequest, Forbidden, ServiceUnavailable
from werkzeug.routing import WebsocketMismatch
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from api import add_message, add_vote, from_another_site, parse_json, quote, whole_number
from connection import Sock
from limits import TokenBucket
from store import StoreUnavailable

bp = Blueprint("sockets", __name__)
sock = Sock()


@sock.route("/hello/ws", bp=bp)
def hello_socket(ws):
    """Say Hello, then keep the connection open until the page leaves."""
    ws.send("Hello")
    ws.wait_closed()


@sock.route("/ws", bp=bp)
def chat_socket(ws):
    """Send the client what it missed, then every change; carry out the frames it sends."""
    chat = current_app.extensions["chat"]
    since = whole_number(request.args, "since", default=0)
    try:
        subscriber = chat.broadcaster.subscribe(ws, since, request.args.get("epoch") or None)
    except StoreUnavailable as error:
        ws.send(error_frame(str(error)))
        ws.close(CloseReason.TRY_AGAIN_LATER, "The chat can't be reached; try again later.")
        return
    allowance = TokenBucket(current_app.config["RATE_LIMIT"])
    try:
        for frame in ws:
            error = carry_out(chat.store, frame, allowance)
            if error:
                ws.send(error)
            if allowance.refused > allowance.burst:  # it keeps flooding: hang up
                ws.close(CloseReason.POLICY_VIOLATION, "Too many frames: slow down.")
    finally:
        chat.broadcaster.unsubscribe(subscriber)


def carry_out(store, frame, allowance):
    """Carry out one frame from a client; return the error frame to send back, or None if all went well."""
    wait = allowance.take()  # every frame counts: answering a bad one costs as much
    try:
        command = parse_command(frame)
    except ValueError as error:
        return error_frame(str(error))
    ref = command.get("ref")
    if wait:
        return error_frame(f"Too many changes: at most {allowance.rate} a second. "
                           f"This one was not carried out; wait {wait:.1f} s.", ref)
    try:
        match command.get("command"):
            case "send-message":
                add_message(store, command.get("message"))
            case "like" | "dislike" as vote:
                add_vote(store, vote, command.get("id"))
            case unknown:
                return error_frame(f"Unknown command {quote(unknown)}: use send-message, like or dislike.", ref)
    except (ValueError, StoreUnavailable) as error:
        return error_frame(str(error), ref)
    except KeyError:
        return error_frame(f"There is no message with id {quote(command['id'])}.", ref)
    return None


def parse_command(frame):
    """Return a client frame as a dict with a usable "ref", or raise ValueError saying what is wrong."""
    if not isinstance(frame, str):
        raise ValueError("Frames must be JSON text; binary frames are not understood.")
    command = parse_json(frame)
    if not isinstance(command, dict):
        raise ValueError('Frames must be JSON objects with a "command" field.')
    ref = command.get("ref")
    if not (ref is None or type(ref) in (int, float) or isinstance(ref, str) and len(ref) <= 64):
        raise ValueError('"ref" must be text of up to 64 characters, or a number.')
    return command


def error_frame(error, ref=None):
    """Return the JSON text of an `error` frame, echoing the client's `ref` if it gave one."""
    frame = {"command": "error", "error": error}
    if ref is not None:
        frame["ref"] = ref
    return json.dumps(frame, ensure_ascii=False)


# Before and after the upgrade


@bp.before_request
def check_handshake():
    """Refuse a handshake the server can't or won't take, with an HTTP error before the upgrade."""
    if request.endpoint == "sockets.chat_socket":
        whole_number(request.args, "since", default=0)
    # Browsers send cookies with a WebSocket handshake from any site, so a page
    # elsewhere could chat in a visitor's name.
    if from_another_site():
        raise Forbidden(f"WebSocket connections from {quote(request.headers['Origin'])} are not allowed.")
    check_upgrade(request.headers)
    # Past its limit of open files, a server can't even accept a connection to
    # say no: refuse new sockets while there is still room to answer.
    slots = current_app.extensions["chat"].socket_slots
    if not slots.acquire(blocking=False):
        raise ServiceUnavailable("The server holds as many WebSockets as it can; try again later.")
    g.socket_slots = slots


@bp.teardown_request
def free_socket_slot(error=None):
    """Give back the slot of a WebSocket that has ended (or never started)."""
    slots = g.pop("socket_slots", None)
    if slots:
        slots.release()


@bp.after_request
def log_as_switching_protocols(response):
    """Make werkzeug's log say 101, the status the handshake answered with."""
    # The 101 went out when the socket opened. What werkzeug logs, once the
    # socket has closed, is the status of flask-sock's response, which is never sent.
    if response.status_code == 200:
        response.status_code = 101
    return response


def check_upgrade(headers):
    """Raise BadRequest unless the headers ask for a WebSocket as RFC 6455 says."""
    connection = [token.strip().lower() for token in headers.get("Connection", "").split(",")]
    if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
        raise BadRequest("This address speaks WebSocket: open it with new WebSocket(url), "
                         "or a request with Upgrade: websocket.")
    if headers.get("Sec-WebSocket-Version") != "13":
        raise BadRequest("Sec-WebSocket-Version must be 13, the version of RFC 6455.")
    try:
        key = base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 16:
        raise BadRequest("Sec-WebSocket-Key must be 16 random bytes in base64.")


@bp.app_errorhandler(WebsocketMismatch)
def not_a_websocket_handshake(error):
    """Say what is wrong when a plain request reaches a WebSocket address (werkzeug refuses it first)."""
    try:
        check_upgrade(request.headers)
    except BadRequest as reason:
        return jsonify(error=reason.description), 400
    return jsonify(error="This address speaks plain HTTP, not WebSocket."), 400


@bp.errorhandler(RemoteProtocolError)
@bp.errorhandler(simple_websocket.ConnectionError)
def handshake_failed(error):
    """Answer a handshake that failed anyway (the client left, say) with 400, and no traceback in the log."""
    return jsonify(error=f"The WebSocket handshake failed: {error}"), 400
