"""Step 3's broadcast against the app's: what a thread per socket, each following the store, costs.

In steps/3-websocket/app.py each socket has a thread that follows the store
from the socket's own cursor, and encodes each frame for that socket alone. In
the app, broadcaster.py builds one frame per round and hands the same bytes to
every socket that is up to date. This script runs each in a process of its own
and measures three things:

1. Encodes: how often a `messages` frame is encoded as JSON, and built as a
   WebSocket frame, per message sent: 100 and 1000 clients getting 20 messages
   a second, then a burst of 200 messages to 1000 clients. (bench/steps_server.py
   serves each, counting.)
2. Threads: how many threads each server process has (from /proc/<pid>/status)
   with 1000 clients connected, and with clients that stopped reading, once
   their buffers are full, and 10 s later.
3. Speed: the burst of 200 messages to 1000 clients, bench/loadgen.py's burst
   scenario, against `flask --app steps/3-websocket/app run` and the app's
   `flask run`, taking turns; with --rounds, several times.

Run from the project root, in the project's virtual environment (Linux: it
reads /proc):

    .venv/bin/python bench/steps.py               # about 3 minutes
    .venv/bin/python bench/steps.py --rounds 3    # three bursts against each, about 5 minutes

It starts its servers on free ports of 127.0.0.1 and stops them at the end,
also after an error or Ctrl-C. Their logs go to a temporary folder whose name
is printed. Compare the servers within one run, not with another machine's run.
"""

import argparse
import asyncio
import datetime
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import loadgen
from naive import Inbox, Servers, bursts, figure, median_result, server_side, unread_bytes
from run import prepare_for_many_sockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

COUNTING = {"step 3": [sys.executable, os.path.join(BENCH, "steps_server.py"), "step3", "{port}"],
            "app": [sys.executable, os.path.join(BENCH, "steps_server.py"), "app", "{port}"]}
PLAIN = {"step 3": [sys.executable, "-m", "flask", "--app", "steps/3-websocket/app", "run", "--port", "{port}"],
         "app": [sys.executable, "-m", "flask", "run", "--port", "{port}"]}

# Part 1: (title, clients, messages, messages per second or None for all at once)
ENCODE_RUNS = [("100 clients, 20 msg/s", 100, 100, 20), ("1000 clients, 20 msg/s", 1000, 100, 20),
               ("1000 clients, burst of 200", 1000, 200, None)]
# Part 2
IDLE_CLIENTS = 1000
STALLED_CLIENTS = 50
STALLED_RECEIVE_BUFFER = 4096  # bytes, set before connecting, so the kernel keeps it small
TEXT = "x" * 900
LATER_SECONDS = 10  # the app hangs up on a client that has taken nothing for 5 s
# Part 3: naive.py's burst (BURST_CLIENTS, BURST_MESSAGES)


