"""The chat's memory in Redis, shared by every server process pointed at it.

The same interface as `store.Store` (`epoch`, `cursor`, `add`, `like`,
`dislike`, `since`, `before`, `wait`), so the routes and the broadcaster work
unchanged. Read `store.py` first: this is the same idea, spread over processes.

- Every change runs as one Lua script, so it moves the shared cursor by
  exactly one, atomically, whichever process runs it. A retried write (redis-py
  retries when a connection drops, and the first try may have gone through)
  carries the same token, and the script carries out each token only once.
- Each change is published. One listener thread per process hears it and wakes
  that process's waiting long polls and its broadcaster. Publishing is
  at-most-once, so after any reconnect the listener reads the cursor again;
  the cursor, not the publication, says what changed.
- The epoch names the data's life: it changes when the data may have been lost,
  after a FLUSHALL or a restart of Redis (whose `run_id` then changes), never
  when app processes restart.

Keys: chat:messages (hash: id -> message JSON), chat:changes (sorted set: id
scored by the cursor of its last change), chat:cursor, chat:last_id,
chat:oldest_id, chat:epoch, chat:run_id, and chat:done:<token> for a minute
after each write.
"""

import json
import logging
import secrets
import threading
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from store import StoreUnavailable, now
from text_rules import checked_message

log = logging.getLogger(__name__)

KEYS = ["chat:epoch", "chat:run_id", "chat:cursor", "chat:last_id", "chat:oldest_id",
        "chat:messages", "chat:changes"]
CHANNEL = "chat:changes"
# With nothing published for this long, the listener reads the cursor anyway:
# a FLUSHALL publishes nothing.
LISTEN_INTERVAL = 1
# How long a write's token is remembered, so that a retry of it does nothing.
DONE_SECONDS = 60

# Shared by every script: the keys by name, and the epoch, made anew when it is missing.
PRELUDE = """
local epoch_key, run_id_key, cursor_key, last_id_key, oldest_key, messages_key, changes_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

-- ARGV[1] is a fresh epoch and ARGV[2] the server's run_id, for when the epoch
-- is gone: after a FLUSHALL, everything starts again in a new epoch.
local function current_epoch()
  local epoch = redis.call("GET", epoch_key)
  if not epoch then
    epoch = ARGV[1]
    redis.call("SET", epoch_key, epoch)
    redis.call("SET", run_id_key, ARGV[2])
  end
  return epoch
end

-- An answer: epoch, cursor, reset, more, then the messages' JSON.
local function answer(epoch, cursor, reset, more, ids)
  local reply = {epoch, cursor, reset and 1 or 0, more and 1 or 0}
  if #ids > 0 then
    for _, message in ipairs(redis.call("HMGET", messages_key, unpack(ids))) do
      table.insert(reply, message)
    end
  end
  return reply
end

local function newest_page(epoch, reset, page_size)
  local last = tonumber(redis.call("GET", last_id_key) or "0")
  local oldest = tonumber(redis.call("GET", oldest_key) or "1")
  local first = math.max(oldest, last - page_size + 1)
  local ids = {}
  for id = first, last do table.insert(ids, id) end
  local cursor = tonumber(redis.call("GET", cursor_key) or "0")
  return answer(epoch, cursor, reset, first > oldest, ids)
end

-- Record a change to message `id`, tell every process, and remember the
-- write's token (KEYS[8]) with its result.
local function record_change(epoch, id, result)
  local cursor = redis.call("INCR", cursor_key)
  redis.call("ZADD", changes_key, cursor, id)
  redis.call("SET", KEYS[8], result, "EX", ARGV[3])
  redis.call("PUBLISH", "chat:changes", epoch .. " " .. cursor)
  return result
end
"""

# ARGV: fresh epoch, run_id, seconds to remember, user, text, timestamp, max messages.
ADD = PRELUDE + """
local done = redis.call("GET", KEYS[8])
if done then return done end
local epoch = current_epoch()
local id = redis.call("INCR", last_id_key)
local oldest = tonumber(redis.call("GET", oldest_key) or id)
local message = cjson.encode({id = id, user = ARGV[4], text = ARGV[5], timestamp = ARGV[6],
                              likes = 0, dislikes = 0})
redis.call("HSET", messages_key, id, message)
while id - oldest + 1 > tonumber(ARGV[7]) do
  redis.call("HDEL", messages_key, oldest)
  redis.call("ZREM", changes_key, oldest)
  oldest = oldest + 1
end
redis.call("SET", oldest_key, oldest)
return record_change(epoch, id, message)
"""

