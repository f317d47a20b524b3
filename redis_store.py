"""The chat's memory in Redis, shared by every server process pointed at it.

The same interface as `store.Store` (`epoch`, `cursor`, `add`, `like`,
`dislike`, `since`, `before`, `wait`), so the routes and the broadcaster work
unchanged. Read `store.py` first: this is the same idea, spread over processes.

- Every change runs as one Lua script, so it moves the shared cursor by
  exactly one, atomically, whichever process runs it. A retried write (redis-py
  retries when a connection drops, and the first try may have gone through)
  carries the same token, and the script carries out each token only once.
  Nor does it carry out a write that reaches it too late (a Redis that was
  stopped, say): by then the sender has answered 503.
- A Redis that fails, stalls or refuses costs a request at most `REDIS_SECONDS`,
  however many calls it makes: each call times out after that, only dropped
  connections are retried, and once one call finds Redis unreachable, every
  request is told so at once until the listener hears from Redis again. Every
  error becomes `StoreUnavailable`, which the routes answer with 503 or an
  `error` frame, and `unavailable` says why, for the broadcaster's `status` frames.
- Each change is published. One listener thread per process hears it and wakes
  that process's waiting long polls and its broadcaster. With nothing published,
  it reads the cursor every `REDIS_POLL_SECONDS` (a FLUSHALL publishes nothing). Publishing is
  at-most-once, so after any reconnect the listener reads the cursor again;
  the cursor, not the publication, says what changed.
- The epoch names the data's life: it changes when the data may have been lost,
  after a FLUSHALL or a restart of Redis (whose `run_id` then changes), never
  when app processes restart.

Keys: chat:messages (hash: id -> message JSON), chat:changes (sorted set: id
scored by the cursor of its last change), chat:cursor, chat:last_id,
chat:oldest_id, chat:epoch, chat:run_id, and chat:done:<token> (a message
id) for the second or two in which each write could be retried.
"""

import json
import logging
import secrets
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from store import ENVELOPE_BYTES, StoreUnavailable, now
from text_rules import checked_message

log = logging.getLogger(__name__)

KEYS = ["chat:epoch", "chat:run_id", "chat:cursor", "chat:last_id", "chat:oldest_id",
        "chat:messages", "chat:changes"]
CHANNEL = "chat:changes"

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

-- Take the messages of `ids`, in that order, while their JSON fits in `room`
-- bytes (the first always does). Return them, and how many ids were used up.
local function fill(ids, room)
  local taken, size, used = {}, 0, 0
  if #ids == 0 then return taken, 0 end
  for i, message in ipairs(redis.call("HMGET", messages_key, unpack(ids))) do
    if message then
      size = size + #message + 1
      if #taken > 0 and size > room then break end
      table.insert(taken, message)
    end
    used = i
  end
  return taken, used
end

-- An answer: epoch, cursor, reset, more, then the messages' JSON.
local function answer(epoch, cursor, reset, more, messages)
  local reply = {epoch, cursor, reset and 1 or 0, more and 1 or 0}
  for _, message in ipairs(messages) do table.insert(reply, message) end
  return reply
end

local function newest_page(epoch, reset, page_size, room)
  local last = tonumber(redis.call("GET", last_id_key) or "0")
  local oldest = tonumber(redis.call("GET", oldest_key) or "1")
  local ids = {}
  for id = last, math.max(oldest, last - page_size + 1), -1 do table.insert(ids, id) end
  local messages, used = fill(ids, room)
  local cursor = tonumber(redis.call("GET", cursor_key) or "0")
  return answer(epoch, cursor, reset, last - used + 1 > oldest, messages)
end

-- A write carries a token (KEYS[8]) and a deadline on Redis's clock (ARGV[3]).
-- Return the id of the message a write with this token changed already, if
-- one did. Past the deadline, refuse: the sender has stopped waiting.
local now
local function done_before()
  local id = redis.call("GET", KEYS[8])
  local time = redis.call("TIME")
  now = tonumber(time[1]) + tonumber(time[2]) / 1e6
  if not id and now > tonumber(ARGV[3]) then
    error({err = "TOOLATE the change reached Redis after its sender had stopped waiting"})
  end
  return id
end

