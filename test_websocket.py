"""WebSocket tests: a real server thread and real simple-websocket clients."""

import json
import socket
import threading

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from helpers import (check_clients_joining_while_others_post, on_both_stores, raw_websocket, receive_json,
                     receive_until, server_threads, texts, wait_until)

def send_message(ws, text, user="Azin"):
    ws.send(json.dumps({"command": "send-message", "message": {"user": user, "text": text}}))


def test_hello_socket_says_hello(server):
    ws = server.connect("/hello/ws")
    assert ws.recv(timeout=5) == "Hello"


@on_both_stores
def test_first_frame_on_an_empty_store_is_an_empty_messages_frame(server):
    ws = server.connect()
    first = receive_json(ws)
    assert first == {"command": "messages", "messages": [], "cursor": 0,
                     "epoch": server.get("/messages")["epoch"], "reset": False, "more": False}
    ws.close()


@on_both_stores
def test_first_frame_holds_everything_after_since(server):
    for n in range(3):
        server.post("/messages", {"user": "Azin", "text": f"message {n}"})
    ws = server.connect("/ws?since=1")
    first = receive_json(ws)
    assert [m["id"] for m in first["messages"]] == [2, 3]
    assert first["cursor"] == 3
    ws.close()


@on_both_stores
def test_message_posted_over_http_reaches_every_socket(server):
    sockets = [server.connect() for _ in range(3)]
    for ws in sockets:
        receive_json(ws)
    server.post("/messages", {"user": "Bo", "text": "Hello sockets"})
    for ws in sockets:
        frame = receive_json(ws)
        assert frame["command"] == "messages"
        assert texts([frame]) == ["Hello sockets"]
        assert frame["cursor"] == 1
        ws.close()


@on_both_stores
def test_message_sent_over_a_socket_reaches_everyone_and_is_visible_to_get(server):
    sender, listener = server.connect(), server.connect()
    receive_json(sender), receive_json(listener)
    send_message(sender, "over the socket")
    assert texts([receive_json(listener)]) == ["over the socket"]
    assert texts([receive_json(sender)]) == ["over the socket"]
    assert texts([server.get("/messages")]) == ["over the socket"]
    sender.close(), listener.close()


@on_both_stores
@pytest.mark.parametrize("vote, field", [("like", "likes"), ("dislike", "dislikes")])
def test_votes_over_a_socket_update_the_count_for_everyone(server, vote, field):
    server.post("/messages", {"user": "Azin", "text": "vote on me"})
    voter, watcher = server.connect(), server.connect()
    receive_json(voter), receive_json(watcher)
    voter.send(json.dumps({"command": vote, "id": 1}))
    frame = receive_json(watcher)
    assert frame["messages"][0][field] == 1
    assert server.get("/messages")["messages"][0][field] == 1
    voter.close(), watcher.close()


@on_both_stores
def test_votes_posted_over_http_reach_sockets(server):
    server.post("/messages", {"user": "Azin", "text": "vote on me"})
    ws = server.connect()
    receive_json(ws)
    server.post("/messages/1/like")
    assert receive_json(ws)["messages"][0]["likes"] == 1
    ws.close()


BAD_FRAMES = [
    ("not json", "not valid JSON"),
    (b"\x00binary", "binary"),
    ('"just a string"', "JSON objects"),
    ("[1, 2]", "JSON objects"),
    ("[" * 30000, "not valid JSON"),
    ("{}", "Unknown command None"),
    ('{"command": "shout"}', "Unknown command 'shout'"),
    ('{"command": "send-message"}', "JSON object like"),
    ('{"command": "send-message", "message": "Hello"}', "JSON object like"),
    ('{"command": "send-message", "message": {"user": "Azin"}}', "Message (text) is missing"),
    ('{"command": "send-message", "message": {"user": "", "text": "Hi"}}', "must not be empty"),
    ('{"command": "send-message", "message": {"user": "Azin", "text": "%s"}}' % ("x" * 1001),
     "too long"),
    ('{"command": "send-message", "message": {"user": "Azin", "text": "\\ud800"}}',
     "invalid character"),
    ('{"command": "like"}', "id must be a message id"),
    ('{"command": "like", "id": "1"}', "id must be a message id"),
    ('{"command": "like", "id": true}', "id must be a message id"),
    ('{"command": "dislike", "id": 1.0}', "id must be a message id"),
    ('{"command": "like", "id": 99}', "no message with id 99"),
    ('{"command": "dislike", "id": -1}', "no message with id -1"),
]