# ARGV: fresh epoch, run_id, seconds to remember, message id, "likes" or "dislikes".
VOTE = PRELUDE + """
local done = redis.call("GET", KEYS[8])
if done then return done end
local epoch = current_epoch()
local message = redis.call("HGET", messages_key, ARGV[4])
if not message then return false end
message = cjson.decode(message)
message[ARGV[5]] = message[ARGV[5]] + 1
message = cjson.encode(message)
redis.call("HSET", messages_key, ARGV[4], message)
return record_change(epoch, ARGV[4], message)
"""

# ARGV: fresh epoch, run_id, cursor, the client's epoch or "", page size.
SINCE = PRELUDE + """
local epoch = current_epoch()
local since, client_epoch, page_size = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local cursor = tonumber(redis.call("GET", cursor_key) or "0")
local reset = (client_epoch ~= "" and client_epoch ~= epoch) or since > cursor
if reset or (since == 0 and client_epoch == "") then
  return newest_page(epoch, reset, page_size)
end
-- The messages changed after `since`, in the order of their last change.
local changed = redis.call("ZRANGEBYSCORE", changes_key, "(" .. ARGV[3], "+inf",
                           "WITHSCORES", "LIMIT", 0, page_size + 1)
local count = #changed / 2
if count > page_size then
  count = page_size
  cursor = tonumber(changed[2 * page_size])
end
local ids = {}
for i = 1, count do ids[i] = changed[2 * i - 1] end
return answer(epoch, cursor, false, false, ids)
"""

# ARGV: fresh epoch, run_id, before, limit, the client's epoch or "", page size.
BEFORE = PRELUDE + """
local epoch = current_epoch()
if ARGV[5] ~= "" and ARGV[5] ~= epoch then return newest_page(epoch, true, tonumber(ARGV[6])) end
local last = tonumber(redis.call("GET", last_id_key) or "0")
local oldest = tonumber(redis.call("GET", oldest_key) or "1")
local before = math.min(tonumber(ARGV[3]), last + 1)  -- past the newest: the newest page
local first = math.max(oldest, before - tonumber(ARGV[4]))
local ids = {}
for id = first, before - 1 do table.insert(ids, id) end
local cursor = tonumber(redis.call("GET", cursor_key) or "0")
return answer(epoch, cursor, false, first > oldest, ids)
"""

# ARGV: fresh epoch, run_id. Returns the epoch and the cursor.
STATE = PRELUDE + """
return {current_epoch(), tonumber(redis.call("GET", cursor_key) or "0")}
"""

# Run on every new connection, before anything else. ARGV: fresh epoch, run_id.
# A Redis that restarted may have lost the last changes, even with persistence:
# its run_id is new, so the data starts a new epoch and clients reload it.
NEW_RUN = """
if redis.call("GET", KEYS[2]) ~= ARGV[2] then
  redis.call("SET", KEYS[1], ARGV[1])
  redis.call("SET", KEYS[2], ARGV[2])
end
"""