-- Record a change to message `id`, tell every process, and remember the
-- write's token until its deadline: a retry can't come later.
local function record_change(epoch, id, message)
  local cursor = redis.call("INCR", cursor_key)
  redis.call("ZADD", changes_key, cursor, id)
  redis.call("SET", KEYS[8], id, "PX", math.floor((tonumber(ARGV[3]) - now) * 1000) + 1)
  redis.call("PUBLISH", "chat:changes", epoch .. " " .. cursor)
  return message
end
"""

# ARGV: fresh epoch, run_id, deadline, user, text, timestamp, max messages.
ADD = PRELUDE + """
local function new_message(id)
  return cjson.encode({id = tonumber(id), user = ARGV[4], text = ARGV[5], timestamp = ARGV[6],
                       likes = 0, dislikes = 0})
end
local done = done_before()
-- A retry: the message as it is now, or as it was made if it has been dropped since.
if done then return redis.call("HGET", messages_key, done) or new_message(done) end
local epoch = current_epoch()
local id = redis.call("INCR", last_id_key)
local oldest = tonumber(redis.call("GET", oldest_key) or id)
local message = new_message(id)
redis.call("HSET", messages_key, id, message)
while id - oldest + 1 > tonumber(ARGV[7]) do
  redis.call("HDEL", messages_key, oldest)
  redis.call("ZREM", changes_key, oldest)
  oldest = oldest + 1
end
redis.call("SET", oldest_key, oldest)
return record_change(epoch, id, message)
"""

# ARGV: fresh epoch, run_id, deadline, message id, "likes" or "dislikes".
VOTE = PRELUDE + """
local done = done_before()
if done then return redis.call("HGET", messages_key, done) end
local epoch = current_epoch()
local message = redis.call("HGET", messages_key, ARGV[4])
if not message then return false end
message = cjson.decode(message)
message[ARGV[5]] = message[ARGV[5]] + 1
message = cjson.encode(message)
redis.call("HSET", messages_key, ARGV[4], message)
return record_change(epoch, ARGV[4], message)
"""

# ARGV: fresh epoch, run_id, cursor, the client's epoch or "", page size, room in bytes.
SINCE = PRELUDE + """
local epoch = current_epoch()
local since, client_epoch, page_size, room = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local cursor = tonumber(redis.call("GET", cursor_key) or "0")
local reset = (client_epoch ~= "" and client_epoch ~= epoch) or since > cursor
if reset or (since == 0 and client_epoch == "") then
  return newest_page(epoch, reset, page_size, room)
end
-- The messages changed after `since`, in the order of their last change.
local changed = redis.call("ZRANGEBYSCORE", changes_key, "(" .. ARGV[3], "+inf",
                           "WITHSCORES", "LIMIT", 0, page_size + 1)
