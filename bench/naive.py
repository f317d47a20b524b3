"""Why not just loop over the sockets? The broadcast a learner writes first, measured against the app's.

bench/naive_app.py holds two broadcasts written with flask-sock as a learner
would: (a) the route that receives a message sends it to every socket in a
loop, under a lock; (b) each client has a queue and a thread that sends what is
queued. This script runs each in a process of its own, and the chat app with
`flask run` (FLASK_RATE_LIMIT=0), and measures two things:

1. One client stops reading. Beside it, one client reads everything and one
   sends 200-character messages as fast as they come back to it. Variant (a)
   runs until the reader has received nothing for 5 s; then the script looks
   at why. The app runs as long, and on until it has hung up on the client
   that stopped.
2. Speed: a burst of 200 messages, sent at once by 4 of 1000 clients, which
   must all receive every message (bench/loadgen.py's burst scenario), against
   (b), (a) and the app in turn; with --rounds, several times, taking turns.

Run from the project root, in the project's virtual environment (Linux: it
reads /proc):

    .venv/bin/python bench/naive.py               # 2 to 3 minutes
    .venv/bin/python bench/naive.py --rounds 3    # medians of three bursts each, about 6 minutes

Most of the time goes to variant (b), which takes a minute or more to deliver
the burst.

It starts its servers on free ports of 127.0.0.1 and stops them at the end,
also after an error or Ctrl-C. Their logs go to a temporary folder whose name
is printed. The figures depend on the machine: compare the servers within one
run, not with another machine's run.
"""

import argparse
import asyncio
import datetime
import fcntl
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from urllib.parse import urlsplit

import loadgen
from run import free_port, prepare_for_many_sockets, wait_until_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# naive_app.py takes its port as its only argument; the app is started as bench/run.py starts it.
NAIVE_APP = [sys.executable, os.path.join(BENCH, "naive_app.py"), "{port}"]
CHAT_APP = [sys.executable, "-m", "flask", "run", "--port", "{port}"]

# Part 1: one client stops reading.
TEXT_LENGTH = 200
IN_FLIGHT = 50  # the sender sends while fewer of its own messages than this have yet to come back to it
QUIET_SECONDS = 5  # no delivery for this long: deliveries have stopped
FREEZE_LIMIT = 60  # seconds to wait for variant (a) to freeze before giving up
NEWCOMER_WAIT = 3  # seconds a client connecting after the freeze waits for its first frame
MORE_FRAMES, MORE_SECONDS = 20_000, 3  # what the sender tries to write after the freeze
HANG_UP_LIMIT = 30  # seconds the app may take to hang up on the stalled client, after the reader's time

# Part 2: the burst.
BURST_CLIENTS, BURST_MESSAGES = 1000, 200
BURST_DRAIN_LIMIT = 180  # seconds to wait for the last deliveries after the last send


def main():
    """Run both parts and print what they measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the burst against each server")
    args = parser.parse_args()

    prepare_for_many_sockets()

    print(f"Naive broadcasts against the chat app, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} when it started")
    logs = tempfile.mkdtemp(prefix="chat-naive-")
    print(f"Server logs: {logs}")

    with Servers(logs) as servers:
        loop = servers.start("loop", NAIVE_APP)
        app = servers.start("app, one stalled client", CHAT_APP)
        print_part_one_header()
        frozen = asyncio.run(stop_reading(loop, "/loop/ws"))
        print_frozen(frozen)
        kept_going = asyncio.run(stop_reading(app, "/ws", run_for=frozen["elapsed"]))
        print_kept_going(kept_going, frozen["elapsed"])

    with Servers(logs) as servers:
        chats = {
            "threads (b)": servers.start("threads", NAIVE_APP).chat("/threads/ws"),
            "loop (a)": servers.start("loop, burst", NAIVE_APP).chat("/loop/ws"),
            "app": servers.start("app, burst", CHAT_APP).chat("/ws"),
        }
        results = asyncio.run(bursts(chats, args.rounds))
    print_ratios(results)


# Part 1: one client stops reading


class Inbox:
    """What one client has received of this run's messages: how many, and when the last came."""

    def __init__(self, tag):
        self.tag = tag
        self.count = 0
        self.last_at = None

    def on_text(self, data, now):
        """Count the messages in a frame; the app's frames may hold several."""
        found = data.count(self.tag)
        if found:
            self.count += found
            self.last_at = now


