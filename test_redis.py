"""One chat across processes and restarts: real `flask run` and gunicorn processes on a real redis-server.

The store, HTTP and WebSocket tests already run on the Redis store too. These
are the ones only Redis has: several processes serving one chat, and Redis
itself going away, restarting or being flushed.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from helpers import (FlaskRun, Gunicorn, RedisServer, check_clients_joining_while_others_post, flask_env, free_port,
                     receive_json, redis_settings, receive_until, texts, threads_of, wait_until)
from redis_limits import RedisBucketPerAddress, RedisPlaces
from redis_store import RedisStore

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads process details from /proc")


# Helpers


def flask_runs(start, redis_url, tmp_path, count=2, **settings):
    """Start `count` `flask run` processes on one Redis, with `start`: each stops after the test."""
    env = flask_env({**redis_settings(redis_url), **settings})
    servers = [FlaskRun(env=env, log=tmp_path / f"flask-{n}.log") for n in range(count)]
    start(*servers)
    return servers


def receive_command(ws, command, timeout=10, skipped=None):
    """Receive frames until one with `command`, skipping `status` frames (Redis comes and goes here); return it.

    The frames skipped are added to the list `skipped`, if one is given.
    """
    while (frame := receive_json(ws, timeout))["command"] != command:
        assert frame["command"] == "status", frame
        if skipped is not None:
            skipped.append(frame)
    return frame


@pytest.fixture
def open_socket():
    """A function that opens a real WebSocket client (python-websockets); all are closed after the test."""
    with ExitStack() as clients:
        yield lambda url, **options: clients.enter_context(connect(url, **options))


@pytest.fixture
def shared_redis(redis_server):
    """The session's redis-server, emptied for this test."""
    redis_server.client().flushall()
    return redis_server


@pytest.fixture
def two_processes(start, shared_redis, tmp_path, request):
    """Two `flask run` processes sharing one Redis; settings from @pytest.mark.config."""
    marker = request.node.get_closest_marker("config")
    return flask_runs(start, shared_redis.url, tmp_path, **(marker.kwargs if marker else {}))


# One chat, several processes


def test_a_post_to_one_process_reaches_sockets_and_long_polls_of_the_other(two_processes):
    a, b = two_processes
    with connect(f"ws://127.0.0.1:{b.port}/ws") as ws:
        start = receive_json(ws)
        long_poll = {}
        waiting = threading.Thread(target=lambda: long_poll.update(b.get(
            f"/messages?since={start['cursor']}&epoch={start['epoch']}&wait=20")))
        waiting.start()
        time.sleep(0.3)  # let the long poll settle into waiting

        assert a.request("POST", "/messages", {"user": "Azin", "text": "from process A"}).status == 201

        assert texts([receive_json(ws)]) == ["from process A"]
        waiting.join(timeout=10)
        assert texts([long_poll]) == ["from process A"]
        assert long_poll["epoch"] == start["epoch"]


@pytest.mark.config(RATE_LIMIT=0, PAGE_SIZE=1000)  # 300 posts as fast as they go; one page
def test_clients_joining_one_process_while_another_thread_posts_to_both_get_every_message_once(two_processes):
    a, b = two_processes
    # History from A, then the WebSocket of B from A's cursor: a cursor is good everywhere.
    check_clients_joining_while_others_post(post_to=[a, b], history_from=a, sockets_from=b, most=20)


