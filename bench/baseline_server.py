"""A minimal chat server built on python-websockets: the yardstick for bench/run.py.

It speaks the app's `/ws` protocol (see CONTRACT.md) with an in-memory list and a
cursor, and sends each change to every client with websockets' `broadcast()`.
It serves nothing but `/ws`, and checks no Origin, because only the benchmark
talks to it.

    python bench/baseline_server.py --port 8766
"""

import argparse
import asyncio
import json
import secrets
from collections import OrderedDict
from datetime import datetime, timezone
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

EPOCH = secrets.token_hex(8)
MESSAGES = {}  # message id -> message
CHANGED = OrderedDict()  # message id -> cursor of its last change, oldest change first
CLIENTS = set()
cursor = 0


def messages_since(since, epoch=None):
    """Return the `messages` frame holding everything that changed after `since`."""
    reset = (epoch is not None and epoch != EPOCH) or since > cursor
    if reset:
        since = 0
    changed_ids = []
    # Walk from the newest change, so a client that is up to date costs nothing.
    for message_id in reversed(CHANGED):
        if CHANGED[message_id] <= since:
            break
        changed_ids.append(message_id)
    changed_ids.sort()
    messages = [MESSAGES[i] for i in changed_ids]
    return messages_frame(messages, reset)


def messages_frame(messages, reset=False):
    """Return a `messages` frame as JSON text."""
    return json.dumps(
        {"command": "messages", "messages": messages, "cursor": cursor, "epoch": EPOCH, "reset": reset}
    )


def record_change(message):
    """Move the cursor one step and send the changed message to every client."""
    global cursor
    cursor += 1
    CHANGED[message["id"]] = cursor
    CHANGED.move_to_end(message["id"])
    broadcast(CLIENTS, messages_frame([message]))


def apply(command):
    """Carry out one client command; return what is wrong with it, or None."""
    match command:
        case {"command": "send-message", "message": {"user": str(user), "text": str(text)}}:
            user, text = user.strip(), text.strip()
            if not 1 <= len(user) <= 50 or not 1 <= len(text) <= 1000:
                return "Name must be 1 to 50 characters and Message 1 to 1000."
            message_id = len(MESSAGES) + 1
            timestamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            MESSAGES[message_id] = {
                "id": message_id, "user": user, "text": text, "timestamp": timestamp, "likes": 0, "dislikes": 0,
            }
            record_change(MESSAGES[message_id])
        case {"command": "like" | "dislike" as vote, "id": int(message_id)} if message_id in MESSAGES:
            MESSAGES[message_id][vote + "s"] += 1
            record_change(MESSAGES[message_id])
        case _:
            return "Unknown command, or a bad or missing field."
    return None


def parse_query(path):
    """Return (since, epoch) from the handshake's URL; raise ValueError if `since` is not a cursor."""
    query = parse_qs(urlsplit(path).query)
    since = query.get("since", ["0"])[0]
    if not since.isdigit():
        raise ValueError("since must be a whole number, 0 or more.")
    return int(since), query.get("epoch", [None])[0]


async def chat(websocket):
    """Serve one client: its backlog first, then its commands until it leaves."""
    try:
        since, epoch = parse_query(websocket.request.path)
    except ValueError as error:
        await websocket.send(json.dumps({"command": "error", "error": str(error)}))
        await websocket.close(1008)
        return
    # No await between taking the backlog and joining CLIENTS, so no change can
    # fall between the first frame and the broadcasts that follow it.
    backlog = messages_since(since, epoch)
    CLIENTS.add(websocket)
    try:
        await websocket.send(backlog)
        async for frame in websocket:
            try:
                command = json.loads(frame) if isinstance(frame, str) else None
            except ValueError:
                command = None
            error = apply(command)
            if error:
                await websocket.send(json.dumps({"command": "error", "error": error}))
    finally:
        CLIENTS.discard(websocket)


def only_ws(connection, request):
    """Answer 404 to any path but /ws."""
    if urlsplit(request.path).path != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "Only /ws is served here.\n")
    return None


async def main(port):
    """Serve /ws on 127.0.0.1:port until stopped."""
    # The same limits as the app's SOCK_SERVER_OPTIONS, and no compression:
    # the benchmark's clients do not ask for it from either server.
    async with serve(
        chat, "127.0.0.1", port, process_request=only_ws,
        compression=None, max_size=65536, ping_interval=25,
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8766)
    asyncio.run(main(parser.parse_args().port))