async def stop_reading(server, path, run_for=None):
    """One client stops reading, one reads, one sends; return what they saw, and the server with them.

    Without `run_for`, send until the reader has received nothing for
    QUIET_SECONDS, then look at the frozen server. With it, send for `run_for`
    seconds, and on until the server has hung up on the client that stopped.
    """
    run = os.urandom(4).hex()
    reader, echo = Inbox(f"~{run}:".encode()), Inbox(f"~{run}:".encode())
    url = f"ws://127.0.0.1:{server.port}{path}"
    stalled = await asyncio.to_thread(StalledClient, server.port, path)
    clients = []
    try:
        clients.append((await loadgen.connect(url, reader.on_text))[0])
        sender = (await loadgen.connect(url, echo.on_text))[0]
        clients.append(sender)
        await asyncio.sleep(loadgen.SETTLE_SECONDS)

        start = time.monotonic()
        sent, reader_count_then, next_look = 0, None, start
        while True:
            now = time.monotonic()
            if now >= next_look:
                stalled.look(now)
                next_look = now + 0.05
            if run_for is None:
                if now - (reader.last_at or start) > QUIET_SECONDS or now - start > FREEZE_LIMIT:
                    break
            elif now - start >= run_for:
                if reader_count_then is None:
                    reader_count_then = reader.count
                if stalled.hung_up_at or now - start > run_for + HANG_UP_LIMIT:
                    break
            if sent - echo.count < IN_FLIGHT:
                sender.send_text(send_message_frame(f"~{run}:{sent}~ ".ljust(TEXT_LENGTH, "x")))
                sent += 1
                if sent % 20 == 0:
                    await asyncio.sleep(0)  # let the replies in
            else:
                await asyncio.sleep(0.001)

        result = {
            "elapsed": time.monotonic() - start,
            "reader_count": reader.count,
            "reader_count_then": reader_count_then,
            "last_delivery": (reader.last_at or start) - start,
            "stalled_bytes": stalled.waiting,
            "stalled_last_progress": stalled.last_growth - start,
            "hung_up": None if stalled.hung_up_at is None else stalled.hung_up_at - start,
        }
        if run_for is None:
            result.update(await look_at_frozen_server(server, url, sender, run))
            stalled.look(time.monotonic())
            result["hung_up"] = None if stalled.hung_up_at is None else stalled.hung_up_at - start
            result["reader_count_after"] = reader.count
            result["looked_for"] = time.monotonic() - start
        return result
    finally:
        await loadgen.close_all(clients, timeout=2)
        stalled.socket.close()


class StalledClient:
    """A WebSocket opened by hand and never read after its handshake: a client that stopped reading.

    Its socket buffers are left at the system's defaults. `look()` notes how
    many bytes wait for it, and whether the server has hung up on it.
    """

    def __init__(self, port, path):
        self.server_port = port
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:  # a byte at a time, so as to read nothing after the handshake
            chunk = self.socket.recv(1)
            if not chunk:
                raise ConnectionError(f"the server at port {port} closed during the handshake")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"the server at port {port} refused the handshake: {response[:100]!r}")
        self.waiting = 0  # the most bytes seen waiting for it: unread here, or unsent in the server
        self.last_growth = time.monotonic()  # when that last grew
        self.hung_up_at = None

    def look(self, now):
        """Note how many bytes wait for this client, and whether the server still holds the connection."""
        established, unsent = server_side(self.server_port, self.socket.getsockname()[1])
        if not established:
            self.hung_up_at = self.hung_up_at or now
        elif unread_bytes(self.socket) + unsent > self.waiting:
            self.waiting, self.last_growth = unread_bytes(self.socket) + unsent, now