@pytest.mark.config(RATE_LIMIT=0)  # 400 likes from one address
def test_likes_from_many_threads_through_both_processes_are_counted_exactly(two_processes):
    a, b = two_processes
    a.request("POST", "/messages", {"user": "Azin", "text": "like me"})

    def like_many(server, vote):
        for _ in range(50):
            assert server.request("POST", f"/messages/1/{vote}").status == 200

    threads = [threading.Thread(target=like_many, args=(server, vote))
               for server in (a, b) for vote in ("like", "like", "like", "dislike")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for server in (a, b):
        answer = server.get("/messages")
        assert (answer["messages"][0]["likes"], answer["messages"][0]["dislikes"]) == (300, 100)
        assert answer["cursor"] == 1 + 400


def test_flood_control_over_http_is_shared_by_the_processes(two_processes):
    a, b = two_processes
    # RATE_LIMIT 10: a burst of 30, then 10 a second, for one address on all processes together.
    statuses = [(a, b)[n % 2].request("POST", "/messages", {"user": "loop", "text": f"m{n}"}).status
                for n in range(60)]
    assert statuses.count(201) < 45  # each process alone would have taken 30
    assert 429 in statuses


def test_one_address_gets_the_rate_and_burst_in_all_over_posts_and_sockets_to_every_process(
        two_processes, open_socket):
    a, b = two_processes  # RATE_LIMIT 10: 10 changes a second, in bursts of up to 30
    sockets = [open_socket(f"ws://127.0.0.1:{server.port}/ws") for server in (a, b)]
    for ws in sockets:
        receive_json(ws)

    started = time.monotonic()
    statuses = []
    for n in range(20):  # 80 changes, spread over both processes and both ways of sending
        for server in (a, b):
            statuses.append(server.request("POST", "/messages", {"user": "loop", "text": f"post {n}"}).status)
        for ws in sockets:
            ws.send(json.dumps({"command": "send-message", "message": {"user": "loop", "text": f"frame {n}"}}))
    refused_frames = 0
    for ws in sockets:  # frames are carried out in order: once the last is answered, all are
        ws.send(json.dumps({"command": "like", "id": 0, "ref": "last"}))
        frames = receive_until(ws, lambda frames: frames and frames[-1].get("ref") == "last")
        refused_frames += sum("Too many" in frame.get("error", "") for frame in frames if "ref" not in frame)
    elapsed = time.monotonic() - started

    stored = len(a.get("/messages")["messages"])
    assert stored <= 30 + 10 * elapsed + 1, f"{stored} changes in {elapsed:.1f} s"
    assert statuses.count(201) + 40 - refused_frames == stored
    assert 429 in statuses and refused_frames > 0


@pytest.mark.config(MAX_SOCKETS_PER_ADDRESS=3)
def test_an_address_holds_at_most_its_share_of_websockets_and_long_polls_over_every_process(
        two_processes, shared_redis, open_socket):
    a, b = two_processes
    for server in (a, b, a):
        receive_json(open_socket(f"ws://127.0.0.1:{server.port}/ws"))
    for server in (a, b):
        with pytest.raises(InvalidStatus) as refused:
            open_socket(f"ws://127.0.0.1:{server.port}/ws")
        assert refused.value.response.status_code == 429

    cursor = a.get("/messages")["cursor"]
    answers = []
    waiting = [threading.Thread(target=lambda server=server: answers.append(
        server.request("GET", f"/messages?since={cursor}&wait=20", timeout=30))) for server in (a, b, b)]
    for thread in waiting:
        thread.start()
    client = shared_redis.client()
    wait_until(lambda: sum(int(places) for key in client.keys("chat:places:long-polls:*")
                           for places in client.hvals(key)) == 3)
    for server in (a, b):
        assert server.request("GET", f"/messages?since={cursor}&wait=20").status == 429
    assert b.request("POST", "/messages", {"user": "Azin", "text": "wake up"}).status == 201
    for thread in waiting:
        thread.join()
    assert [answer.status for answer in answers] == [200] * 3


def worker_holding(client_port, server_port, master_pid):
    """The pid of the gunicorn worker that holds the other end of our connection from `client_port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
                if (local, remote) == (server_port, client_port):
                    inodes.add(f"socket:[{fields[9]}]")
    workers = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True).stdout.split()
    for worker in workers:
        for fd in os.listdir(f"/proc/{worker}/fd"):
            try:
                if os.readlink(f"/proc/{worker}/fd/{fd}") in inodes:
                    return int(worker)
            except OSError:
                pass  # closed meanwhile
    return None


def post_through_a_new_connection(server, text):
    """POST a message over a connection of its own; return (status, pid of the worker that served it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.connect()
        worker = worker_holding(connection.sock.getsockname()[1], server.port, server.process.pid)
        connection.request("POST", "/messages", json.dumps({"user": "gunicorn", "text": text}),
                           {"Content-Type": "application/json"})
        return connection.getresponse().status, worker
    finally:
        connection.close()


def test_sockets_spread_over_gunicorn_workers_all_get_every_message(start, shared_redis, tmp_path):
    # The README's production command with three workers on one Redis.
    env = flask_env({**redis_settings(shared_redis.url), "RATE_LIMIT": 0})
    server = start(Gunicorn(env=env, options=["-w", "3"], log=tmp_path / "gunicorn.log"))
    sockets = [server.connect(open_timeout=20) for _ in range(24)]
    for ws in sockets:
        receive_json(ws)
    # Which worker accepts a connection is the kernel's choice: find out where each one went.
    socket_workers = {worker_holding(ws.socket.getsockname()[1], server.port, server.process.pid)
                      for ws in sockets} - {None}
    posted, post_workers = [], set()
    # Post until some post went through a worker other than some socket's (if the kernel
    # ever lets one), so that messages must cross processes to reach every socket.
    while len(posted) < 20 or (len(posted) < 60 and len(post_workers | socket_workers) < 2):
        status, worker = post_through_a_new_connection(server, f"m{len(posted)}")
        assert status == 201
        posted.append(f"m{len(posted)}")
        post_workers |= {worker} - {None}

    for ws in sockets:
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == len(posted))
        assert texts(frames) == posted
    print(f"\nsockets on workers {sorted(socket_workers)}, posts through {sorted(post_workers)}")


# Restarts and faults


def test_restarting_every_app_process_keeps_the_messages_and_the_epoch(two_processes):
    a, b = two_processes
    for n in range(3):
        a.request("POST", "/messages", {"user": "Azin", "text": f"before {n}"})
    before = b.get("/messages")

    for server in (a, b):
        server.stop()
    for server in (a, b):
        server.start()

    for server in (a, b):
        after = server.get("/messages")
        assert after["epoch"] == before["epoch"]
        assert after["messages"] == before["messages"]
    with connect(f"ws://127.0.0.1:{a.port}/ws?since={before['cursor']}&epoch={before['epoch']}") as ws:
        first = receive_json(ws)
        assert (first["reset"], first["messages"]) == (False, [])


def test_flushall_resets_clients_and_never_mixes_the_two_histories(two_processes, shared_redis):
    a, b = two_processes
    for n in range(3):
        a.request("POST", "/messages", {"user": "Azin", "text": f"old {n}"})
    with connect(f"ws://127.0.0.1:{a.port}/ws") as ws:
        old = receive_json(ws)
        assert texts([old]) == ["old 0", "old 1", "old 2"]

        shared_redis.client().flushall()
        new = b.request("POST", "/messages", {"user": "Ben", "text": "new 0"})
        assert (new.status, new.json["id"]) == (201, 1)  # ids start again, in a new epoch

        frames = receive_until(ws, lambda frames: any(frame["reset"] for frame in frames))
        reset = next(frame for frame in frames if frame["reset"])
        assert reset["epoch"] != old["epoch"]
        assert "old" not in json.dumps(frames)
        assert texts([reset]) in ([], ["new 0"])
        if texts([reset]) == []:  # the flush was seen before the new message was stored
            assert texts(receive_until(ws, lambda frames: texts(frames))) == ["new 0"]

    # A long-polling client from before the flush gets a reset too.
    answer = b.get(f"/messages?since={old['cursor']}&epoch={old['epoch']}")
    assert (answer["reset"], texts([answer])) == (True, ["new 0"])


@pytest.mark.parametrize("persistent", [False, True], ids=["no persistence", "appendfsync always"])
def test_when_redis_stops_requests_get_503_and_everything_recovers_when_it_returns(
        start, tmp_path, persistent, open_socket):
    redis_server = start(RedisServer(tmp_path, persistent))
    a, b = flask_runs(start, redis_server.url, tmp_path)
    for n in range(3):
        assert a.request("POST", "/messages", {"user": "Azin", "text": f"before {n}"}).status == 201
    before = a.get("/messages")
    ws = open_socket(f"ws://127.0.0.1:{b.port}/ws?since={before['cursor']}&epoch={before['epoch']}")
    receive_json(ws)
    threads_before = threads_of(a.process.pid)

    redis_server.process.kill()  # as in a crash: no chance to save anything more
    redis_server.process.wait()
    started = time.monotonic()
    answer = a.request("POST", "/messages", {"user": "Azin", "text": "while down"})
    assert answer.status == 503 and "Redis" in answer.json["error"]
    assert time.monotonic() - started < 5
    assert b.request("GET", "/messages").status == 503
    assert a.request("GET", "/polling").status == 200  # pages don't need Redis
    ws.send(json.dumps({"command": "like", "id": 1, "ref": "while-down"}))
    error = receive_command(ws, "error")
    assert error["ref"] == "while-down"
    assert "Redis" in error["error"]

    redis_server.start()  # same port, same folder
    wait_until(lambda: a.request("POST", "/messages", {"user": "Azin", "text": "after"}).status == 201,
               timeout=15)
    after = b.get("/messages")
    # A restarted Redis may have lost changes, so it is a new epoch either way...
    assert after["epoch"] != before["epoch"]
    # ...but with every write on disk before it was acknowledged, nothing was lost.
    expected = ["before 0", "before 1", "before 2", "after"] if persistent else ["after"]
    assert texts([after]) == expected

    # The socket open through it all is told to start again, and the broadcaster still works.
    frames = receive_until(ws, lambda frames: any(f.get("reset") for f in frames), timeout=15)
    assert next(f for f in frames if f.get("reset"))["epoch"] == after["epoch"]
    assert b.request("POST", "/messages", {"user": "Ben", "text": "and on"}).status == 201
    assert "and on" in texts(receive_until(ws, lambda frames: "and on" in texts(frames)))
    ws.close()
    assert threads_of(a.process.pid) <= threads_before + 2  # no thread left behind per failure


def test_a_redis_that_stops_answering_costs_requests_seconds_not_the_stall_and_everything_recovers(
        start, tmp_path, open_socket):
    redis_server = start(RedisServer(tmp_path))
    a, b = flask_runs(start, redis_server.url, tmp_path)
    assert a.request("POST", "/messages", {"user": "Azin", "text": "before"}).status == 201
    before = a.get("/messages")
    ws = open_socket(f"ws://127.0.0.1:{a.port}/ws?since={before['cursor']}&epoch={before['epoch']}")
    receive_json(ws)
    threads_before = threads_of(a.process.pid)

    # Stopped, not dead: Redis still accepts connections, and never answers.
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        # Each request gets its 503 within the client's 10 s, however long the stall.
        for _ in range(3):
            answer = a.request("POST", "/messages", {"user": "Azin", "text": "while stalled"})
            assert answer.status == 503 and "Redis" in answer.json["error"]
            assert a.request("POST", "/messages/1/like").status == 503
            assert a.request("GET", "/messages").status == 503
            assert a.request("GET", f"/messages?since={before['cursor']}&wait=5").status == 503
        for page in ("/", "/polling", "/websocket"):
            assert a.request("GET", page).status == 200  # pages don't need Redis
        ws.send(json.dumps({"command": "send-message", "message": {"user": "Azin", "text": "by socket"},
                            "ref": "stalled"}))
        error = receive_command(ws, "error")
        assert error["ref"] == "stalled" and "Redis" in error["error"]
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)

    wait_until(lambda: a.request("POST", "/messages", {"user": "Azin", "text": "after"}).status == 201, timeout=15)
    # What got a 503 was never carried out, not even once Redis read it after the stall.
    assert texts([b.get("/messages")]) == ["before", "after"]
    # The broadcaster and the socket open through it all carry on...
    assert "after" in texts(receive_until(ws, lambda frames: "after" in texts(frames)))
    # ...and the listeners too: a long poll on one process wakes when the other stores a message.
    cursor = b.get("/messages")["cursor"]
    woken = {}
    long_poll = threading.Thread(target=lambda: woken.update(
        answer=b.request("GET", f"/messages?since={cursor}&wait=30", timeout=20)))
    long_poll.start()
    time.sleep(0.3)  # let the long poll settle into waiting
    assert a.request("POST", "/messages", {"user": "Azin", "text": "woken"}).status == 201
    long_poll.join()
    assert texts([woken["answer"].json]) == ["woken"]
    assert threads_of(a.process.pid) <= threads_before + 2  # no thread left behind


