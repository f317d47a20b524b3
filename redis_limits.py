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

from limits import BucketPerAddress, Places
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


class RedisPlaces(Places):
    """`limits.Places`, with each address's share counted over every process that shares Redis.

    The server's total stays this process's own: it is about this process's
    threads and open files. Each process writes the places it holds in a hash
    of its own, under a lease it renews every few seconds while it holds any.
    A process that dies without giving its places back stops renewing, and its
    places are forgotten when the lease runs out. Each renewal writes the hash
    anew from this process's count, so that within seconds Redis is right
    again after a restart, a flush, or a give-back it missed.
    """

    LEASE = 10  # seconds
    # KEYS: every process's lease, this process's hash. ARGV: per address, address, process, lease.
    TAKE = """
    local now = redis.call("TIME")
    now = tonumber(now[1]) + tonumber(now[2]) / 1e6
    redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)  -- processes that stopped renewing
    local held = 0
    for _, process in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
      held = held + tonumber(redis.call("HGET", KEYS[1] .. ":" .. process, ARGV[2]) or "0")
    end
    if held >= tonumber(ARGV[1]) then return 0 end
    redis.call("HINCRBY", KEYS[2], ARGV[2], 1)
    redis.call("EXPIRE", KEYS[2], ARGV[4])
    redis.call("ZADD", KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
    return 1
    """
    # KEYS: this process's hash. ARGV: address.
    GIVE_BACK = """
    if redis.call("HINCRBY", KEYS[1], ARGV[1], -1) <= 0 then redis.call("HDEL", KEYS[1], ARGV[1]) end
    """
    # KEYS: every process's lease, this process's hash. ARGV: process, lease, then address, places, ...
    RENEW = """
    local now = redis.call("TIME")
    redis.call("DEL", KEYS[2])
    for i = 3, #ARGV, 2 do redis.call("HSET", KEYS[2], ARGV[i], ARGV[i + 1]) end
    redis.call("EXPIRE", KEYS[2], ARGV[2])
    redis.call("ZADD", KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1e6 + tonumber(ARGV[2]), ARGV[1])
    """

    def __init__(self, store, name, total, per_address):
        super().__init__(total, per_address)
        self.store = store
        self.process = secrets.token_hex(8)
        self.keys = [f"chat:places:{name}", f"chat:places:{name}:{self.process}"]
        self.take_script, self.give_back_script, self.renew_script = (
            store.redis.register_script(script) for script in (self.TAKE, self.GIVE_BACK, self.RENEW))
        self.renewer = None  # the thread that renews the lease while this process holds places
        # This process's count and Redis's change together: a renewal that wrote
        # the count between the two would count a place twice, or not at all.
        self.counting = threading.Lock()

    def take(self, address):
        """Take a place for `address`; return None, or who is full: "server" or "address"."""
        with self.counting:
            refusal = super().take(address)  # this process's room, and the address's share of it here
            if refusal:
                return refusal
            with self.lock:
                if self.renewer is None:
                    self.renewer = threading.Thread(target=self._renew, name="redis-places-lease", daemon=True)
                    self.renewer.start()
            try:
                if not self.store.call(self.take_script, keys=self.keys,
                                       args=[self.per_address, address, self.process, self.LEASE]):
                    super().give_back(address)
                    return "address"
            except StoreUnavailable:
                pass  # Redis can't count: this process's own count has to do
            return None

    def give_back(self, address):
        """Give back a place that `address` took."""
        with self.counting:
            super().give_back(address)
            try:
                self.store.call(self.give_back_script, keys=self.keys[1:], args=[address])
            except StoreUnavailable:
                pass  # the next renewal writes the right count

    def _renew(self):
        """Renew the lease every third of it, until this process holds no place or the store closes."""
        while not self.store.closed.wait(self.LEASE / 3):
            with self.counting:
                with self.lock:
                    if not self.taken:  # its hash is empty: the lease can simply run out
                        self.renewer = None
                        return
                    places = [item for address_places in self.taken.items() for item in address_places]
                try:
                    self.store.call(self.renew_script, keys=self.keys, args=[self.process, self.LEASE, *places])
                except StoreUnavailable:
                    pass  # try again at the next renewal