async def look_at_frozen_server(server, url, sender, run):
    """After the freeze: can a new client join, where are the server's threads, and does it still read the sender?"""
    # A newcomer: does it even get its first frame?
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, newcomer = await loop.create_connection(lambda: loadgen.Client(url, lambda data, now: None),
                                               parts.hostname, parts.port)
    # Aborted below, it will fail with "closed before the first frame": that is expected, not an error.
    newcomer.first_frame.add_done_callback(lambda first_frame: first_frame.cancelled() or first_frame.exception())
    try:
        await asyncio.wait_for(asyncio.shield(newcomer.first_frame), NEWCOMER_WAIT)
        newcomer_joined = True
    except asyncio.TimeoutError:
        newcomer_joined = False

    threads = await asyncio.to_thread(dump_threads, server)

    # The sender writes more: does anything still take its frames off the socket?
    memory_before = resident_memory(server.pid)
    start = time.monotonic()
    written = 0
    while written < MORE_FRAMES and time.monotonic() - start < MORE_SECONDS:
        if sender.transport.get_write_buffer_size() < 65536:
            sender.send_text(send_message_frame(f"~{run}:more{written}~ ".ljust(TEXT_LENGTH, "x")))
            written += 1
            if written % 100 == 0:
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.005)
    while sender.transport.get_write_buffer_size() and time.monotonic() - start < MORE_SECONDS:
        await asyncio.sleep(0.01)
    await asyncio.sleep(1)  # for the server to read what its socket still holds
    newcomer.transport.abort()
    return {
        "newcomer_joined": newcomer_joined,
        "threads_in_send": threads["in_send"],
        "threads_at_lock": threads["at_lock"],
        "more_written": written,
        "more_unsent": sender.transport.get_write_buffer_size(),
        "more_seconds": time.monotonic() - start - 1,
        "memory_growth": resident_memory(server.pid) - memory_before,
    }


def send_message_frame(text):
    """Return a `send-message` frame as JSON text."""
    return json.dumps({"command": "send-message", "message": {"user": "bench", "text": text}})


def unread_bytes(sock):
    """Return how many bytes wait in `sock`'s receive buffer."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def server_side(server_port, client_port):
    """Return (whether the server holds the connection still, bytes in its send buffer), from /proc/net/tcp."""
    with open("/proc/net/tcp") as table:
        next(table)  # the column names
        for line in table:
            fields = line.split()
            local_port, remote_port = (int(address.split(":")[1], 16) for address in fields[1:3])
            if (local_port, remote_port) == (server_port, client_port):
                # State 01 is ESTABLISHED; after the server shuts the socket down it is FIN_WAIT1 or later.
                return fields[3] == "01", int(fields[4].split(":")[0], 16)
    return False, 0


def resident_memory(pid):
    """Return the bytes of memory process `pid` holds (its resident set)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def dump_threads(server, wait=1.0):
    """Have naive_app.py write every thread's stack to its log; count those in a send and those at the lock."""
    with open(server.log_path, "rb") as log:
        log.seek(0, os.SEEK_END)
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(wait)
        dump = log.read().decode(errors="replace")
    # faulthandler writes "Thread 0x... (most recent call first):", then one
    # "  File ..., line N in function" line per frame, the innermost first.
    stacks = [block.splitlines()[1:] for block in dump.split("hread 0x")[1:]]
    in_send = sum(
        any("simple_websocket" in frame and frame.endswith(" in send") for frame in stack)
        and any("naive_app.py" in frame for frame in stack)
        for stack in stacks
    )
    # A thread waiting for a lock waits inside C: its innermost Python frame is the `with lock:` line.
    at_lock = sum(bool(stack) and "naive_app.py" in stack[0] for stack in stacks)
    return {"in_send": in_send, "at_lock": at_lock}


def print_part_one_header():
    """Say what part 1 does."""
    print("\n== 1. One client stops reading ==")
    print("Each server gets three clients: one that never reads after its handshake (default socket buffers),")
    print(f"one that reads everything, and one that sends {TEXT_LENGTH}-character messages, each as soon as fewer")
    print(f"than {IN_FLIGHT} of its own are on their way back to it.")


