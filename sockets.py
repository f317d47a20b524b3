"""The two WebSocket routes: /hello/ws, the smallest there is, and /ws, the chat.

Each route gets a `Connection` (connection.py), flask-sock's WebSocket made
safe against clients that read slowly, flood, or vanish. What the server
refuses before the upgrade (a page of another site, a broken handshake, more
sockets than fit) is in handshake.py: one call below puts it in front of both.
"""

import json

from flask import Blueprint, current_app, request
from wsproto.frame_protocol import CloseReason

import handshake
from api import add_message, add_vote
from guards import LARGEST_NUMBER, parse_json, quote, whole_number
from limits import FrameAllowance, frame_pace, too_many_changes
from store import StoreUnavailable

bp = Blueprint("sockets", __name__)
sock = handshake.Sock(pace=frame_pace)  # every frame a client sends costs from its address's allowance
handshake.guard(bp)


@sock.route("/hello/ws", bp=bp)
def hello_socket(ws):
    """Say Hello, then keep the connection open until the page leaves."""
    ws.send("Hello")
    ws.wait_closed()


@sock.route("/ws", bp=bp)
def chat_socket(ws):
    """Send the client what it missed, then every change; carry out the frames it sends."""
    chat = current_app.extensions["chat"]
    try:
        subscriber = chat.broadcaster.subscribe(ws, whole_number("since"), request.args.get("epoch") or None)
    except StoreUnavailable as error:
        ws.send(error_frame(str(error)))
        ws.close(CloseReason.TRY_AGAIN_LATER, "The chat can't be reached; try again later.")
        return
    # Every socket of an address spends from the same allowance as its HTTP requests.
    allowance = FrameAllowance(chat.changes_per_address, request.remote_addr)
    try:
        while (frame := ws.receive()) is not None:
            reply = carry_out(chat.store, frame, allowance)
            if reply:
                ws.send(reply)
            if allowance.flooding:  # it keeps on, error frames or not: hang up
                ws.close(CloseReason.POLICY_VIOLATION, "Too many frames: slow down.")
    finally:
        chat.broadcaster.unsubscribe(subscriber)


def carry_out(store, frame, allowance):
    """Carry out one frame from a client; return the frame to send back (`error`, or `sent` for a ref), or None."""
    wait = allowance.take()  # every frame counts: answering a bad one costs as much
    try:
        command = parse_command(frame)
    except ValueError as error:
        return error_frame(str(error))
    ref = command.get("ref")
    if wait:
        refusal = too_many_changes(allowance.buckets.rate, wait)
        return error_frame(f"{refusal} This one was not carried out.", ref)
    try:
        match command.get("command"):
            case "send-message":
                message = add_message(store, command.get("message"))
            case "like" | "dislike" as vote:
                message = add_vote(store, vote, command.get("id"))
            case unknown:
                return error_frame(f"Unknown command {quote(unknown)}: "
                                   "use send-message, like or dislike.", ref)
    except (ValueError, StoreUnavailable) as error:
        return error_frame(str(error), ref)
    except KeyError:
        return error_frame(f"There is no message with id {quote(command['id'])}.", ref)
    # Its sender alone learns that this command, and not another with the same text, went through.
    return None if ref is None else sent_frame(ref, message["id"])


def parse_command(frame):
    """Return a client frame as a dict with a usable "ref", or raise ValueError saying what is wrong."""
    if not isinstance(frame, str):
        raise ValueError("Frames must be JSON text; binary frames are not understood.")
    command = parse_json(frame)
    if not isinstance(command, dict):
        raise ValueError('Frames must be JSON objects with a "command" field.')
    ref = command.get("ref")
    # Echoed as JSON, so NaN, Infinity (1e999) and numbers JavaScript can't hold are refused.
    is_number = (type(ref) is int and abs(ref) <= LARGEST_NUMBER
                 or type(ref) is float and abs(ref) < float("inf"))
    if not (ref is None or is_number or isinstance(ref, str) and len(ref) <= 64):
        raise ValueError('"ref" must be text of up to 64 characters, or a number.')
    return command


def sent_frame(ref, message_id):
    """Return the JSON text of a `sent` frame: the command with this `ref` was carried out on that message."""
    return json.dumps({"command": "sent", "ref": ref, "id": message_id}, ensure_ascii=False, allow_nan=False)


def error_frame(error, ref=None):
    """Return the JSON text of an `error` frame, echoing the client's `ref` if it gave one."""
    frame = {"command": "error", "error": error}
    if ref is not None:
        frame["ref"] = ref
    return json.dumps(frame, ensure_ascii=False, allow_nan=False)
