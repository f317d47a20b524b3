"""What a Redis that stalls, and a flood of likes, cost the app on the Redis store.

Run from the project root, in the project's virtual environment (redis-server installed):

    .venv/bin/python bench/redis_faults.py                  # a 60 s stall and 20,000 likes under flask run
    .venv/bin/python bench/redis_faults.py --gunicorn       # the same under gunicorn -w 4 --threads 100
    .venv/bin/python bench/redis_faults.py --stall 10 --likes 2000   # a quick run

It starts a redis-server of its own and the app on it (RATE_LIMIT=0), then:

- stops redis-server with SIGSTOP for `--stall` seconds: it still accepts
  connections and never answers. Every half second, it sends a POST, a like, a
  GET, a long poll, a page, a like over a WebSocket opened before, and a burst
  of 40 POSTs at once, and prints how long each took and what it got. After
  SIGCONT, it prints how soon a POST succeeds, and how many of the changes that
  got a 503 were carried out all the same;
- likes one message `--likes` times, and prints Redis's used_memory before,
  right after and 5 s after, per change.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(method, url, body=None, timeout=60):
    """Send a request; return (status or exception name, seconds taken)."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        status = type(error).__name__
    return status, time.monotonic() - started


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def answers(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def like_over(ws):
    """Send a like over the WebSocket; return (what came back, seconds taken)."""
    started = time.monotonic()
    try:
        ws.send(json.dumps({"command": "like", "id": 1, "ref": "bench"}))
        while json.loads(ws.recv(timeout=60))["command"] != "error":
            pass
        outcome = "error frame"
    except TimeoutError:
        outcome = "nothing"
    except ConnectionClosed:
        outcome = "socket closed"
    return outcome, time.monotonic() - started


def stall(url, ws_url, redis_process, seconds):
    """SIGSTOP Redis for `seconds`, timing requests all along; then SIGCONT and time the recovery."""
    assert call("POST", url + "/messages", {"user": "bench", "text": "before"})[0] == 201
    kinds = {
        "POST": lambda: call("POST", url + "/messages", {"user": "bench", "text": "during"}),
        "like": lambda: call("POST", url + "/messages/1/like"),
        "GET": lambda: call("GET", url + "/messages"),
        "GET wait=5": lambda: call("GET", url + "/messages?since=1&wait=5"),
        "page /polling": lambda: call("GET", url + "/polling"),
    }
    results = {}
    with connect(ws_url) as ws, ThreadPoolExecutor(60) as pool:
        ws.recv(timeout=5)
        os.kill(redis_process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while time.monotonic() - stopped < seconds - 3:
                futures = [(kind, pool.submit(request)) for kind, request in kinds.items()]
                futures += [("burst of 40 POSTs", pool.submit(kinds["POST"])) for _ in range(40)]
                results.setdefault("like over WebSocket", []).append(like_over(ws))
                for kind, future in futures:
                    results.setdefault(kind, []).append(future.result())
                time.sleep(0.5)
        finally:
            os.kill(redis_process.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: call("POST", url + "/messages", {"user": "bench", "text": "after"})[0] == 201, 60,
             "a POST after SIGCONT")
    recovered = time.monotonic() - resumed
    # Under gunicorn, each worker recovers on its own: wait until 50 GETs in a row succeed.
    wait_for(lambda: all(call("GET", url + "/messages")[0] == 200 for _ in range(50)), 60, "every GET succeeding")
    all_recovered = time.monotonic() - resumed

    print(f"Redis stopped for {seconds:.0f} s:")
    for kind, answers in results.items():
        statuses = ", ".join(sorted({str(status) for status, _ in answers}))
        took = [seconds for _, seconds in answers]
        print(f"  {kind:22} {len(answers):5} answered {statuses:12} in at most {max(took):.2f} s, "
              f"{sum(took) / len(took):.2f} s on average")
    print(f"  after SIGCONT, the first POST to succeed came {recovered:.2f} s later; "
          f"50 GETs in a row succeeded {all_recovered:.2f} s later")
    with urllib.request.urlopen(url + "/messages?since=0", timeout=10) as response:
        stored = [m["text"] for m in json.load(response)["messages"]]
    print(f"  changes answered 503 but carried out anyway: {stored.count('during')}")


def memory(url, client, likes):
    """Like one message `likes` times; print what Redis holds before, right after, and 5 s later."""
    assert call("POST", url + "/messages", {"user": "bench", "text": "like me " + "x" * 200})[0] == 201
    with urllib.request.urlopen(url + "/messages", timeout=10) as response:
        message_id = json.load(response)["messages"][-1]["id"]
    before, keys_before = client.info("memory")["used_memory"], client.dbsize()
    like = f"{url}/messages/{message_id}/like"
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: call("POST", like)[0], range(likes)))
    took = time.monotonic() - started
    after, keys_after = client.info("memory")["used_memory"], client.dbsize()
    time.sleep(5)
    later, keys_later = client.info("memory")["used_memory"], client.dbsize()
    print(f"{likes} likes ({statuses.count(200)} answered 200) in {took:.1f} s, {likes / took:.0f} a second:")
    print(f"  Redis used_memory {before / 1e6:.2f} MB before, {after / 1e6:.2f} MB right after "
          f"({(after - before) / likes:.0f} bytes per change), {later / 1e6:.2f} MB 5 s later "
          f"({(later - before) / likes:.1f} bytes per change); keys {keys_before}, {keys_after}, {keys_later}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stall", type=float, default=60, help="seconds Redis is stopped (0: no stall)")
    parser.add_argument("--likes", type=int, default=20000, help="likes in the memory run (0: no run)")
    parser.add_argument("--gunicorn", action="store_true", help="serve with gunicorn -w 4 --threads 100")
    options = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")

    folder = tempfile.mkdtemp(prefix="redis-faults-")
    redis_port, port = free_port(), free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=redis_port)
    wait_for(lambda: answers(client), 10, "redis-server starting")
    env = {**os.environ, "FLASK_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "FLASK_RATE_LIMIT": "0"}
    if options.gunicorn:
        command = [sys.executable, "-m", "gunicorn", "-w", "4", "--threads", "100", "-b", f"127.0.0.1:{port}",
                   "app:create_app()"]
    else:
        command = [sys.executable, "-m", "flask", "run", "--port", str(port)]
    app = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: call("GET", url + "/", timeout=1)[0] == 200, 30, "the app starting")
        print(f"The app under {'gunicorn -w 4 --threads 100' if options.gunicorn else 'flask run'}, "
              f"on redis-server {client.info('server')['redis_version']}, {os.cpu_count()} cores.")
        if options.stall:
            stall(url, f"ws://127.0.0.1:{port}/ws", redis_server, options.stall)
        if options.likes:
            client.flushall()
            memory(url, client, options.likes)
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)  # never leave a stopped redis-server behind
        app.terminate()
        app.wait(timeout=20)
        redis_server.terminate()
        redis_server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
