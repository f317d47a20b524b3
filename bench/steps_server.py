"""Step 3 or the app, served for bench/steps.py, counting the work that `messages` frames cost.

    python bench/steps_server.py step3 PORT
    python bench/steps_server.py app PORT

It serves the app as `flask run` does (werkzeug's server, a thread per
connection), and counts, for `messages` frames only, each time one is encoded
as JSON (json.dumps) and each time one is built as a WebSocket frame (wsproto's
FrameProtocol.send_data, which both simple-websocket's send and the app's
encode_text_frame use). GET /bench/counts answers with both counts.

Nothing else changes: the counting wraps those two functions and takes a lock.
bench/steps.py measures speed with plain `flask run` processes, not with this.
"""

import importlib.util
import json
import os
import sys
import threading

from wsproto.frame_protocol import FrameProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

counts = {"json": 0, "frames": 0}
counting = threading.Lock()


def count(kind):
    with counting:
        counts[kind] += 1


original_dumps = json.dumps


def dumps_counting_messages_frames(obj, *args, **kwargs):
    """json.dumps, counting the `messages` frames it encodes."""
    if isinstance(obj, dict) and obj.get("command") == "messages":
        count("json")
    return original_dumps(obj, *args, **kwargs)


original_send_data = FrameProtocol.send_data


def send_data_counting_messages_frames(self, payload=b"", fin=True):
    """wsproto's FrameProtocol.send_data, counting the `messages` frames it builds."""
    if isinstance(payload, str) and payload.startswith('{"command": "messages"'):
        count("frames")
    return original_send_data(self, payload, fin)


def load_app(which):
    """Return step 3's app, or the app made by create_app() (with the FLASK_* settings of the environment)."""
    if which == "step3":
        path = os.path.join(ROOT, "steps", "3-websocket", "app.py")
        spec = importlib.util.spec_from_file_location("step3_app", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["step3_app"] = module  # Flask finds the step's templates/ and static/ through it
        spec.loader.exec_module(module)
        return module.app
    sys.path.insert(0, ROOT)
    from app import create_app

    return create_app()


if __name__ == "__main__":
    json.dumps = dumps_counting_messages_frames
    FrameProtocol.send_data = send_data_counting_messages_frames
    app = load_app(sys.argv[1])
    app.add_url_rule("/bench/counts", "bench_counts", lambda: dict(counts))
    app.run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