def test_a_stalled_redis_refuses_the_first_request_within_redis_seconds_and_sockets_hear_of_it_in_status_frames(
        start, tmp_path, open_socket):
    redis_server = start(RedisServer(tmp_path))
    [a] = flask_runs(start, redis_server.url, tmp_path, count=1)  # REDIS_SECONDS 2; flood control runs too
    assert a.request("POST", "/messages", {"user": "Azin", "text": "before"}).status == 201
    watching = open_socket(f"ws://127.0.0.1:{a.port}/ws")
    assert receive_json(watching)["command"] == "messages"

    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        # One deadline for the whole request: flood control and the write
        # each waiting their 2 s would take 4 s, and this client gives up at 3.5.
        answer = a.request("POST", "/messages", {"user": "Azin", "text": "stalled"}, timeout=3.5)
        assert answer.status == 503 and "Redis" in answer.json["error"]
        # A socket that only watches is told, and one that connects now hears it first.
        down = receive_json(watching)
        assert down["command"] == "status" and down["available"] is False and "Redis" in down["error"]
        joining = open_socket(f"ws://127.0.0.1:{a.port}/ws")
        first = receive_json(joining)
        assert first["command"] == "status" and first["available"] is False
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)

    # Back: both hear it, once, and the one that joined gets its history.
    assert receive_json(watching) == {"command": "status", "available": True}
    assert receive_json(joining) == {"command": "status", "available": True}
    assert texts([receive_json(joining)]) == ["before"]
    assert a.request("POST", "/messages", {"user": "Azin", "text": "after"}).status == 201
    for ws in (watching, joining):
        assert texts([receive_json(ws)]) == ["after"]