def print_frozen(result):
    """Print what happened to variant (a), a figure and its meaning on each line."""
    print(f"\nloop (a), run until the reader had received nothing for {QUIET_SECONDS} s:")
    if result["last_delivery"] + QUIET_SECONDS >= FREEZE_LIMIT:
        figure(f"{result['reader_count']:,} msgs", f"reached the reader: deliveries did not stop in {FREEZE_LIMIT} s.")
        return
    frame_bytes = len(json.dumps(sample_messages_frame()).encode()) + 4  # and 4 bytes of frame header
    more_bytes = result["more_written"] * len(send_message_frame("x" * TEXT_LENGTH))
    figure(f"{result['reader_count']:,} msgs",
           f"reached the reader, the last {result['last_delivery']:.1f} s after the first send. Then nothing:"
           f" {result['looked_for']:.0f} s after the first send it still had {result['reader_count_after']:,}.")
    figure(f"{result['stalled_bytes'] / 1024:,.0f} KB",
           "waited for the stalled client when it froze, unread in its receive buffer or in the server's"
           f" send buffer: about {result['stalled_bytes'] / frame_bytes:,.0f} frames of {frame_bytes} bytes.")
    figure(f"{result['threads_in_send']} thread",
           "of the server's was stuck in client.send() inside the loop, holding the lock (from a stack dump);"
           f" {result['threads_at_lock']} more waited for the lock.")
    figure("yes" if result["newcomer_joined"] else "no",
           f"did a client that connected after the freeze get its first frame within {NEWCOMER_WAIT} s?"
           " (Its route waits for the lock.)")
    taken = "all" if not result["more_unsent"] else f"all but {result['more_unsent']:,} bytes"
    figure(f"{result['more_written']:,} frames",
           f"more ({more_bytes / 2**20:.1f} MB) did the sender write in {result['more_seconds']:.1f} s, {taken} taken"
           f" off its socket; the server's memory grew {result['memory_growth'] / 2**20:.1f} MB. simple-websocket's"
           " own thread still reads frames, for a route thread that never comes back.")
    figure("no" if result["hung_up"] is None else f"{result['hung_up']:.1f} s",
           f"was the stalled client hung up, {result['looked_for']:.0f} s after the first send?")


def print_kept_going(result, run_for):
    """Print what happened to the app, a figure and its meaning on each line."""
    print(f"\napp (flask run), run as long ({run_for:.1f} s), and on until it hung up on the stalled client:")
    still = result["elapsed"] - result["last_delivery"] < 1
    figure(f"{result['reader_count_then']:,} msgs",
           f"reached the reader in the same {run_for:.1f} s, and {result['reader_count']:,} by the end"
           f" ({result['elapsed']:.1f} s)" + (", when it was still receiving." if still else "."))
    if result["hung_up"] is None:
        figure("never", f"did the app hang up on the stalled client, in {result['elapsed']:.0f} s.")
        return
    figure(f"{result['hung_up']:.1f} s",
           "after the first send, the app hung up on the stalled client. Its buffers had taken"
           f" {result['stalled_bytes'] / 1024:,.0f} KB, the last byte {result['stalled_last_progress']:.1f} s"
           " after the first send.")
    figure(f"{result['hung_up'] - result['stalled_last_progress']:.1f} s",
           "passed between the stalled client's last byte of progress and the hang-up: the app allows 5 s.")


def figure(value, meaning):
    """Print one measured figure and what it means."""
    print(f"  {value:>14}  {meaning}")


def sample_messages_frame():
    """Return a `messages` frame like those variant (a) sends in part 1."""
    message = {"id": 1000, "user": "bench", "text": "x" * TEXT_LENGTH, "timestamp": "2026-01-01T00:00:00.000Z",
               "likes": 0, "dislikes": 0}
    return {"command": "messages", "messages": [message], "cursor": 1000, "epoch": "0" * 16,
            "reset": False, "more": False}


# Part 2: the burst


async def bursts(chats, rounds, part=2, before_each=None):
    """Run the burst `rounds` times against each chat, taking turns; return {name: [result]}.

    `before_each(name)`, if given, is awaited before each run against chat `name`.
    """
    # loadgen gives up 30 s after the last send. A thread per client can need
    # longer than that to deliver the burst to 1000 clients on a busy machine:
    # wait, so that every server's p99 is measured rather than infinite.
    loadgen.DRAIN_LIMIT_SECONDS = max(loadgen.DRAIN_LIMIT_SECONDS, BURST_DRAIN_LIMIT)
    print(f"\n== {part}. Burst: {BURST_MESSAGES} messages sent at once by {loadgen.SENDERS} senders;"
          f" all {BURST_CLIENTS} clients must receive each ==")
    print(f"{'server':<12} {'':<8} {'delivered/expected':>24} {'deliveries/s':>13} {'p99 ms':>9}"
          f" {'srv CPU':>8} {'gen CPU':>8} {'others':>7}")
    results = {name: [] for name in chats}
    for round_number in range(1, rounds + 1):
        for name, chat in chats.items():
            if before_each:
                await before_each(name)
            result = await loadgen.run_scenario(
                urls=chat["urls"], server_pids=chat["server_pids"],
                clients=BURST_CLIENTS, messages=BURST_MESSAGES, rate=None)
            results[name].append(result)
            print(burst_row(name, f"round {round_number}", result), flush=True)
    if rounds > 1:
        for name, runs in results.items():
            print(burst_row(name, "median", median_result(runs)))
    return results