def main():
    """Run the three parts and print what they measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the burst against each server")
    args = parser.parse_args()

    prepare_for_many_sockets()
    # Step 3 has no epoch: loadgen's `latest_cursor` expects one.
    loadgen.latest_cursor = latest_cursor

    print(f"Step 3 against the app's broadcaster, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when it started")
    logs = tempfile.mkdtemp(prefix="chat-steps-")
    print(f"Server logs: {logs}")

    print("\n== 1. Encodes: `messages` frames encoded as JSON, and built as WebSocket frames, per message sent ==")
    print(f"{'server':<8} {'run':<28} {'messages':>8} {'delivered/expected':>20} {'JSON':>7} {'frames':>7}"
          f" {'JSON/msg':>9} {'/msg/client':>12}")
    for name, command in COUNTING.items():
        with Servers(logs) as servers:
            server = servers.start(f"{name} counting", command)
            idle = asyncio.run(warm_up(server))
            for title, clients, messages, rate in ENCODE_RUNS:
                result = asyncio.run(encodes(server, clients, messages, rate))
                asyncio.run(settle(server, idle))
                print(f"{name:<8} {title:<28} {messages:>8} {result['delivered']:>10,}/{result['expected']:<9,}"
                      f" {result['json']:>7,} {result['frames']:>7,} {result['json'] / messages:>9.2f}"
                      f" {result['json'] / messages / clients:>12.3f}", flush=True)
    print("JSON: `messages` frames encoded as JSON while the messages were sent and delivered; frames: WebSocket")
    print("frames built from them. A frame may hold several messages, so a server that falls behind encodes less.")

    print("\n== 2. Threads: the server process's threads (/proc/<pid>/status) ==")
    print(f"Each server in turn: idle; with {IDLE_CLIENTS} clients; then with {STALLED_CLIENTS} clients that stopped"
          f" reading ({STALLED_RECEIVE_BUFFER}-byte receive buffers),")
    print(f"beside one that reads and one that sends {len(TEXT)}-character messages until their buffers are full,"
          f" and {LATER_SECONDS} s later.")
    for name, command in PLAIN.items():
        with Servers(logs) as servers:
            result = asyncio.run(threads(servers.start(f"{name} threads", command)))
        print_threads(name, result)

    with Servers(logs) as servers:
        chats = {}
        for name, command in PLAIN.items():
            server = servers.start(f"{name} burst", command)
            chats[name] = {**server.chat("/ws"), "server": server}
        results = asyncio.run(settled_bursts(chats, args.rounds))
    step3, app = (median_result(results[name]) for name in ("step 3", "app"))
    print()
    figure(f"{app['deliveries_per_s'] / step3['deliveries_per_s']:.1f} x",
           "as many messages a second reached the clients from the app as from step 3"
           + (" (medians)." if args.rounds > 1 else "."))
    figure(f"{step3['p99_ms'] / app['p99_ms']:.1f} x",
           "as long for step 3 as for the app until 99% of the messages had reached every client (p99).")


# Part 1: encodes


async def encodes(server, clients, messages, rate):
    """Connect `clients`, send `messages` at `rate` a second (None: all at once); count the encodes meanwhile."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    tally = loadgen.Tally(messages)
    connected = await connect_clients(url, clients, tally.listener)
    try:
        await asyncio.sleep(loadgen.SETTLE_SECONDS)
        before = counts(server)
        senders = connected[:loadgen.SENDERS]
        start = time.monotonic()
        for seq in range(messages):
            if rate:
                await asyncio.sleep(max(0.0, start + seq / rate - time.monotonic()))
            tally.sent_at[seq] = time.monotonic()
            senders[seq % len(senders)].send_text(send_message_frame(tally.text(seq)))
        await loadgen.wait_for_deliveries(tally, messages * clients)
        after = counts(server)
    finally:
        await loadgen.close_all(connected)
    return {"delivered": tally.delivered, "expected": messages * clients,
            "json": after["json"] - before["json"], "frames": after["frames"] - before["frames"]}


def counts(server):
    """Ask bench/steps_server.py how many `messages` frames it has encoded and built so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/bench/counts", timeout=30) as answer:
        return json.load(answer)


# Part 2: threads


async def threads(server):
    """Count the server's threads: idle, with IDLE_CLIENTS, and with STALLED_CLIENTS whose buffers are full."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    result = {"idle": await warm_up(server)}

    connected = await connect_clients(url, IDLE_CLIENTS, lambda: (lambda data, now: None))
    await asyncio.sleep(loadgen.SETTLE_SECONDS)
    result["with clients"] = thread_count(server.pid)
    await loadgen.close_all(connected)
    await settle(server, result["idle"])

    stalled = await asyncio.to_thread(lambda: [stalled_client(server.port) for _ in range(STALLED_CLIENTS)])
    reader_inbox = Inbox(f"~{os.urandom(4).hex()}:".encode())  # what naive.py's reader counts
    reader, _ = await loadgen.connect(f"{url}?since={(await latest_cursor(url))[0]}", reader_inbox.on_text)
    sender, _ = await loadgen.connect(url)
    try:
        # Twice what the kernel lets a server's socket buffer: each stalled client's buffers must be full.
        total = 2 * int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) // len(TEXT)
        for seq in range(total):
            sender.send_text(send_message_frame(f"{reader_inbox.tag.decode()}{seq} {TEXT}"))
            if seq % 100 == 0:
                await asyncio.sleep(0)  # let the echoes in
        result["reader got all"] = await wait_for(lambda: reader_inbox.count >= total, timeout=120)
        result["stalled"] = thread_count(server.pid)
        result["stalled bytes"] = sum(waiting_bytes(server.port, client) for client in stalled) / len(stalled)
        result["held then"] = sum(server_side(server.port, client.getsockname()[1])[0] for client in stalled)
        await asyncio.sleep(LATER_SECONDS)
        result["later"] = thread_count(server.pid)
        result["held later"] = sum(server_side(server.port, client.getsockname()[1])[0] for client in stalled)
    finally:
        await loadgen.close_all([reader, sender])
        for client in stalled:
            client.close()
    return result