def fill_until_out_of_memory(client):
    """Give Redis a little more memory than it uses, evicting nothing, and fill it until it refuses."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 1_000_000)
    # A script that has started writing goes on past maxmemory: the fill ends well beyond it.
    fill = client.register_script(
        "for n = 1, 20 do redis.call('SET', 'filler:' .. ARGV[1] .. ':' .. n, string.rep('x', 100000)) end")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for n in range(100):
            fill(args=[n])


# What makes Redis refuse, how to undo it, and what the refusal says.
REFUSALS = {
    "out of memory": (fill_until_out_of_memory, lambda client: client.config_set("maxmemory", 0), "maxmemory"),
    "a read-only replica": (lambda client: client.replicaof("127.0.0.1", free_port()),
                            lambda client: client.replicaof("NO", "ONE"), "read only replica"),
    "a script error": (lambda client: client.set("chat:last_id", "one"),
                       lambda client: client.set("chat:last_id", 1), "not an integer"),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_whatever_redis_refuses_gets_a_503_or_an_error_frame_saying_why_never_a_500_or_a_dropped_socket(
        start, tmp_path, open_socket, refusal):
    refuse, undo, reason = REFUSALS[refusal]
    redis_server = start(RedisServer(tmp_path))
    client = redis_server.client()
    [a] = flask_runs(start, redis_server.url, tmp_path, count=1)  # RATE_LIMIT 10: flood control runs too
    assert a.request("POST", "/messages", {"user": "Azin", "text": "before"}).status == 201
    ws = open_socket(f"ws://127.0.0.1:{a.port}/ws")
    assert texts([receive_json(ws)]) == ["before"]

    refuse(client)
    statuses = []
    for n in range(3):  # every time, not only the first
        answer = a.request("POST", "/messages", {"user": "Azin", "text": "refused"})
        assert answer.status == 503 and reason in answer.json["error"]
        ws.send(json.dumps({"command": "send-message", "message": {"user": "Azin", "text": "refused"},
                            "ref": f"m-{n}"}))
        error = receive_command(ws, "error", skipped=statuses)
        assert error["ref"] == f"m-{n}" and reason in error["error"]
    # The socket hears that the chat can't be changed, once, with Redis's reason.
    if not statuses:
        statuses.append(receive_command(ws, "status"))
    assert statuses[0]["available"] is False and reason in statuses[0]["error"] and len(statuses) == 1
    answer = a.request("GET", "/messages")
    if refusal == "out of memory":  # reads need no memory
        assert answer.status == 200 and texts([answer.json]) == ["before"]
    else:
        assert answer.status in (200, 503)

    undo(client)
    wait_until(lambda: a.request("POST", "/messages", {"user": "Azin", "text": "after"}).status == 201)
    # The socket stayed open through it all, and still carries out what it sends.
    ws.send(json.dumps({"command": "send-message", "message": {"user": "Azin", "text": "by socket"}}))
    frames = receive_until(ws, lambda frames: "by socket" in texts(frames))
    assert texts(frames) == ["after", "by socket"] or texts(frames) == ["after", "after", "by socket"]
    assert {"command": "status", "available": True} in frames  # and now that it works again
    assert texts([a.get("/messages")]) == ["before", "after", "by socket"]
    a.stop()
    assert "Traceback" not in a.output()


def test_the_app_starts_before_redis_and_serves_as_soon_as_redis_is_up(start, tmp_path):
    redis_server = start(RedisServer(tmp_path))
    redis_server.stop()  # not there yet: the app starts first
    [server] = flask_runs(start, redis_server.url, tmp_path, count=1)
    assert server.request("GET", "/websocket").status == 200
    assert server.request("GET", "/messages").status == 503

    redis_server.start()

    wait_until(lambda: server.request("GET", "/messages").status == 200, timeout=15)
    assert server.request("POST", "/messages", {"user": "Azin", "text": "at last"}).status == 201
    with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        assert texts([receive_json(ws)]) == ["at last"]


# The store alone


def test_closing_a_redis_store_wakes_its_listener_instead_of_waiting_for_its_next_poll(shared_redis):
    store = RedisStore(shared_redis.url, poll_seconds=60)
    wait_until(lambda: store._listener.is_alive() and store.epoch)  # listening, and Redis answers
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join(timeout=20)  # far less than the poll: only a wake-up ends it this soon
    assert not closing.is_alive() and not store._listener.is_alive()


def test_the_listener_reads_the_cursor_every_redis_poll_seconds_so_a_silent_flushall_is_noticed(
        shared_redis, redis_store_on):
    store = redis_store_on(shared_redis.url, poll_seconds=0.1)
    store.add("Azin", "Hello!")
    cursor = store.since(0)["cursor"]
    wait_until(lambda: store.wait(cursor - 1, timeout=0))  # the listener has heard of it
    shared_redis.client().flushall()  # publishes nothing
    assert store.wait(cursor, timeout=20)  # a 60 s poll would not wake this in time


class ReplyDropper:
    """A TCP proxy to Redis that can lose the reply to one command, as a dropped connection does."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.drop_next_reply_to = None  # bytes that mark the command whose reply is lost
        self.dropped = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.redis_port))
            threading.Thread(target=self.relay, args=(client, server), daemon=True).start()

    def relay(self, client, server):
        with client, server:
            while True:
                request = client.recv(65536)
                if not request:
                    return
                server.sendall(request)
                reply = server.recv(65536)
                marker = self.drop_next_reply_to
                if marker and marker in request:
                    self.drop_next_reply_to = None
                    self.dropped += 1
                    return  # the command was carried out; its reply never arrives
                client.sendall(reply)


