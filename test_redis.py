"""One chat across processes and restarts: real `flask run` and gunicorn processes on a real redis-server.

The store, HTTP and WebSocket tests already run on the Redis store too. These
are the ones only Redis has: several processes serving one chat, and Redis
itself going away, restarting or being flushed.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack

import pytest
from websockets.sync.client import connect

from conftest import (FlaskRun, Gunicorn, free_port, receive_json, receive_until, start_redis_server,
                      wait_until)
from redis_store import RedisStore

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads process details from /proc")


# Helpers


def get(url, path):
    """GET `path` and return the decoded JSON."""
    with urllib.request.urlopen(url + path, timeout=35) as response:
        return json.load(response)


def post(url, path, body=None):
    """POST `body` as JSON (or nothing) and return (status, decoded JSON)."""
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def texts(frames):
    """All message texts in a list of answers or `messages` frames, in the order received."""
    return [m["text"] for frame in frames for m in frame["messages"]]


def threads_of(pid):
    """How many threads process `pid` runs."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("Threads:")))


class Processes:
    """Several `flask run` processes on one Redis, stopped at the end of the test."""

    def __init__(self, redis_url, tmp_path, count=2, **settings):
        env = {"FLASK_REDIS_URL": redis_url, **{f"FLASK_{k}": str(v) for k, v in settings.items()}}
        self.servers = [FlaskRun(free_port(), env=env, log=tmp_path / f"flask-{n}.log")
                        for n in range(count)]

    def start(self):
        for server in self.servers:
            server.start()
        return self.servers

    def stop(self):
        for server in self.servers:
            server.stop()


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
def two_processes(shared_redis, tmp_path, request):
    """Two `flask run` processes sharing one Redis; settings from @pytest.mark.config."""
    marker = request.node.get_closest_marker("config")
    processes = Processes(shared_redis.url, tmp_path, **(marker.kwargs if marker else {}))
    yield processes.start()
    processes.stop()


# One chat, several processes


def test_a_post_to_one_process_reaches_sockets_and_long_polls_of_the_other(two_processes):
    a, b = two_processes
    with connect(f"ws://127.0.0.1:{b.port}/ws") as ws:
        start = receive_json(ws)
        long_poll = {}
        waiting = threading.Thread(target=lambda: long_poll.update(get(
            b.url, f"/messages?since={start['cursor']}&epoch={start['epoch']}&wait=20")))
        waiting.start()
        time.sleep(0.3)  # let the long poll settle into waiting

        status, stored = post(a.url, "/messages", {"user": "Azin", "text": "from process A"})

        assert status == 201
        assert texts([receive_json(ws)]) == ["from process A"]
        waiting.join(timeout=10)
        assert texts([long_poll]) == ["from process A"]
        assert long_poll["epoch"] == start["epoch"]


@pytest.mark.config(RATE_LIMIT=0, PAGE_SIZE=1000)  # 300 posts as fast as they go; one page
def test_clients_joining_one_process_while_another_thread_posts_to_both_get_every_message_once(
        two_processes, open_socket):
    a, b = two_processes
    total = 300
    done = threading.Event()

    def post_to_both_in_turn():
        for n in range(total):
            post((a, b)[n % 2].url, "/messages", {"user": "poster", "text": f"m{n}"})
        done.set()

    poster = threading.Thread(target=post_to_both_in_turn)
    poster.start()
    clients = []
    while not done.is_set() and len(clients) < 20:
        # History from A, then the WebSocket of B from A's cursor: a cursor is good everywhere.
        history = get(a.url, "/messages")
        ws = open_socket(f"ws://127.0.0.1:{b.port}/ws?since={history['cursor']}&epoch={history['epoch']}",
                         max_size=None)
        clients.append((history, ws))
    poster.join()
    assert len(clients) >= 5

    for history, ws in clients:
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == total)
        assert texts([history]) + texts(frames) == [f"m{n}" for n in range(total)]
        cursors = [frame["cursor"] for frame in frames]
        assert cursors == sorted(set(cursors)), "cursors must grow on every connection"
        assert cursors[0] >= history["cursor"]