@pytest.mark.parametrize("frame, complaint", BAD_FRAMES)
def test_bad_frames_get_an_error_frame_change_nothing_and_keep_the_connection(
        server, store, frame, complaint):
    server.post("/messages", {"user": "Azin", "text": "already here"})
    ws = server.connect()
    receive_json(ws)
    ws.send(frame)
    error = receive_json(ws)
    assert error["command"] == "error"
    assert complaint in error["error"]
    assert store.cursor == 1
    send_message(ws, "still connected")
    assert texts([receive_json(ws)]) == ["still connected"]
    ws.close()


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "since=2.5"])
def test_an_invalid_since_is_refused_with_400_before_the_upgrade(server, query):
    with pytest.raises(InvalidStatus) as refused:
        server.connect(f"/ws?{query}")
    assert refused.value.response.status_code == 400
    assert b"since must be a whole number" in refused.value.response.body


def test_a_frame_over_the_size_limit_closes_with_1009(server, store):
    ws = server.connect()
    receive_json(ws)
    send_message(ws, "x" * 70000)
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1009
    assert store.cursor == 0


@on_both_stores
def test_a_stale_epoch_gets_everything_with_reset(server):
    server.post("/messages", {"user": "Azin", "text": "Hello"})
    ws = server.connect("/ws?since=5&epoch=before-restart")
    first = receive_json(ws)
    assert first["reset"] is True
    assert texts([first]) == ["Hello"]
    ws.close()


@on_both_stores
def test_a_client_that_reconnects_with_its_cursor_misses_nothing(server):
    ws = server.connect()
    receive_json(ws)
    server.post("/messages", {"user": "Azin", "text": "before"})
    frame = receive_json(ws)
    ws.close()
    for text in ("while away 1", "while away 2"):
        server.post("/messages", {"user": "Bo", "text": text})
    server.post("/messages/1/like")
    back = server.connect(f"/ws?since={frame['cursor']}&epoch={frame['epoch']}")
    first = receive_json(back)
    assert first["reset"] is False
    assert [(m["text"], m["likes"]) for m in first["messages"]] == [
        ("before", 1), ("while away 1", 0), ("while away 2", 0)]
    back.close()


@on_both_stores
@pytest.mark.config(RATE_LIMIT=0)  # each sender sends 50 frames at once
def test_cursors_grow_on_each_connection_and_no_change_is_skipped_or_repeated(server):
    watchers = [server.connect() for _ in range(3)]
    for ws in watchers:
        receive_json(ws)
    # They read none of the frames the broadcast sends them: without a limit on their
    # queue, they still read the server's close frame, and close without waiting.
    senders = [server.connect(max_queue=None) for _ in range(4)]

    def send_many(ws, name):
        receive_json(ws)
        for n in range(50):
            send_message(ws, f"{name} {n}", user=name)

    threads = [threading.Thread(target=send_many, args=(ws, f"s{i}")) for i, ws in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ws in watchers:
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == 200)
        cursors = [frame["cursor"] for frame in frames]
        assert cursors == sorted(set(cursors))
        # Each change here is a new message, so a frame's messages are exactly its cursor steps.
        previous = 0
        for frame in frames:
            assert [m["id"] for m in frame["messages"]] == list(range(previous + 1, frame["cursor"] + 1))
            previous = frame["cursor"]
        ws.close()
    for ws in senders:
        ws.close()


