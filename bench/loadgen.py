"""The load generator: many WebSocket clients, tagged messages, and what arrived when.

One asyncio process drives every client. Each client is websockets' Sans-I/O
`ClientProtocol` fed straight from asyncio's `data_received` callback, with no
task, queue or future per frame, so one process keeps up with the servers it
measures. run.py prints this process's CPU use next to the server's, to check.

Clients offer no compression (a Sans-I/O client offers no extensions unless
asked), so no server compresses.
"""

import asyncio
import json
import math
import os
import re
import time
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

# Handshakes in flight at once: more would overflow the dev server's listen queue (128).
CONNECT_AT_ONCE = 50
# Clients that send the messages; all clients, senders included, receive them.
SENDERS = 4
# After the last handshake, let the server finish registering everyone before sending.
SETTLE_SECONDS = 0.5
# Stop waiting for deliveries once nothing has arrived for this long...
QUIET_SECONDS = 3
# ...and in any case this long after the last message was sent.
DRAIN_LIMIT_SECONDS = 30
# `fill` sends this many messages at a time, and the next batch once all but the last are stored.
FILL_BATCH = 1000


class Client(asyncio.Protocol):
    """One WebSocket connection that hands each text frame after the first to `on_text(data, now)`."""

    def __init__(self, url, on_text):
        # No size limit: the first frame may hold a long backlog.
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.first_frame = loop.create_future()
        self.closed = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self.flush()

    def data_received(self, data):
        # One clock reading per read: frames that arrived together arrived at the same time.
        now = time.monotonic()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if getattr(event, "opcode", None) is not Opcode.TEXT:
                continue  # the handshake response, pings and close frames need no action here
            if not self.first_frame.done():
                self.first_frame.set_result(json.loads(event.data))
            else:
                self.on_text(event.data, now)
        if self.protocol.handshake_exc and not self.first_frame.done():
            self.first_frame.set_exception(self.protocol.handshake_exc)
        self.flush()  # pongs and the closing handshake's reply

    def eof_received(self):
        self.protocol.receive_eof()
        self.flush()

    def connection_lost(self, exc):
        if not self.first_frame.done():
            self.first_frame.set_exception(ConnectionError("closed before the first frame"))
        self.closed.set_result(None)

    def send_text(self, text):
        """Send one text frame."""
        self.protocol.send_text(text.encode())
        self.flush()

    def close(self):
        """Start the closing handshake; `closed` completes when the server has hung up."""
        if self.protocol.state is State.OPEN:  # else the server has started it, or the connection is gone
            self.protocol.send_close(1000)
            self.flush()

    def flush(self):
        """Write what the protocol has to send; an empty chunk means "close the TCP connection"."""
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            else:
                self.transport.close()


class Tally:
    """For each tagged message: when it was sent, how many clients got it, and when the last one did."""

    def __init__(self, messages):
        # A fresh run id, so messages from an earlier run are never counted.
        self.run = os.urandom(4).hex()
        self.tag = re.compile(rb"~" + self.run.encode() + rb":(\d+)~")
        self.sent_at = [None] * messages
        self.received = [0] * messages
        self.last_at = [None] * messages
        self.delivered = 0
        self.duplicates = 0
        self.frames = 0

    def text(self, seq):
        """Return the text of message `seq`, which carries its tag."""
        return f"load ~{self.run}:{seq}~"

    def listener(self):
        """Return an `on_text` callback for one client, which notices repeats."""
        seen = set()

        def on_text(data, now):
            found = self.tag.findall(data)
            if found:
                self.frames += 1
            # A frame may hold several messages; each one counts.
            for match in found:
                seq = int(match)
                if seq in seen:
                    self.duplicates += 1
                    continue
                seen.add(seq)
                self.received[seq] += 1
                self.last_at[seq] = now
                self.delivered += 1

        return on_text


