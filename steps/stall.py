"""A client that stops reading, to watch the obvious loop over the sockets freeze.

    python3 steps/stall.py ws://127.0.0.1:5000/ws

It opens three WebSockets to the chat at that address: one that never reads a
byte (a laptop on bad Wi-Fi), one that sends messages as fast as the server
takes them, and a watcher that reads everything. Each second it prints how
many messages the watcher has received. Against a broadcast that loops over
the sockets (`flask --app bench/naive_app run`, then ws://127.0.0.1:5000/loop/ws)
the count stops for good once the stalled client's buffers are full. Against
step 3 or 4 it goes on to the end, and so it does against the full app, started
with FLASK_RATE_LIMIT=0 (its flood control would stop the sender first).
Standard library only.
"""

import base64
import json
import os
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

TOTAL = 4000  # messages to send: enough to fill a stalled client's buffers many times over
TEXT = "x" * 900  # each message this long, so the buffers fill sooner
USER = f"stall {os.getpid()}"  # the watcher counts only this run's messages


class Client:
    """A WebSocket client in a few lines: the handshake, masked frames out, frames in."""

    def __init__(self, url, receive_buffer=None):
        address = urlsplit(url)
        self.socket = socket.socket()
        if receive_buffer:  # a small buffer fills sooner: the freeze comes quicker
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.socket.connect((address.hostname, address.port or 80))
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(f"GET {address.path}?{address.query} HTTP/1.1\r\nHost: {address.netloc}\r\n"
                            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += self.socket.recv(1)
        if not answer.startswith(b"HTTP/1.1 101"):
            sys.exit(f"The server refused the WebSocket: {answer.decode(errors='replace').splitlines()[0]}")
        self.sending = threading.Lock()  # the sender's frames and the reader's pongs share the socket

    def send(self, payload, opcode=0x1):
        """Send one masked frame (a client must mask): text unless told otherwise."""
        mask = os.urandom(4)
        length = len(payload)
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length) if length < 126 else (
            struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length))
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        with self.sending:
            self.socket.sendall(header + mask + masked)

    def receive(self):
        """Read one frame; return (opcode, payload)."""
        first, second = self.exactly(2)
        length = second & 0x7F
        if length >= 126:
            length = int.from_bytes(self.exactly(2 if length == 126 else 8), "big")
        return first & 0x0F, self.exactly(length)

    def exactly(self, count):
        data = b""
        while len(data) < count:
            chunk = self.socket.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data


def read_everything(client, counter):
    """Read frames for ever, counting the messages they hold; answer pings, as every client must."""
    try:
        while True:
            opcode, payload = client.receive()
            if opcode == 0x9:
                client.send(payload, opcode=0xA)
            elif opcode == 0x8:
                return
            elif opcode == 0x1 and (frame := json.loads(payload)).get("command") == "messages":
                counter[0] += sum(message["user"] == USER for message in frame["messages"])
    except (ConnectionError, OSError):
        return


def main(url):
    stalled = Client(url, receive_buffer=4096)  # connects, then never reads a byte
    watcher, sender = Client(url), Client(url)
    received, echoed = [0], [0]
    threading.Thread(target=read_everything, args=(watcher, received), daemon=True).start()
    threading.Thread(target=read_everything, args=(sender, echoed), daemon=True).start()

    def send_all():
        for n in range(TOTAL):
            frame = {"command": "send-message", "message": {"user": USER, "text": f"{n} {TEXT}"}}
            sender.send(json.dumps(frame).encode())

    threading.Thread(target=send_all, daemon=True).start()
    last, still_since = -1, time.monotonic()
    while received[0] < TOTAL:
        time.sleep(1)
        print(f"the watcher has received {received[0]} of {TOTAL} messages")
        if received[0] != last:
            last, still_since = received[0], time.monotonic()
        elif time.monotonic() - still_since > 5:
            sys.exit(f"Frozen at {received[0]} of {TOTAL}: one client stopped reading, and everyone waits for it.")
    print(f"All {TOTAL} arrived, though one client never read a byte: no one waited for it.")
    stalled.socket.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:5000/ws")