@pytest.mark.config(RATE_LIMIT=0)  # 400 likes from one address
def test_likes_from_many_threads_through_both_processes_are_counted_exactly(two_processes):
    a, b = two_processes
    post(a.url, "/messages", {"user": "Azin", "text": "like me"})

    def like_many(server, vote):
        for _ in range(50):
            assert post(server.url, f"/messages/1/{vote}")[0] == 200

    threads = [threading.Thread(target=like_many, args=(server, vote))
               for server in (a, b) for vote in ("like", "like", "like", "dislike")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for server in (a, b):
        answer = get(server.url, "/messages")
        assert (answer["messages"][0]["likes"], answer["messages"][0]["dislikes"]) == (300, 100)
        assert answer["cursor"] == 1 + 400


def test_flood_control_over_http_is_shared_by_the_processes(two_processes):
    a, b = two_processes
    # RATE_LIMIT 10: a burst of 30, then 10 a second, for one address on all processes together.
    statuses = [post((a, b)[n % 2].url, "/messages", {"user": "loop", "text": f"m{n}"})[0]
                for n in range(60)]
    assert statuses.count(201) < 45  # each process alone would have taken 30
    assert 429 in statuses


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


def test_sockets_spread_over_gunicorn_workers_all_get_every_message(shared_redis, tmp_path):
    # The README's production command with three workers on one Redis.
    server = Gunicorn(env={"FLASK_REDIS_URL": shared_redis.url, "FLASK_RATE_LIMIT": "0"}, options=["-w", "3"],
                      log=tmp_path / "gunicorn.log").start()
    try:
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
    finally:
        server.stop()


def get_or_none(url):
    """GET `url` and return its JSON, or None if nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


# Restarts and faults


def test_restarting_every_app_process_keeps_the_messages_and_the_epoch(two_processes):
    a, b = two_processes
    for n in range(3):
        post(a.url, "/messages", {"user": "Azin", "text": f"before {n}"})
    before = get(b.url, "/messages")

    for server in (a, b):
        server.stop()
    for server in (a, b):
        server.start()

    for server in (a, b):
        after = get(server.url, "/messages")
        assert after["epoch"] == before["epoch"]
        assert after["messages"] == before["messages"]
    with connect(f"ws://127.0.0.1:{a.port}/ws?since={before['cursor']}&epoch={before['epoch']}") as ws:
        first = receive_json(ws)
        assert (first["reset"], first["messages"]) == (False, [])


def test_flushall_resets_clients_and_never_mixes_the_two_histories(two_processes, shared_redis):
    a, b = two_processes
    for n in range(3):
        post(a.url, "/messages", {"user": "Azin", "text": f"old {n}"})
    with connect(f"ws://127.0.0.1:{a.port}/ws") as ws:
        old = receive_json(ws)
        assert texts([old]) == ["old 0", "old 1", "old 2"]

        shared_redis.client().flushall()
        status, new = post(b.url, "/messages", {"user": "Ben", "text": "new 0"})
        assert (status, new["id"]) == (201, 1)  # ids start again, in a new epoch

        frames = receive_until(ws, lambda frames: any(frame["reset"] for frame in frames))
        reset = next(frame for frame in frames if frame["reset"])
        assert reset["epoch"] != old["epoch"]
        assert "old" not in json.dumps(frames)
        assert texts([reset]) in ([], ["new 0"])
        if texts([reset]) == []:  # the flush was seen before the new message was stored
            assert texts(receive_until(ws, lambda frames: texts(frames))) == ["new 0"]

    # A long-polling client from before the flush gets a reset too.
    answer = get(b.url, f"/messages?since={old['cursor']}&epoch={old['epoch']}")
    assert (answer["reset"], texts([answer])) == (True, ["new 0"])


@pytest.mark.parametrize("persistent", [False, True], ids=["no persistence", "appendfsync always"])
def test_when_redis_stops_requests_get_503_and_everything_recovers_when_it_returns(
        tmp_path, persistent, open_socket):
    redis_server = start_redis_server(tmp_path, persistent)
    processes = Processes(redis_server.url, tmp_path)
    a, b = processes.start()
    try:
        for n in range(3):
            assert post(a.url, "/messages", {"user": "Azin", "text": f"before {n}"})[0] == 201
        before = get(a.url, "/messages")
        ws = open_socket(f"ws://127.0.0.1:{b.port}/ws?since={before['cursor']}&epoch={before['epoch']}")
        receive_json(ws)
        threads_before = threads_of(a.process.pid)

        redis_server.process.kill()  # as in a crash: no chance to save anything more
        redis_server.process.wait()
        started = time.monotonic()
        status, answer = post(a.url, "/messages", {"user": "Azin", "text": "while down"})
        assert status == 503 and "Redis" in answer["error"]
        assert time.monotonic() - started < 5
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(b.url, "/messages")
        assert refused.value.code == 503
        with urllib.request.urlopen(a.url + "/polling", timeout=5) as page:
            assert page.status == 200  # pages don't need Redis
        ws.send(json.dumps({"command": "like", "id": 1, "ref": "while-down"}))
        error = receive_json(ws, timeout=10)
        assert error["command"] == "error" and error["ref"] == "while-down"
        assert "Redis" in error["error"]

        redis_server.start()  # same port, same folder
        wait_until(lambda: post(a.url, "/messages", {"user": "Azin", "text": "after"})[0] == 201,
                   timeout=15)
        after = get(b.url, "/messages")
        # A restarted Redis may have lost changes, so it is a new epoch either way...
        assert after["epoch"] != before["epoch"]
        # ...but with every write on disk before it was acknowledged, nothing was lost.
        expected = ["before 0", "before 1", "before 2", "after"] if persistent else ["after"]
        assert texts([after]) == expected

        # The socket open through it all is told to start again, and the broadcaster still works.
        frames = receive_until(ws, lambda frames: any(f.get("reset") for f in frames), timeout=15)
        assert next(f for f in frames if f.get("reset"))["epoch"] == after["epoch"]
        assert post(b.url, "/messages", {"user": "Ben", "text": "and on"})[0] == 201
        assert "and on" in texts(receive_until(ws, lambda frames: "and on" in texts(frames)))
        ws.close()
        assert threads_of(a.process.pid) <= threads_before + 2  # no thread left behind per failure
    finally:
        processes.stop()
        redis_server.stop()


def test_the_app_starts_before_redis_and_serves_as_soon_as_redis_is_up(tmp_path):
    redis_server = start_redis_server(tmp_path)
    redis_server.stop()  # not there yet: the app starts first
    processes = Processes(redis_server.url, tmp_path, count=1)
    [server] = processes.start()
    try:
        with urllib.request.urlopen(server.url + "/websocket", timeout=5) as page:
            assert page.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(server.url, "/messages")
        assert refused.value.code == 503

        redis_server.start()

        wait_until(lambda: get_or_none(server.url + "/messages"), timeout=15)
        assert post(server.url, "/messages", {"user": "Azin", "text": "at last"})[0] == 201
        with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            assert texts([receive_json(ws)]) == ["at last"]
    finally:
        processes.stop()
        redis_server.stop()


# The store alone


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
