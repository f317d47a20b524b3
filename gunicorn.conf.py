"""gunicorn's settings for the chat; gunicorn started from this folder reads them by itself.

    .venv/bin/gunicorn 'app:create_app()'

serves the chat on http://127.0.0.1:8000/ (`-b 0.0.0.0:8000` for other
machines; `-w 4` for four processes, which need FLASK_REDIS_URL to share one
chat). Options on the command line win over the settings here.
"""

import os
import signal
import threading

from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.gthread import ThreadWorker

# This file is read before gevent patches the standard library in each worker,
# so the app's modules are imported in the hooks below, after it.

# gevent's worker: a connection waits in a greenlet, a few kilobytes, not in a
# thread, so a WebSocket costs little more than its socket (bench/README.md).
worker_class = "gevent"
# Connections a worker serves at once. The app keeps a share of them, and of
# its open files, for pages and the API (serving.capacity).
worker_connections = 10000
# A connection that sends no request within this many seconds is closed, as one
# that stays idle this long between two requests.
keepalive = 5
# No control socket (gunicornc): several gunicorns on one machine would share its one path.
control_socket_disable = True
# How long a stopping worker waits for its connections. It closes its WebSockets
# itself, within a few seconds (below).
graceful_timeout = 10


def post_fork(server, worker):
    """Tell the app, which this new worker creates next, how many connections the worker serves at once."""
    if isinstance(worker, AsyncWorker):  # gevent: one greenlet for each
        at_once = worker.cfg.worker_connections
    elif isinstance(worker, ThreadWorker):  # gthread: one thread for each, while it is in a request
        at_once = worker.cfg.threads
    else:  # sync: one at a time, so no WebSockets and no long polls at all
        at_once = 1
    os.environ["CHAT_WORKER_CONNECTIONS"] = str(at_once)  # read by serving.capacity


def post_worker_init(worker):
    """Stop once, whichever signals come, closing every WebSocket with 1001 (worker_int, below)."""
    import serving

    stopping = []

    def stop(signum, frame):
        # Ctrl+C reaches a worker twice: from the terminal, and from gunicorn's master.
        if stopping:
            return
        stopping.append(signum)
        if signum == signal.SIGTERM:
            # gunicorn waits for the requests under way, WebSockets included: close them meanwhile.
            worker.handle_exit(signum, frame)
            if isinstance(worker, AsyncWorker):  # gevent runs this in its loop, where nothing may wait
                import gevent

                gevent.spawn(serving.close_websockets)
            else:
                threading.Thread(target=serving.close_websockets).start()
        else:
            worker.handle_quit(signum, frame)  # calls worker_int, then exits

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, stop)


def worker_int(worker):
    """On Ctrl+C (SIGINT) or SIGQUIT, close every WebSocket with 1001 before the worker exits."""
    import serving

    serving.close_websockets()
