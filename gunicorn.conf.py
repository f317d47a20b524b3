"""gunicorn's settings for the chat; gunicorn started from this folder reads them by itself.

    .venv/bin/gunicorn 'app:create_app()'

serves the chat on http://127.0.0.1:8000/ (`-b 0.0.0.0:8000` for other
machines; `-w 4` for four processes, which need FLASK_REDIS_URL to share one
chat). Options on the command line win over the settings here.
"""

import os
import signal
import sys

from gunicorn.workers.base_async import AsyncWorker

# This file is read before gevent patches the standard library in each worker,
# so the app's modules are imported in the hooks below, after it.

# gevent's worker: a connection waits in a greenlet, a few kilobytes, not in a
# thread, so a WebSocket costs little more than its socket (bench/README.md).
worker_class = "gevent"
# Connections a worker serves at once. The app keeps a share of them, and of
# its open files, for pages and the API (serving.capacity).
worker_connections = 10000
# A request's line and headers must arrive within this many seconds of the
# connection's start (or of the answer before, between two requests); its body
# then has the app's REQUEST_SECONDS (serving.py).
keepalive = 5
# No control socket (gunicornc): several gunicorns on one machine would share its one path.
control_socket_disable = True
# How long a stopping worker waits for its connections. It closes its WebSockets
# itself, within a few seconds (below).
graceful_timeout = 10


def on_starting(server):
    """Refuse several workers without Redis: each would be a chat of its own."""
    redis_url = server.cfg.env.get("FLASK_REDIS_URL") or os.environ.get("FLASK_REDIS_URL")
    if server.cfg.workers > 1 and not redis_url:
        # gunicorn prints a RuntimeError's message and exits.
        raise RuntimeError(
            f"{server.cfg.workers} workers without FLASK_REDIS_URL would be {server.cfg.workers} separate "
            "chats, each page seeing only its own worker's messages. Run one worker (no -w), or start "
            "Redis and set FLASK_REDIS_URL=redis://localhost:6379/0 so that the workers share one chat.")


def post_fork(server, worker):
    """Tell the app, which this new worker creates next, how many connections the worker serves at once."""
    # gevent: a greenlet for each connection. gthread: a thread for each while
    # in a request; sync (threads=1): one at a time, so no WebSocket or long poll.
    at_once = worker.cfg.worker_connections if isinstance(worker, AsyncWorker) else worker.cfg.threads
    os.environ["CHAT_WORKER_CONNECTIONS"] = str(at_once)  # read by serving.capacity
    if "gevent" in sys.modules:  # gunicorn loaded gevent's worker
        import gevent

        # gevent keeps, for each greenlet, where it was spawned from (for its
        # debugging tools): 300 bytes for every WebSocket, which we never read.
        gevent.config.track_greenlet_tree = False


def post_worker_init(worker):
    """Add to gunicorn's own signal handlers: close the WebSockets on SIGTERM; stop once on Ctrl+C."""
    # gunicorn has a hook for Ctrl+C (worker_int, below) but none for SIGTERM:
    # its worker stops accepting, then waits for the requests under way, our
    # WebSockets included, for graceful_timeout. So its handler gets a second
    # step, after its own.
    stop_gracefully = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        stop_gracefully(signum, frame)
        if isinstance(worker, AsyncWorker):  # gevent runs this in its loop, where nothing may wait
            import gevent

            gevent.spawn(close_websockets)
        else:
            import threading

            threading.Thread(target=close_websockets).start()

    signal.signal(signal.SIGTERM, stop)
    # Ctrl+C reaches a worker twice, from the terminal and from gunicorn's master
    # (SIGQUIT); a second exit, while the first is under way, ends in a traceback.
    stop_now = signal.getsignal(signal.SIGINT)
    stopping = []

    def stop_once(signum, frame):
        if not stopping:
            stopping.append(signum)
            stop_now(signum, frame)

    for signum in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, stop_once)
    # gunicorn calls the Flask object, a call through C that every idle greenlet's
    # saved stack keeps a copy of (about 900 bytes a WebSocket); Flask's `wsgi_app`
    # is the same app, called directly. (`wsgi` is undocumented: test_internals.py checks it.)
    if hasattr(worker.wsgi, "wsgi_app"):
        worker.wsgi = worker.wsgi.wsgi_app
    worker.log.info("Worker %s serves; stopping it closes its WebSockets with 1001.", worker.pid)


def worker_int(worker):
    """On Ctrl+C (SIGINT) or SIGQUIT, close every WebSocket with 1001 before the worker exits."""
    close_websockets()


def close_websockets():
    """Close every WebSocket of this worker with 1001 (after gevent has patched the standard library)."""
    import serving

    serving.close_all()