def test_a_write_retried_after_a_lost_reply_is_carried_out_once(shared_redis):
    proxy = ReplyDropper(shared_redis.port)
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        store.add("Azin", "Hello!")
        store.like(1)  # Redis now knows the scripts: the next calls run them at once

        proxy.drop_next_reply_to = b"likes"
        liked = store.like(1)  # carried out, but its reply is lost: redis-py tries again

        assert proxy.dropped == 1
        assert liked["likes"] == 2
        assert store.since(0)["messages"][0]["likes"] == 2
        assert store.cursor == 3

        proxy.drop_next_reply_to = b"a second message"
        store.add("Azin", "a second message")
        assert proxy.dropped == 2
        assert [m["text"] for m in store.since(0)["messages"]] == ["Hello!", "a second message"]
    finally:
        store.close()


def test_max_messages_bounds_what_redis_keeps(shared_redis):
    store = RedisStore(shared_redis.url, max_messages=5)
    try:
        for n in range(12):
            store.add("Azin", f"message {n}")
        client = shared_redis.client()
        assert client.hlen("chat:messages") == 5
        assert client.zcard("chat:changes") == 5
        assert [m["id"] for m in store.since(0)["messages"]] == [8, 9, 10, 11, 12]
    finally:
        store.close()


def test_a_change_leaves_redis_no_copy_of_its_message_and_its_token_only_for_seconds(shared_redis):
    store = RedisStore(shared_redis.url)
    client = shared_redis.client()
    try:
        store.add("Azin", "like me " + "x" * 900)
        for _ in range(200):
            store.like(1)

        # A write's token remembers which message it changed, not the message...
        tokens = client.keys("chat:done:*")
        assert tokens, "each write leaves a token, for a retry of it"
        assert {client.get(token) for token in tokens} == {b"1"}
        # ...and only until no retry of it can come. Then Redis holds the chat itself, nothing more:
        # chat:epoch, run_id, cursor, last_id, oldest_id, messages and changes.
        wait_until(lambda: client.dbsize() == 7, timeout=15)
    finally:
        store.close()