def stalled_client(port):
    """Open a WebSocket by hand, with a small receive buffer, and read nothing after the handshake."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RECEIVE_BUFFER)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:  # a byte at a time, so as to read nothing after the handshake
        chunk = client.recv(1)
        if not chunk:
            raise ConnectionError("the server closed during the handshake")
        response += chunk
    return client


def waiting_bytes(server_port, client):
    """Bytes the server has sent `client` that it has not read: in its receive buffer, or the server's send buffer."""
    return unread_bytes(client) + server_side(server_port, client.getsockname()[1])[1]


def thread_count(pid):
    """Return how many threads process `pid` has now."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


async def wait_for(condition, timeout):
    """Wait until `condition()` holds, or `timeout` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def print_threads(name, result):
    """Print what part 2 counted for one server, a figure and its meaning on each line."""
    print(f"\n{name}:")
    per_client = (result["with clients"] - result["idle"]) / IDLE_CLIENTS
    figure(f"{result['idle']:,}", "threads when idle (after a first connection came and went).")
    figure(f"{result['with clients']:,}", f"threads with {IDLE_CLIENTS:,} clients connected:"
                                         f" {per_client:.1f} for each client.")
    figure(f"{result['stalled']:,}", f"threads with {STALLED_CLIENTS} stalled clients and the reader and sender,"
                                     f" when the reader had every message; {result['held then']} stalled clients"
                                     f" were connected, with {result['stalled bytes'] / 2**20:.1f} MB each unread.")
    figure(f"{result['later']:,}", f"threads {LATER_SECONDS} s later, when {result['held later']} of the"
                                   f" {STALLED_CLIENTS} stalled clients were still connected.")
    figure("yes" if result["reader got all"] else "NO", "did the reader get every message meanwhile?")


# Part 3: the burst


async def settled_bursts(chats, rounds):
    """naive.py's bursts, each starting once the server is back to its idle threads; return {name: [result]}."""
    idle = {name: await warm_up(chat["server"]) for name, chat in chats.items()}

    async def settle_first(name):
        await settle(chats[name]["server"], idle[name])

    return await bursts(chats, rounds, part=3, before_each=settle_first)


# Shared


async def warm_up(server):
    """Connect and leave once, to start what starts with a first connection; return the threads when idle."""
    await loadgen.close_all([(await loadgen.connect(f"ws://127.0.0.1:{server.port}/ws"))[0]])
    await asyncio.sleep(1)
    return thread_count(server.pid)


async def settle(server, idle, timeout=120):
    """Wait until the server is back to its `idle` threads: every client of the last run has gone."""
    if not await wait_for(lambda: thread_count(server.pid) <= idle, timeout):
        print(f"  (the server still had {thread_count(server.pid) - idle} more threads than when idle"
              f" after {timeout} s)")


async def connect_clients(url, clients, make_listener):
    """Connect `clients` from the latest cursor, a few handshakes at a time; each gets `make_listener()`."""
    cursor, epoch = await latest_cursor(url)
    gate = asyncio.Semaphore(loadgen.CONNECT_AT_ONCE)

    async def join():
        async with gate:
            return (await loadgen.connect(f"{url}?since={cursor}&epoch={epoch}", make_listener()))[0]

    return await asyncio.gather(*(join() for _ in range(clients)))


async def latest_cursor(url):
    """Return (cursor, epoch) of the server at `url` now; step 3 has no epoch, so it is then empty."""
    client, first = await loadgen.connect(url)
    await loadgen.close_all([client])
    return first["cursor"], first.get("epoch", "")


def send_message_frame(text):
    """Return a `send-message` frame as JSON text."""
    return json.dumps({"command": "send-message", "message": {"user": "bench", "text": text}})


if __name__ == "__main__":
    main()