@on_both_stores
@pytest.mark.config(RATE_LIMIT=0, PAGE_SIZE=1000)  # 300 posts as fast as they go; one page
def test_clients_connecting_while_others_post_get_every_message_exactly_once(server):
    check_clients_joining_while_others_post(post_to=[server], history_from=server, sockets_from=server)


def test_a_send_error_on_some_sockets_does_not_stop_the_broadcast_to_the_others(
        server, broadcaster):
    healthy = [server.connect() for _ in range(3)]
    for ws in healthy:
        receive_json(ws)
    broken = [raw_websocket(server.port) for _ in range(3)]
    wait_until(lambda: len(broadcaster.subscribers) == 6)
    # Shut down the sending side of the server's end of the raw sockets:
    # they stay registered, but every send to them now fails.
    for subscriber in broadcaster.subscribers:
        server_end = subscriber.connection._sock
        if server_end.getpeername()[1] in [raw.getsockname()[1] for raw in broken]:
            server_end.shutdown(socket.SHUT_WR)
    for text in ("one", "two"):
        server.post("/messages", {"user": "Azin", "text": text})
    for ws in healthy:
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == 2)
        assert texts(frames) == ["one", "two"]
        ws.close()
    for raw in broken:
        raw.close()


def test_closed_and_vanished_sockets_leave_the_registry_and_leave_no_threads(server, broadcaster):
    warm_up = server.connect()
    receive_json(warm_up)
    warm_up.close()
    wait_until(lambda: not broadcaster.subscribers)
    threads_before = server_threads()
    for n in range(200):
        ws = server.connect()
        receive_json(ws)
        if n % 2:
            ws.close()  # a polite close frame
        else:
            ws.socket.close()  # vanishes: no close frame at all
    wait_until(lambda: not broadcaster.subscribers)
    wait_until(lambda: server_threads() <= threads_before)
    server.post("/messages", {"user": "Azin", "text": "anyone?"})
    ws = server.connect()
    assert texts([receive_json(ws)]) == ["anyone?"]
    ws.close()


@pytest.mark.parametrize(
    "origin, allowed",
    [
        (None, True),
        ("same", True),
        ("http://evil.example", False),
        ("http://127.0.0.1:1", False),
        ("http://friend.example", True),
        ("null", False),
    ],
)
def test_handshakes_from_other_sites_are_refused_with_403(app, server, origin, allowed):
    app.config["ALLOWED_ORIGINS"] = ["http://friend.example"]
    headers = {"Origin": server.url if origin == "same" else origin} if origin else {}
    if allowed:
        ws = server.connect(additional_headers=headers)
        assert receive_json(ws)["command"] == "messages"
        ws.close()
    else:
        with pytest.raises(InvalidStatus) as refused:
            server.connect(additional_headers=headers)
        assert refused.value.response.status_code == 403


def test_a_command_with_a_ref_that_was_carried_out_gets_a_sent_frame_with_the_id_to_its_sender_only(server):
    sender, watcher = server.connect(), server.connect()
    receive_json(sender), receive_json(watcher)
    sender.send(json.dumps({"command": "send-message", "ref": "m-1",
                            "message": {"user": "Azin", "text": "ok"}}))
    sender.send(json.dumps({"command": "like", "id": 1, "ref": 7}))
    sender.send(json.dumps({"command": "dislike", "id": 1}))  # no ref: no sent frame
    sender.send(json.dumps({"command": "like", "id": 2, "ref": "m-2"}))  # refused: an error, no sent frame
    replies = []
    while len(replies) < 3:
        frame = receive_json(sender)
        if frame["command"] != "messages":  # the change itself comes in messages frames, before or after
            replies.append(frame)
    assert replies[:2] == [{"command": "sent", "ref": "m-1", "id": 1}, {"command": "sent", "ref": 7, "id": 1}]
    assert replies[2]["command"] == "error" and replies[2]["ref"] == "m-2"
    # The watcher sees the changes, and none of the sender's replies.
    frames = receive_until(watcher, lambda frames: frames and frames[-1]["cursor"] == 3)
    assert {frame["command"] for frame in frames} == {"messages"}