def test_a_before_past_the_newest_id_is_the_newest_page_and_an_empty_page_says_no_more(shared_redis):
    store = RedisStore(shared_redis.url, page_size=3)
    try:
        assert store.before(10, 3) == {**store.since(0), "more": False}  # nothing stored yet
        for n in range(5):
            store.add("Azin", f"m{n}")

        past = store.before(1000, 3)
        assert [m["text"] for m in past["messages"]] == ["m2", "m3", "m4"] and past["more"] is True
        assert past["messages"] == store.since(0)["messages"]
        assert [m["text"] for m in store.before(1000, 2)["messages"]] == ["m3", "m4"]
        assert store.before(1, 3)["messages"] == [] and store.before(1, 3)["more"] is False
    finally:
        store.close()


# Limits per client address, over every process


@pytest.fixture
def redis_store_on():
    """A function that makes a RedisStore on a Redis URL, as one process has; all are closed after the test."""
    made = []

    def make(url, **settings):
        made.append(RedisStore(url, **settings))
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_places_per_address_are_counted_over_every_process(shared_redis, redis_store_on):
    # Two processes' places, as two gunicorn workers would hold them, each with room for 100.
    first, second = (RedisPlaces(redis_store_on(shared_redis.url), "websockets", 100, 3) for _ in range(2))

    assert [first.take("10.0.0.1"), first.take("10.0.0.1"), second.take("10.0.0.1")] == [None] * 3
    assert second.take("10.0.0.1") == "address" and first.take("10.0.0.1") == "address"
    assert second.take("10.0.0.2") is None  # another address has places of its own
    assert RedisPlaces(first.store, "long-polls", 100, 3).take("10.0.0.1") is None  # and so has another kind

    first.give_back("10.0.0.1")
    assert second.take("10.0.0.1") is None
    assert first.take("10.0.0.1") == "address"
    assert first.count == 1 and second.count == 3  # a refusal took nothing, here or in Redis


