"""The chat's web server. `create_app()` puts the pieces together.

The chat itself, to read first:
- pages.py: the landing page, the two chat pages and /hello;
- api.py: the HTTP API, GET and POST /messages, likes and dislikes;
- sockets.py: the WebSocket routes, /hello/ws and /ws;
- store.py: the messages, and the cursor that counts every change;
  redis_store.py: the same in Redis, for several processes;
- broadcaster.py: the thread that pushes every change to every socket.

What keeps one client from hurting the others, to read after:
- guards.py: the HTTP API's checks (this site only, JSON, flood control, sizes);
- handshake.py: what is refused before a WebSocket upgrade, and the socket handed over after;
- text_rules.py: what a name and a message may hold;
- limits.py: flood control, and places per client address;
- connection.py: sockets that never block on a slow client, and close cleanly.
"""

import logging
from types import SimpleNamespace

from flask import Flask

import api
import pages
import sockets
from broadcaster import Broadcaster
import serving
from limits import BucketPerAddress, Places
from store import Store


def create_app(test_config=None):
    """Create the chat app; settings come from defaults, then FLASK_* variables, then `test_config`."""
    app = Flask(__name__)
    app.config.from_mapping(
        MAX_MESSAGES=10000,
        ALLOWED_ORIGINS=[],
        MAX_WAIT=30,
        MAX_CONTENT_LENGTH=65536,
        PAGE_SIZE=200,
        MAX_ANSWER_BYTES=262144,
        RATE_LIMIT=10,
        MAX_SOCKETS_PER_ADDRESS=100,
        TRUSTED_PROXIES=0,
        REDIS_URL="",
        REDIS_SECONDS=2,  # a request's whole budget for Redis, before it gets 503
        REDIS_POLL_SECONDS=1,  # how often the Redis listener looks, when nothing is published
        REQUEST_SECONDS=10,  # a request, headers and body, must arrive within this of its connection's start
        STALL_SECONDS=5,  # a WebSocket client that takes none of our bytes this long is hung up on
        CLOSE_SECONDS=2,  # how long a closing handshake may take
        FLOOD_SECONDS=5,  # a WebSocket whose frames wait for its address's allowance this long in a row gets 1008
        SOCK_SERVER_OPTIONS={"max_message_size": 65536, "ping_interval": 25},
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)
    # Answers as compact UTF-8 JSON, as store.message_bytes counts them (an
    # emoji is 4 bytes, not the 12 of two \u escapes), in debug mode too.
    app.json.ensure_ascii = False
    app.json.compact = True
    if app.logger.level == logging.NOTSET:
        app.logger.setLevel(logging.INFO)

    websockets, long_polls = serving.capacity(app)
    per_address = app.config["MAX_SOCKETS_PER_ADDRESS"]

    # The in-memory store unless REDIS_URL names a Redis to share with other processes.
    sizes = {"max_messages": app.config["MAX_MESSAGES"], "page_size": app.config["PAGE_SIZE"],
             "max_answer_bytes": app.config["MAX_ANSWER_BYTES"]}
    rate = app.config["RATE_LIMIT"]
    if app.config["REDIS_URL"]:
        from redis_limits import RedisBucketPerAddress, RedisPlaces  # only then is redis needed
        from redis_store import RedisStore

        store = RedisStore(app.config["REDIS_URL"], **sizes, redis_seconds=app.config["REDIS_SECONDS"],
                           poll_seconds=app.config["REDIS_POLL_SECONDS"])
        # Counted in Redis too: spreading over processes gains a client nothing.
        changes_per_address = RedisBucketPerAddress(store, rate)
        socket_places = RedisPlaces(store, "websockets", websockets, per_address)
        long_poll_places = RedisPlaces(store, "long-polls", long_polls, per_address)
    else:
        store = Store(**sizes)
        changes_per_address = BucketPerAddress(rate)
        socket_places, long_poll_places = Places(websockets, per_address), Places(long_polls, per_address)
    app.logger.info("The chat is kept %s.", store.where)
    # What the routes share, reached as current_app.extensions["chat"].
    app.extensions["chat"] = SimpleNamespace(
        store=store,
        broadcaster=Broadcaster(store),
        changes_per_address=changes_per_address,
        sockets=socket_places,
        long_polls=long_poll_places,
    )

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(sockets.bp)
    sockets.sock.init_app(app)
    serving.init_app(app)
    return app
