"""Flood control and places per client address, counted in Redis for every process that shares it.

limits.py counts in one process's memory. With several processes (gunicorn's
workers, several machines), a client could spread its changes or its sockets
over them and get each process's allowance; these classes count in Redis
instead, with the same interface.

When Redis can't count (down, stalled, out of memory), each falls back on its
own process's count: neither letting everything through nor refusing everything.
"""

import secrets
import threading
from collections import Counter

from limits import BucketPerAddress
from store import StoreUnavailable


class RedisBucketPerAddress:
    """A token bucket for each client address, shared by every process on one Redis."""

    SCRIPT = """
    local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
    local now = redis.call("TIME")
    now = tonumber(now[1]) + tonumber(now[2]) / 1e6
    local bucket = redis.call("HMGET", KEYS[1], "tokens", "updated")
    local tokens = math.min(burst, tonumber(bucket[1] or burst) + (now - tonumber(bucket[2] or now)) * rate)
    local wait = 0
    if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
    redis.call("HSET", KEYS[1], "tokens", tokens, "updated", now)
    redis.call("EXPIRE", KEYS[1], math.ceil(burst / rate) + 1)
    return tostring(wait)
    """

    def __init__(self, store, rate):
        self.store = store
        self.rate = rate
        self.script = store.redis.register_script(self.SCRIPT)
        self.in_this_process = BucketPerAddress(rate)

    def take(self, address):
        """Take a token for `address` and return 0, or return how many seconds until there is one."""
        if not self.rate:
            return 0
        try:
            return float(self.store.call(self.script, keys=[f"chat:rate:{address}"],
                                         args=[self.rate, 3 * self.rate]))
        except StoreUnavailable:
            return self.in_this_process.take(address)


class RedisSlotsPerAddress:
    """At most `limit` slots per client address (open WebSockets, say), counted over every process.

    Each process writes what it holds in a hash of its own, under a lease that
    it renews every few seconds while it holds anything. A process that dies
    without giving its slots back stops renewing, and its slots are forgotten
    when the lease runs out. Each renewal also writes the hash anew from this
    process's own count, so that Redis is put right within seconds after a
    restart, a flush, or a give-back it missed.
    """

    LEASE = 10  # seconds
    # KEYS: the processes' leases, this process's hash. ARGV: limit, address, process, lease.
    TAKE = """
    local limit, address = tonumber(ARGV[1]), ARGV[2]
    local now = redis.call("TIME")
    now = tonumber(now[1]) + tonumber(now[2]) / 1e6
    redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)  -- processes that stopped renewing
    local held = 0
    for _, process in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
      held = held + tonumber(redis.call("HGET", KEYS[1] .. ":" .. process, address) or "0")
    end
    if held >= limit then return 0 end
    redis.call("HINCRBY", KEYS[2], address, 1)
    redis.call("EXPIRE", KEYS[2], ARGV[4])
    redis.call("ZADD", KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
    return 1
    """
    # KEYS: this process's hash. ARGV: address.
    GIVE_BACK = """
    if redis.call("HINCRBY", KEYS[1], ARGV[1], -1) <= 0 then redis.call("HDEL", KEYS[1], ARGV[1]) end
    """
    # KEYS: the processes' leases, this process's hash. ARGV: process, lease, then address, count, ...
    RENEW = """
    redis.call("DEL", KEYS[2])
    for i = 3, #ARGV, 2 do redis.call("HSET", KEYS[2], ARGV[i], ARGV[i + 1]) end
    redis.call("EXPIRE", KEYS[2], ARGV[2])
    local now = redis.call("TIME")
    redis.call("ZADD", KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1e6 + tonumber(ARGV[2]), ARGV[1])
    """

    def __init__(self, store, limit, name):
        self.store = store
        self.limit = limit
        self.process = secrets.token_hex(8)
        self.keys = [f"chat:slots:{name}", f"chat:slots:{name}:{self.process}"]
        self.take_script, self.give_back_script, self.renew_script = (
            store.redis.register_script(script) for script in (self.TAKE, self.GIVE_BACK, self.RENEW))
        self.held = Counter()  # address -> slots this process holds: the truth Redis is renewed from
        self.lock = threading.Lock()
        self.renewer = None  # the thread that renews the lease, while this process holds slots
        self.closed = threading.Event()

    def take(self, address):
        """Take a slot for `address`; return False if it holds `limit` already, in all processes."""
        with self.lock:
            self.held[address] += 1
            if self.renewer is None:
                self.renewer = threading.Thread(target=self._renew, name="redis-slot-lease", daemon=True)
                self.renewer.start()
        try:
            taken = self.store.call(self.take_script, keys=self.keys,
                                    args=[self.limit, address, self.process, self.LEASE])
        except StoreUnavailable:
            taken = self.held[address] <= self.limit  # Redis can't count: this process alone does
        if not taken:
            self._forget(address)
        return bool(taken)

    def give_back(self, address):
        """Give back a slot that `address` took."""
        self._forget(address)
        try:
            self.store.call(self.give_back_script, keys=self.keys[1:], args=[address])
        except StoreUnavailable:
            pass  # the next renewal writes the right count

    def close(self):
        """Stop renewing the lease: the slots this process holds are forgotten when it runs out."""
        self.closed.set()

    def _forget(self, address):
        with self.lock:
            self.held[address] -= 1
            if self.held[address] <= 0:
                del self.held[address]

    def _renew(self):
        """Renew the lease every third of it, until this process holds nothing more."""
        while not self.closed.wait(self.LEASE / 3):
            with self.lock:
                if not self.held:  # its hash is empty: the lease can simply run out
                    self.renewer = None
                    return
                pairs = [item for address_count in self.held.items() for item in address_count]
            try:
                self.store.call(self.renew_script, keys=self.keys, args=[self.process, self.LEASE, *pairs])
            except StoreUnavailable:
                pass  # try again at the next renewal