local ids = {}
for i = 1, math.min(#changed / 2, page_size) do ids[i] = changed[2 * i - 1] end
local messages, used = fill(ids, room)
if used < #changed / 2 then cursor = tonumber(changed[2 * used]) end  -- the rest comes next
return answer(epoch, cursor, false, false, messages)
"""

# ARGV: fresh epoch, run_id, before, limit, the client's epoch or "", page size, room in bytes.
BEFORE = PRELUDE + """
local epoch = current_epoch()
local room = tonumber(ARGV[7])
if ARGV[5] ~= "" and ARGV[5] ~= epoch then return newest_page(epoch, true, tonumber(ARGV[6]), room) end
local last = tonumber(redis.call("GET", last_id_key) or "0")
local oldest = tonumber(redis.call("GET", oldest_key) or "1")
local before = math.min(tonumber(ARGV[3]), last + 1)  -- past the newest: the newest page
local ids = {}
for id = before - 1, math.max(oldest, before - tonumber(ARGV[4])), -1 do table.insert(ids, id) end
local messages, used = fill(ids, room)
local cursor = tonumber(redis.call("GET", cursor_key) or "0")
return answer(epoch, cursor, false, before - used > oldest, messages)
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

    def __init__(self, url, max_messages=10000, page_size=200, max_answer_bytes=262144,
                 redis_seconds=2, poll_seconds=1):
        self.max_messages = max_messages
        self.page_size = page_size
        self.room = max_answer_bytes - ENVELOPE_BYTES  # for the messages of one answer
        self.poll_seconds = poll_seconds
        # A write that Redis hasn't carried out this long after it was sent is
        # never carried out: its sender stops waiting soon after, and answers 503.
        self.write_deadline = 0.75 * redis_seconds
        self.run_id = ""
        self.where = f"in Redis at {without_password(url)}"  # for the start-up log
        self.clock_offset = 0  # Redis's clock minus ours, in seconds
        # Why Redis can't be reached, as last found; None while it answers.
        self.unreachable = None
        # Why Redis last refused a read, and a write; None once one goes through again.
        self.refused = {"read": None, "write": None}
        self._quiet_until = 0  # no refusal logged until then
        self._wake_channel = f"chat:wake:{secrets.token_hex(8)}"  # close() wakes the listener here
        self.redis = redis.Redis.from_url(
            url,
            # Each call waits at most this long: a Redis that stalls costs a
            # request this much, not the whole stall.
            socket_connect_timeout=min(1, redis_seconds / 2),  # tried twice
            socket_timeout=redis_seconds,
            health_check_interval=0,  # no PING before commands: the timeouts find a dead Redis
            # A dropped connection is retried once, which the write's token makes
            # safe. A timeout is not: a Redis that doesn't answer won't answer again.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1,
                        supported_errors=(redis.ConnectionError,)),
            redis_connect_func=self._on_connect,
        )
        self._add, self._vote, self._since, self._before, self._state = (
            self.redis.register_script(script) for script in (ADD, VOTE, SINCE, BEFORE, STATE))
        # (epoch, cursor) as last heard by the listener; `wait` waits for it to move.
        self._heard = (None, 0)
        self._changes = threading.Condition()
        self.closed = threading.Event()  # set by close(): stops the listener, and what uses the store
        self._listener = threading.Thread(target=self._listen, name="redis-listener", daemon=True)
        self._listener.start()

    @property
    def unavailable(self):
        """Why the chat can't be read or changed right now, or None while it can."""
        return self.unreachable or self.refused["write"] or self.refused["read"]

    @property
    def epoch(self):
        """The name of the data's current life."""
        return self._run(self._state)[0].decode()

    @property
    def cursor(self):
        """The cursor of the latest change."""
        return int(self.call(self.redis.get, "chat:cursor") or 0)

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
        return self._answer(self._run(self._since, args=[cursor, epoch or "", self.page_size, self.room]))

    def before(self, message_id, limit, epoch=None):
        """Return the newest `limit` messages older than `message_id`, as `Store.before` does."""
        return self._answer(self._run(self._before, args=[message_id, limit, epoch or "", self.page_size,
                                                          self.room]))

    def wait(self, cursor, timeout):
        """Block until a change after `cursor` is heard of, or `timeout` seconds pass; return True if one was."""
        with self._changes:
            epoch = self._heard[0]  # None until the listener has heard from Redis
            # Redis becoming unreachable ends the wait too: the caller will hear why.
            return self._changes.wait_for(
                lambda: epoch not in (None, self._heard[0]) or self._heard[1] > cursor
                or self.unreachable is not None, timeout)

    def call(self, command, *args, **options):
        """Run a redis-py command or script; raise StoreUnavailable, saying why, if Redis fails or refuses."""
        if self.unreachable:  # found out already: this request needn't wait to find out again
            raise StoreUnavailable(self.unreachable)
        try:
            return command(*args, **options)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            # Every request from now on is told at once, until the listener hears from Redis:
            # a request that makes several calls waits for one timeout, not one each.
            reason = cant_reach(error)
            self._set_unreachable(reason)
            raise StoreUnavailable(reason) from None
        except redis.RedisError as error:  # Redis answered: out of memory, a read-only replica, ...
            reason = str(error).split(" script: ")[0]  # without the script's hash
            if time.monotonic() > self._quiet_until:  # a line a minute tells the log enough
                log.warning("Redis refuses commands (%s); requests that need them get 503.", reason)
                self._quiet_until = time.monotonic() + 60
            raise StoreUnavailable(f"Redis refused this request ({reason}). Try again later.") from None
        except Exception:
            if self.closed.is_set():  # closed under a running call, whose connection went with it
                raise StoreUnavailable("The store is closed.") from None
            raise

    def close(self):
        """Stop the listener and close the connections to Redis."""
        self.closed.set()
        if not self.unreachable:
            try:  # wake the listener now, rather than at its next poll
                self.redis.publish(self._wake_channel, "close")
            except redis.RedisError:
                pass  # then it notices within poll_seconds
        self._listener.join(timeout=self.poll_seconds + 3)
        self.redis.close()

    def _count(self, message_id, field):
        reply = self._run(self._vote, write=True, args=[message_id, field])
        if reply is None:
            raise KeyError(message_id)
        return json.loads(reply)

    def _run(self, script, write=False, args=()):
        """Run a script with the keys, a fresh epoch and the run_id; for a write, a token and a deadline."""
        if not self.run_id:
            self.call(self.redis.ping)  # connects, and so learns the run_id (see _on_connect)
        keys, prefix = KEYS, [secrets.token_hex(8), self.run_id]
        if write:
            keys = KEYS + [f"chat:done:{secrets.token_hex(8)}"]
            prefix.append(time.time() + self.clock_offset + self.write_deadline)
        kind = "write" if write else "read"
        try:
            result = self.call(script, keys=keys, args=prefix + list(args))
        except StoreUnavailable as error:
            if not self.unreachable:  # Redis answered, and refused
                self._set_refused(kind, str(error))
            raise
        # A read that goes through says nothing about writes; a write that does, says both work.
        for cleared in ("read", "write") if write else ("read",):
            self._set_refused(cleared, None)
        return result

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
        """On each new connection, before anything else: learn Redis's run_id and clock; has it restarted?"""
        if self.closed.is_set():  # a call that was under way when the store closed is not retried
            raise redis.ConnectionError("The store is closed.")
        # redis-py's own set-up first (AUTH, SELECT, ...). With health checks off
        # (health_check_interval=0), nothing in here sends a PING that could fail
        # and reconnect, which would call this again, and so on.
        connection.on_connect()
        connection.send_command("INFO", "server")
        info = dict(line.split(b":", 1) for line in connection.read_response().splitlines() if b":" in line)
        self.run_id = info[b"run_id"].strip().decode()
        connection.send_command("TIME")
        seconds, microseconds = connection.read_response()
        self.clock_offset = int(seconds) + int(microseconds) / 1e6 - time.time()
        connection.send_command("EVAL", NEW_RUN, 2, KEYS[0], KEYS[1], secrets.token_hex(8), self.run_id)
        connection.read_response()

    def _hear(self, epoch, cursor):
        with self._changes:
            if (epoch, cursor) != self._heard:
                self._heard = (epoch, cursor)
                self._changes.notify_all()

    def _set_unreachable(self, reason):
        with self._changes:
            if reason != self.unreachable:
                self.unreachable = reason
                self._changes.notify_all()  # waiting long polls and the broadcaster hear of it now

    def _set_refused(self, kind, reason):
        if self.refused[kind] != reason:
            with self._changes:
                self.refused[kind] = reason
                self._changes.notify_all()

    def _hear_state(self):
        """Hear the epoch and cursor that Redis holds now (the listener's own errors are Redis's)."""
        epoch, cursor = self._state(keys=KEYS, args=[secrets.token_hex(8), self.run_id])
        self._hear(epoch.decode(), int(cursor))

    def _listen(self):
        """Hear every change any process publishes, and wake `wait`; forever, through Redis going away."""
        down_since = None
        while not self.closed.is_set():
            try:
                with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(CHANNEL, self._wake_channel)
                    # What was published while we were away is lost: read the cursor instead.
                    self._hear_state()
                    self._set_unreachable(None)
                    if down_since is not None:
                        log.warning("Redis is back after %.1f s.", time.monotonic() - down_since)
                        down_since = None
                    self._listen_on(pubsub)
            except redis.RedisError as error:
                if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
                    self._set_unreachable(cant_reach(error))  # requests are told at once from now on
                if down_since is None:
                    log.warning("Listening to Redis failed (%s); trying again every %s s.",
                                error, self.poll_seconds)
                    down_since = time.monotonic()
                self.closed.wait(self.poll_seconds)

    def _listen_on(self, pubsub):
        last_heard = time.monotonic()
        while not self.closed.is_set():
            message = pubsub.get_message(timeout=self.poll_seconds)
            if message and message["channel"].decode() == CHANNEL:
                epoch, cursor = message["data"].decode().split()
                self._hear(epoch, int(cursor))
                last_heard = time.monotonic()
            elif time.monotonic() - last_heard >= self.poll_seconds:
                self._hear_state()
                last_heard = time.monotonic()
            else:
                continue
            self._set_unreachable(None)  # Redis answers: requests may ask it again


def without_password(url):
    """Return a Redis URL with its password, if it has one, written as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}", *parts[2:]))


def cant_reach(error):
    """The reason a request that needs Redis gets, when Redis can't be reached."""
    return (f"Redis can't be reached, so the chat can't be read or changed right now ({error}). "
            "Try again in a moment.")
