"""Limits that keep one client from hurting the others: flood control, and places per address.

Flood control is a token bucket for each client address: it gets `rate` tokens
a second, keeps at most `burst` of them, and spends one on each change it asks
for, over HTTP or any of its WebSockets. So a person clicking fast is never
refused, and a runaway loop gets `rate` changes a second, however many
connections it opens or reopens. A WebSocket's other frames (pings, pongs,
pieces of a message) spend from the same bucket (`frame_pace`): past it, the
socket is read no faster than the bucket refills.

Places are counted per address too: no address holds more than its share of
the server's WebSockets or waiting long polls, whatever is left for the others.
"""

import math
import threading
import time
from collections import Counter
from functools import partial

from flask import current_app, request


class TokenBucket:
    """Allows `rate` actions a second on average (`rate` > 0), and bursts of up to `burst`: three seconds' worth."""

    def __init__(self, rate):
        self.rate = rate
        self.burst = 3 * rate
        self.tokens = self.burst
        self.updated = time.monotonic()

    def take(self):
        """Take a token and return 0, or return how many seconds until there is one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return (1 - self.tokens) / self.rate

    def is_full(self):
        """True if the bucket has refilled completely, so forgetting it changes nothing."""
        return self.tokens + (time.monotonic() - self.updated) * self.rate >= self.burst


class BucketPerAddress:
    """A token bucket for each client address (`rate` 0: no limit), forgetting those that have filled up again."""

    # Past this many addresses, full buckets are dropped, so memory stays bounded.
    FORGET_AFTER = 10000

    def __init__(self, rate):
        self.rate = rate
        self.buckets = {}
        self.lock = threading.Lock()

    def take(self, address):
        """Take a token for `address` and return 0, or return how many seconds until there is one."""
        if not self.rate:
            return 0
        with self.lock:
            if len(self.buckets) > self.FORGET_AFTER:
                self.buckets = {a: b for a, b in self.buckets.items() if not b.is_full()}
            bucket = self.buckets.setdefault(address, TokenBucket(self.rate))
            return bucket.take()


def too_many_changes(rate, wait):
    """The refusal a client gets over HTTP and WebSocket alike, for a person to read."""
    return f"Too many changes: at most {rate} a second. Try again in {math.ceil(wait)} s."


class FrameAllowance:
    """One WebSocket's share of its address's flood allowance, and whether it keeps flooding."""

    def __init__(self, buckets, address):
        self.buckets = buckets
        self.address = address
        self.refused_in_a_row = 0

    def take(self):
        """Spend a token of the address; return 0, or how many seconds until there is one."""
        wait = self.buckets.take(self.address)
        self.refused_in_a_row = self.refused_in_a_row + 1 if wait else 0
        return wait

    @property
    def flooding(self):
        """True once a burst's worth of frames in a row were refused: the client isn't listening."""
        return self.refused_in_a_row > 3 * self.buckets.rate


def frame_pace():
    """For a WebSocket handshake: a function that spends a token of the client's address (connection.py's `pace`)."""
    return partial(current_app.extensions["chat"].changes_per_address.take, request.remote_addr)


class Places:
    """At most `total` of something at once (open WebSockets, waiting long polls), `per_address` each."""

    def __init__(self, total, per_address):
        self.total = total
        self.per_address = per_address
        self.taken = Counter()  # address -> places it holds
        self.count = 0  # places taken in all
        self.lock = threading.Lock()

    def take(self, address):
        """Take a place for `address`; return None, or who is full: "server" or "address"."""
        with self.lock:
            if self.count >= self.total:
                return "server"
            if self.taken[address] >= self.per_address:
                return "address"
            self.taken[address] += 1
            self.count += 1
            return None

    def give_back(self, address):
        """Give back a place that `address` took."""
        with self.lock:
            self.count -= 1
            self.taken[address] -= 1
            if not self.taken[address]:
                del self.taken[address]