async def connect(url, on_text=lambda data, now: None):
    """Open one client and wait for its first frame; return (client, first frame)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(url, on_text), parts.hostname, parts.port)
    first = await asyncio.wait_for(client.first_frame, timeout=30)
    return client, first


async def close_all(clients, timeout=10):
    """Close every client politely, and cut off those the server has not let go of in time."""
    if not clients:
        return
    for client in clients:
        client.close()
    await asyncio.wait([client.closed for client in clients], timeout=timeout)
    for client in clients:
        if not client.closed.done():  # a transport that is closed already can't be aborted
            client.transport.abort()


async def latest_cursor(url):
    """Return (cursor, epoch) of the server at `url` now."""
    client, first = await connect(url)
    await close_all([client])
    if first.get("command") != "messages":  # such as an error frame saying that Redis can't be reached
        raise RuntimeError(f"{url} answered {first}")
    return first["cursor"], first["epoch"]


async def run_scenario(urls, server_pids, clients, messages, rate=None, redis_pids=()):
    """Connect `clients`, send `messages` at `rate` per second (or all at once if None); return the results.

    `urls` are the /ws addresses of one chat, served by the processes
    `server_pids`: one process, or several that share a Redis. The CPU use of
    `redis_pids` is reported apart from the servers', as `redis_cpu`.
    """
    # The servers share one chat, so the first one's cursor is good at all of them.
    cursor, epoch = await latest_cursor(urls[0])
    tally = Tally(messages)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def join(url):
        async with gate:
            client, _ = await connect(f"{url}?since={cursor}&epoch={epoch}", tally.listener())
            return client

    # Client i joins server i % len(urls): the clients split evenly, and the
    # first SENDERS clients, who send, take turns over the servers too.
    connected = await asyncio.gather(*(join(urls[i % len(urls)]) for i in range(clients)))
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        cpu_start, busy_start = time.process_time(), busy_seconds()
        server_cpu_start, redis_cpu_start = cpu_seconds(*server_pids), cpu_seconds(*redis_pids)
        start = time.monotonic()
        senders = connected[:SENDERS]
        for seq in range(messages):
            if rate:
                # Open loop: keep the schedule even if the server falls behind,
                # so a slow server shows as latency, not as a lower rate.
                await asyncio.sleep(max(0.0, start + seq / rate - time.monotonic()))
            frame = {"command": "send-message", "message": {"user": "bench", "text": tally.text(seq)}}
            tally.sent_at[seq] = time.monotonic()
            senders[seq % len(senders)].send_text(json.dumps(frame))
        await wait_for_deliveries(tally, messages * clients)
        wall = time.monotonic() - start
        cpu = time.process_time() - cpu_start
        server_cpu = cpu_seconds(*server_pids) - server_cpu_start
        redis_cpu = cpu_seconds(*redis_pids) - redis_cpu_start
        others_cpu = busy_seconds() - busy_start - cpu - server_cpu - redis_cpu
    finally:
        await close_all(connected)
    return summarize(tally, clients, wall, cpu, server_cpu, others_cpu, redis_cpu)


def summarize(tally, clients, wall, cpu, server_cpu, others_cpu, redis_cpu):
    """Turn a finished Tally into the numbers run.py prints."""
    # A message that did not reach every client has no latency: it counts as infinitely late.
    latencies = sorted(
        last - sent if count == clients else math.inf
        for sent, last, count in zip(tally.sent_at, tally.last_at, tally.received)
    )
    arrivals = [last for last in tally.last_at if last is not None]
    # Rates are over the time from the first send to the last delivery.
    span = (max(arrivals) - tally.sent_at[0]) if arrivals else math.inf
    return {
        "delivered": tally.delivered,
        "expected": len(latencies) * clients,
        "duplicates": tally.duplicates,
        "deliveries_per_s": tally.delivered / span,
        "frames_per_s": tally.frames / span,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "generator_cpu": cpu / wall,
        "generator_us_per_delivery": cpu / max(1, tally.delivered) * 1e6,
        "server_cpu": server_cpu / wall,
        "redis_cpu": redis_cpu / wall,
        "others_cpu": max(0.0, others_cpu / wall),
    }


def percentile(sorted_values, p):
    """Return the nearest-rank `p`th percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def cpu_seconds(*pids):
    """Return the user plus system CPU seconds used so far by the processes `pids`, all threads together."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def busy_seconds():
    """Return the CPU seconds all processes on this machine have used so far, all cores together."""
    with open("/proc/stat") as stat:
        user, nice, system = stat.readline().split()[1:4]
    # Interrupt time is left out: it is mostly the benchmark's own network traffic.
    return (int(user) + int(nice) + int(system)) / os.sysconf("SC_CLK_TCK")


async def wait_for_deliveries(tally, expected):
    """Wait until every client has every message, or until deliveries stop."""
    deadline = time.monotonic() + DRAIN_LIMIT_SECONDS
    last_count, last_change = -1, time.monotonic()
    while tally.delivered < expected and time.monotonic() < deadline:
        if tally.delivered != last_count:
            last_count, last_change = tally.delivered, time.monotonic()
        elif time.monotonic() - last_change > QUIET_SECONDS:
            return
        await asyncio.sleep(0.01)


async def fill(url, count):
    """Add `count` messages over one WebSocket as fast as the server takes them; return (cursor, epoch)."""
    cursor, epoch = await latest_cursor(url)
    target = cursor + count
    reached = asyncio.get_running_loop().create_future()
    heard = cursor  # the latest cursor the server has sent

    def on_text(data, now):
        nonlocal heard
        frame = json.loads(data)
        if reached.done():
            return
        if frame["command"] != "messages":
            reached.set_exception(RuntimeError(f"the server refused a message: {frame}"))
            return
        heard = frame["cursor"]
        if heard >= target:
            reached.set_result(None)

    client, _ = await connect(f"{url}?since={cursor}&epoch={epoch}", on_text)
    try:
        for seq in range(count):
            if seq % FILL_BATCH == 0:
                # Stay at most two batches ahead of the server. Our answer to its
                # ping waits behind every frame we sent before it, and the server
                # hangs up on a client whose answer is 25 s late (ping_interval).
                while heard < cursor + seq - FILL_BATCH and not (reached.done() or client.closed.done()):
                    await asyncio.sleep(0.01)
                if reached.done() or client.closed.done():
                    break
            frame = {"command": "send-message", "message": {"user": "filler", "text": f"message {seq}"}}
            client.send_text(json.dumps(frame))
        # If the server hangs up, the target will never come: stop waiting then.
        await asyncio.wait([reached, client.closed], timeout=300, return_when=asyncio.FIRST_COMPLETED)
        if not reached.done():
            why = "closed the connection" if client.closed.done() else "had not stored them all in 300 s"
            raise RuntimeError(f"the server {why} after storing {heard - cursor:,} of {count:,} messages")
        reached.result()  # raises if the server refused a message
    finally:
        await close_all([client])
    return target, epoch


async def measure_idle(url, count, measure, settle=2.0):
    """Open `count` clients that take their first frame and then say nothing; return `measure()` while they are open."""
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def join():
        async with gate:
            client, _ = await connect(url)
            return client

    clients = await asyncio.gather(*(join() for _ in range(count)), return_exceptions=True)
    opened = [client for client in clients if not isinstance(client, BaseException)]
    try:
        if len(opened) < count:
            failure = next(client for client in clients if isinstance(client, BaseException))
            raise RuntimeError(f"only {len(opened):,} of {count:,} clients connected: {failure!r}")
        await asyncio.sleep(settle)  # let the server finish setting each one up
        return measure()
    finally:
        await close_all(opened)