def test_the_places_of_a_process_that_died_are_freed_when_its_lease_runs_out(shared_redis, redis_store_on):
    dying, living = (RedisPlaces(redis_store_on(shared_redis.url), "websockets", 100, 2) for _ in range(2))
    dying.LEASE = living.LEASE = 1
    assert dying.take("10.0.0.1") is None and dying.take("10.0.0.1") is None
    assert living.take("10.0.0.1") == "address"

    dying.store.close()  # it stops renewing, and never gives its places back

    wait_until(lambda: living.take("10.0.0.1") is None, timeout=10)
    assert living.take("10.0.0.1") is None
    assert living.take("10.0.0.1") == "address"  # the limit holds for the living


def test_a_live_process_keeps_its_places_past_its_lease_and_writes_them_again_after_a_flush(
        shared_redis, redis_store_on):
    holder, other = (RedisPlaces(redis_store_on(shared_redis.url), "websockets", 100, 2) for _ in range(2))
    holder.LEASE = other.LEASE = 2
    client = shared_redis.client()
    assert holder.take("10.0.0.1") is None and holder.take("10.0.0.1") is None
    first_lease = client.zscore("chat:places:websockets", holder.process)

    # Once the first lease would have run out, the holder has renewed it.
    wait_until(lambda: (client.zscore("chat:places:websockets", holder.process) or 0) > first_lease + holder.LEASE)
    assert other.take("10.0.0.1") == "address"

    client.flushall()  # or Redis restarted without its data: the holder writes what it holds again
    wait_until(lambda: client.hget(f"chat:places:websockets:{holder.process}", "10.0.0.1") == b"2")
    assert other.take("10.0.0.1") == "address"


def test_when_redis_cant_count_each_process_still_limits_every_address_on_its_own(
        start, tmp_path, redis_store_on):
    redis_server = start(RedisServer(tmp_path))
    store = redis_store_on(redis_server.url)
    places = RedisPlaces(store, "websockets", 100, 2)
    changes = RedisBucketPerAddress(store, 10)
    assert places.take("10.0.0.1") is None and changes.take("10.0.0.1") == 0
    redis_server.stop()

    # Neither everything let through, nor everything refused.
    assert places.take("10.0.0.1") is None
    assert places.take("10.0.0.1") == "address"
    waits = [changes.take("10.0.0.1") for _ in range(40)]
    assert waits[0] == 0 and waits[-1] > 0
    places.give_back("10.0.0.1")
    assert places.take("10.0.0.1") is None
