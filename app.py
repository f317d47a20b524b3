"""The chat's web server. `create_app()` puts the pieces together:

- pages.py: the landing page, the two chat pages and /hello;
- api.py: the HTTP API, GET and POST /messages, likes and dislikes;
- sockets.py: the WebSocket routes, /hello/ws and /ws;
- store.py: the messages, and the cursor that counts every change;
  redis_store.py: the same in Redis, for several processes;
- broadcaster.py: the thread that pushes every change to every socket.
"""

import logging
import threading
from types import SimpleNamespace

from flask import Flask

import api
import pages
import sockets
from broadcaster import Broadcaster
import serving
from limits import BucketPerAddress
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
        RATE_LIMIT=10,
        TRUSTED_PROXIES=0,
        REDIS_URL="",
        SOCK_SERVER_OPTIONS={"max_message_size": 65536, "ping_interval": 25},
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)
    if app.logger.level == logging.NOTSET:
        app.logger.setLevel(logging.INFO)

    # The in-memory store unless REDIS_URL names a Redis to share with other processes.
    limits = {"max_messages": app.config["MAX_MESSAGES"], "page_size": app.config["PAGE_SIZE"]}
    if app.config["REDIS_URL"]:
        from redis_store import RedisBucketPerAddress, RedisStore  # only then is redis needed

        store = RedisStore(app.config["REDIS_URL"], **limits)
        posts_per_address = RedisBucketPerAddress(store.redis, app.config["RATE_LIMIT"])
    else:
        store = Store(**limits)
        posts_per_address = BucketPerAddress(app.config["RATE_LIMIT"])
    websockets, long_polls = serving.capacity(app)
    # What the routes share, reached as current_app.extensions["chat"].
    app.extensions["chat"] = SimpleNamespace(
        store=store,
        broadcaster=Broadcaster(store),
        posts_per_address=posts_per_address,
        socket_slots=threading.BoundedSemaphore(websockets),
        long_poll_slots=threading.BoundedSemaphore(long_polls),
    )

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(sockets.bp)
    sockets.sock.init_app(app)
    serving.init_app(app)
    return app