class RedisStore:
    """The chat's messages, counts, cursor and epoch in Redis, for every process that shares it."""

    def __init__(self, url, max_messages=10000, page_size=200):
        self.max_messages = max_messages
        self.page_size = page_size
        self.run_id = ""
        self.redis = redis.Redis.from_url(
            url,
            # Fail fast when Redis is down, so that requests get a 503 within a few seconds.
            socket_connect_timeout=1,
            socket_timeout=2,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            health_check_interval=5,
            redis_connect_func=self._on_connect,
        )
        self._add, self._vote, self._since, self._before, self._state = (
            self.redis.register_script(script) for script in (ADD, VOTE, SINCE, BEFORE, STATE))
        # (epoch, cursor) as last heard by the listener; `wait` waits for it to move.
        self._heard = (None, 0)
        self._changes = threading.Condition()
        self._closed = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="redis-listener", daemon=True)
        self._listener.start()

    @property
    def epoch(self):
        """The name of the data's current life."""
        return self._run(self._state)[0].decode()

    @property
    def cursor(self):
        """The cursor of the latest change."""
        try:
            return int(self.redis.get("chat:cursor") or 0)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StoreUnavailable(f"Redis can't be reached ({error}).") from None

    def add(self, user, text):
        """Store a new message and return it; raise ValueError if user or text is invalid."""
        user, text = checked_message(user, text)
        return json.loads(self._run(self._add, write=True, args=[user, text, now(), self.max_messages]))

    def like(self, message_id):
        """Add one like and return the message; raise KeyError if there is no such message."""
        return self._count(message_id, "likes")

    def dislike(self, message_id):
        """Add one dislike and return the message; raise KeyError if there is no such message."""
        return self._count(message_id, "dislikes")

    def since(self, cursor, epoch=None):
        """Return what changed after `cursor`, as `Store.since` does."""
        return self._answer(self._run(self._since, args=[cursor, epoch or "", self.page_size]))

    def before(self, message_id, limit, epoch=None):
        """Return the newest `limit` messages older than `message_id`, as `Store.before` does."""
        return self._answer(self._run(self._before, args=[message_id, limit, epoch or "", self.page_size]))

    def wait(self, cursor, timeout):
        """Block until a change after `cursor` is heard of, or `timeout` seconds pass; return True if one was."""
        with self._changes:
            epoch = self._heard[0]  # None until the listener has heard from Redis
            return self._changes.wait_for(
                lambda: epoch not in (None, self._heard[0]) or self._heard[1] > cursor, timeout)

    def close(self):
        """Stop the listener and close the connections to Redis."""
        self._closed.set()
        self._listener.join(timeout=LISTEN_INTERVAL + 3)
        self.redis.close()

    def _count(self, message_id, field):
        reply = self._run(self._vote, write=True, args=[message_id, field])
        if reply is None:
            raise KeyError(message_id)
        return json.loads(reply)

    def _run(self, script, write=False, args=()):
        """Run a script with the keys, a fresh epoch and the run_id; translate Redis being down."""
        keys = KEYS + [f"chat:done:{secrets.token_hex(8)}"] if write else KEYS
        try:
            if not self.run_id:
                self.redis.ping()  # connects, and so learns the run_id (see _on_connect)
            prefix = [secrets.token_hex(8), self.run_id] + ([DONE_SECONDS] if write else [])
            return script(keys=keys, args=prefix + list(args))
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StoreUnavailable(f"Redis can't be reached, so the chat can't be read or changed "
                                   f"right now ({error}). Try again in a moment.") from None

    def _answer(self, reply):
        epoch, cursor, reset, more, *messages = reply
        return {
            "messages": sorted((json.loads(m) for m in messages if m), key=lambda m: m["id"]),
            "cursor": int(cursor),
            "epoch": epoch.decode(),
            "reset": bool(reset),
            "more": bool(more),
        }

    def _on_connect(self, connection):
        """On each new connection to Redis: check whether Redis restarted, before any other command."""
        connection.on_connect_check_health(check_health=True)
        connection.send_command("INFO", "server")
        info = connection.read_response()
        self.run_id = next(line.split(b":")[1].strip().decode()
                           for line in info.splitlines() if line.startswith(b"run_id:"))
        connection.send_command("EVAL", NEW_RUN, 2, KEYS[0], KEYS[1], secrets.token_hex(8), self.run_id)
        connection.read_response()

    def _hear(self, epoch, cursor):
        with self._changes:
            if (epoch, cursor) != self._heard:
                self._heard = (epoch, cursor)
                self._changes.notify_all()

    def _hear_state(self):
        """Hear the epoch and cursor that Redis holds now (the listener's own errors are Redis's)."""
        epoch, cursor = self._state(keys=KEYS, args=[secrets.token_hex(8), self.run_id])
        self._hear(epoch.decode(), int(cursor))

    def _listen(self):
        """Hear every change any process publishes, and wake `wait`; forever, through Redis going away."""
        down_since = None
        while not self._closed.is_set():
            try:
                with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(CHANNEL)
                    # What was published while we were away is lost: read the cursor instead.
                    self._hear_state()
                    if down_since is not None:
                        log.warning("Redis is back after %.1f s.", time.monotonic() - down_since)
                        down_since = None
                    self._listen_on(pubsub)
            except redis.RedisError as error:
                if down_since is None:
                    log.warning("Can't reach Redis (%s); trying again every second.", error)
                    down_since = time.monotonic()
                self._closed.wait(1)

    def _listen_on(self, pubsub):
        last_heard = time.monotonic()
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=LISTEN_INTERVAL)
            if message:
                epoch, cursor = message["data"].decode().split()
                self._hear(epoch, int(cursor))
                last_heard = time.monotonic()
            elif time.monotonic() - last_heard >= LISTEN_INTERVAL:
                self._hear_state()
                last_heard = time.monotonic()


class RedisBucketPerAddress:
    """Flood control for HTTP kept in Redis, so that spreading requests over processes gains nothing."""

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

    def __init__(self, client, rate):
        self.rate = rate
        self.script = client.register_script(self.SCRIPT)

    def take(self, address):
        """Take a token for `address` and return 0, or return how many seconds until there is one."""
        if not self.rate:
            return 0
        try:
            return float(self.script(keys=[f"chat:rate:{address}"], args=[self.rate, 3 * self.rate]))
        except (redis.ConnectionError, redis.TimeoutError):
            return 0  # the change itself will get a 503 that says why