def burst_row(name, label, result):
    """Return one line of the burst table."""
    delivered, expected = round(result["delivered"]), round(result["expected"])
    return (f"{name:<12} {label:<8} {f'{delivered:,}/{expected:,} ({delivered / expected:.0%})':>24}"
            f" {result['deliveries_per_s']:>13,.0f} {result['p99_ms']:>9,.1f}"
            f" {result['server_cpu']:>8.0%} {result['generator_cpu']:>8.0%} {result['others_cpu']:>7.0%}")


def median_result(results):
    """Return the median of each number across rounds."""
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def print_ratios(results):
    """Print how many times faster the app is than each variant, from the medians."""
    medians = {name: median_result(runs) for name, runs in results.items()}
    app, loop, threads = medians["app"], medians["loop (a)"], medians["threads (b)"]
    print("\nRatios" + (" of the medians:" if len(results["app"]) > 1 else ":"))
    for name, naive in (("threads (b)", threads), ("loop (a)", loop)):
        figure(f"{app['deliveries_per_s'] / naive['deliveries_per_s']:.1f} x",
               f"as many messages a second reached the clients from the app as from {name}.")
        figure(f"{naive['p99_ms'] / app['p99_ms']:.1f} x",
               f"as long for {name} as for the app until 99% of the messages had reached every client (p99).")
    figure(f"{loop['deliveries_per_s'] / threads['deliveries_per_s']:.1f} x",
           "as many messages a second from loop (a) as from threads (b): a thread per client costs more than it saves.")
    print("srv CPU near 100% means that server went as fast as it could (Python runs one thread at a time);")
    print("gen CPU near 100% while srv CPU is lower means the load generator set the pace, so that server's")
    print("deliveries/s is a floor, and a ratio in its favour is too. others: the rest of the machine.")
    paced = [f"{name} round {number}" for name, runs in results.items()
             for number, result in enumerate(runs, 1) if result["generator_cpu"] > 0.8 > result["server_cpu"]]
    print("Runs paced by the generator (gen CPU > 80% > srv CPU): " + (", ".join(paced) or "none"))


# Servers


class Server:
    """One server process started by `Servers`."""

    def __init__(self, process, port, log_path):
        self.process = process
        self.pid = process.pid
        self.port = port
        self.log_path = log_path

    def chat(self, path):
        """Return what loadgen.run_scenario needs to drive this server's WebSocket at `path`."""
        return {"urls": [f"ws://127.0.0.1:{self.port}{path}"], "server_pids": [self.pid]}


class Servers:
    """Server processes, each on a free port, all stopped when the `with` block ends."""

    def __init__(self, logs):
        self.logs = logs
        self.servers = []

    def start(self, name, command):
        """Start `command` (with {port} filled in) from the project root, wait until it listens; return a Server."""
        port = free_port()
        # The senders here send far faster than a person: the app's flood control would refuse them.
        # And every client comes from 127.0.0.1, which may otherwise hold only 100 sockets.
        env = dict(os.environ, FLASK_MAX_MESSAGES="200000", FLASK_RATE_LIMIT="0",
                   FLASK_MAX_SOCKETS_PER_ADDRESS="100000")
        for name_to_drop in ("FLASK_DEBUG", "FLASK_REDIS_URL", "FLASK_APP"):
            env.pop(name_to_drop, None)  # a reloader's second process, a shared Redis, another app
        log_path = os.path.join(self.logs, name.replace(" ", "_").replace(",", "") + ".log")
        with open(log_path, "w") as log:
            process = subprocess.Popen([part.format(port=port) for part in command], cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        server = Server(process, port, log_path)
        self.servers.append(server)
        wait_until_listening(port, process, log_path)
        return server

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for server in self.servers:
            server.process.terminate()
        for server in self.servers:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


if __name__ == "__main__":
    main()
