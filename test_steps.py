"""The learner's path, steps/1-hello to steps/4-likes: each step run with real servers and real clients.

Most tests serve a fresh copy of a step's app.py (a new, empty chat) from a
werkzeug server thread, as conftest's LiveServer serves the root app. Others
start a step as a learner would, with `flask --app ... run`: from the project
folder, and from a copy of the step alone, with nothing installed but Flask,
flask-sock and what they need.

The browser tests drive conftest's Chromium, as test_browser.py does; without it
they are skipped, except on CI (CI=true), where a missing browser is an error.
"""

import ast
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from websockets.exceptions import InvalidStatus
from werkzeug.exceptions import HTTPException
from websockets.sync.client import connect

from helpers import (ON_CI, PROJECT, FlaskRun, LiveServer, PageOpener, import_fresh, raw_websocket, receive_json,
                     receive_until, request, texts, wait_until)

STEPS = PROJECT / "steps"
ALL_STEPS = ["1-hello", "2-polling", "3-websocket", "4-likes"]
CHAT_STEPS = ["2-polling", "3-websocket", "4-likes"]  # those with the chat's HTTP API
SOCKET_STEPS = ["3-websocket", "4-likes"]  # those with the chat's WebSocket, /ws
# The lines each step may have, Python, HTML, JavaScript and CSS together, as the contract counts them:
# every line that is not blank, of every file in the step's folder, comments and docstrings included.
BUDGETS = {"1-hello": 40, "2-polling": 200, "3-websocket": 200, "4-likes": 200}
# What a step may import besides the standard library: Flask, flask-sock and what they install.
ALLOWED_IMPORTS = {"flask", "flask_sock", "simple_websocket", "werkzeug", "wsproto", "jinja2"}

copies = itertools.count()


def load_step(step):
    """Import a step's app.py afresh, under a name of its own: each copy is a new, empty chat."""
    return import_fresh(STEPS / step / "app.py", f"step_{step.replace('-', '_')}_{next(copies)}")


@pytest.fixture
def chat(step):
    """A live server running a fresh copy of `step` (the test's parameter), in a thread of this process."""
    live = LiveServer(load_step(step).app)
    yield live
    live.stop()


def call(url, method="GET", body=None, data=None, content_type="application/json", timeout=35):
    """Send an HTTP request, a JSON `body` or bytes of `data`; return (status, decoded JSON answer)."""
    if body is not None:
        data = json.dumps(body).encode()
    answer = request(method, url, data, {"Content-Type": content_type} if data is not None else {}, timeout=timeout)
    return answer.status, answer.json


def post(base_url, text, user="Azin"):
    """POST a message; return the stored message."""
    status, message = call(base_url + "/messages", "POST", {"user": user, "text": text})
    assert status == 201, message
    return message


def send_message(ws, text, user="Azin"):
    ws.send(json.dumps({"command": "send-message", "message": {"user": user, "text": text}}))


def answer_of(messages, cursor, epoch, reset=False):
    """A step's answer to GET /messages, and a `messages` frame without its command."""
    return {"messages": messages, "cursor": cursor, "epoch": epoch, "reset": reset}


def epoch_of(chat):
    """The epoch of the running step: a fresh one for each server."""
    return call(chat.url + "/messages?since=0")[1]["epoch"]


def chat_with(base_url, step):
    """Chat with a running step as its pages do, over HTTP and, from step 3 on, over the WebSocket."""
    ws_url = base_url.replace("http:", "ws:")
    if step == "1-hello":
        with connect(ws_url + "/hello/ws") as ws:
            assert ws.recv(timeout=10) == "Hello"
        return
    post(base_url, "over HTTP")
    assert texts([call(base_url + "/messages?since=0")[1]]) == ["over HTTP"]
    if step in SOCKET_STEPS:
        with connect(ws_url + "/ws?since=0") as ws:
            assert texts([receive_json(ws, timeout=10)]) == ["over HTTP"]
            send_message(ws, "over the WebSocket")
            assert texts([receive_json(ws, timeout=10)]) == ["over the WebSocket"]
        assert texts([call(base_url + "/messages?since=1")[1]]) == ["over the WebSocket"]
    if step == "4-likes":
        assert call(base_url + "/messages/1/like", "POST")[1]["likes"] == 1


# The steps as files: short, and needing nothing but Flask and flask-sock


def step_files(step):
    """Every file of a step, as a learner would copy it."""
    return sorted(path for path in (STEPS / step).rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts)


@pytest.mark.parametrize("step", ALL_STEPS)
def test_each_step_is_a_folder_with_its_app_its_templates_and_its_static_files(step):
    names = [path.relative_to(STEPS / step) for path in step_files(step)]
    assert Path("app.py") in names
    assert {name.parts[0] for name in names} == {"app.py", "templates", "static"}
    assert {name.suffix for name in names} <= {".py", ".html", ".js", ".css"}


@pytest.mark.parametrize("step", ALL_STEPS)
def test_each_step_has_at_most_its_budget_of_lines_that_are_not_blank(step):
    """Comments and docstrings count; blank lines don't, so PEP 8's two between functions cost nothing."""
    counts = {str(path.relative_to(STEPS / step)): sum(1 for line in path.read_text().splitlines() if line.strip())
              for path in step_files(step)}
    assert sum(counts.values()) <= BUDGETS[step], counts


@pytest.mark.parametrize("step", ALL_STEPS)
def test_each_step_imports_nothing_but_flask_flask_sock_and_the_standard_library(step):
    tree = ast.parse((STEPS / step / "app.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(getattr(node, "level", 0) == 0 for node in imports)  # nothing relative, from a neighbour
    modules = {alias.name for node in imports if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in imports if isinstance(node, ast.ImportFrom)}
    top_level = {module.split(".")[0] for module in modules}
    assert top_level - set(sys.stdlib_module_names) <= ALLOWED_IMPORTS


class StepRun(FlaskRun):
    """`python -m flask --app <app> run` in a subprocess, as a learner starts a step, in a clean environment."""

    def __init__(self, app, cwd, log, python_options=(), env=None, port=None):
        super().__init__(port=port, log=log)
        self.app, self.cwd, self.python_options = app, cwd, python_options
        clean = {key: value for key, value in os.environ.items() if not key.startswith(("FLASK_", "PYTHON"))}
        self.env = {**clean, **(env or {})}

    def command(self):
        return [sys.executable, *self.python_options, "-m", "flask", "--app", self.app, "run", "--port", str(self.port)]


@pytest.mark.parametrize("step", ALL_STEPS)
def test_each_step_runs_from_the_project_folder_as_the_readme_says(step, start, tmp_path):
    running = start(StepRun(f"steps/{step}/app", cwd=PROJECT, log=tmp_path / "flask.log"))
    # The project folder has an app.py of its own: this must be the step's.
    assert ("hello.js" if step == "1-hello" else "polling.js") in running.request("GET", "/").body.decode()
    chat_with(running.url, step)


def distributions_needed(*names):
    """The installed distributions that `names` need, themselves included, following their requirements."""
    needed, waiting = {}, list(names)
    while waiting:
        distribution = importlib.metadata.distribution(waiting.pop())
        name = distribution.metadata["Name"].lower().replace("_", "-")
        if name in needed:
            continue
        needed[name] = distribution
        for requirement in map(Requirement, distribution.requires or []):
            # Leave out extras ("flask[async]") and what other platforms or Pythons need.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                waiting.append(requirement.name)
    return needed.values()


@pytest.fixture(scope="session")
def only_flask_and_flask_sock(tmp_path_factory):
    """A folder that holds nothing but Flask, flask-sock and what they need: links to what is installed."""
    folder = tmp_path_factory.mktemp("site-packages")
    for distribution in distributions_needed("flask", "flask-sock"):
        tops = {Path(file).parts[0] for file in distribution.files}
        for top in tops - {"..", "__pycache__"}:  # ".." leads to scripts in bin/
            (folder / top).symlink_to(distribution.locate_file(top))
    return folder


def test_the_folder_of_flask_and_flask_sock_holds_nothing_else(only_flask_and_flask_sock):
    """The next test means something only if the step can't reach the project's other packages."""
    script = ("import importlib.util as u; import flask, flask_sock; "
              "print([m for m in ('redis', 'websockets', 'gunicorn', 'store') if u.find_spec(m)])")
    found = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=only_flask_and_flask_sock.parent,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(only_flask_and_flask_sock)},
        capture_output=True, text=True, timeout=30)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


@pytest.mark.parametrize("step", ALL_STEPS)
def test_each_step_copied_alone_runs_and_chats_with_only_flask_and_flask_sock(
        step, start, tmp_path, only_flask_and_flask_sock):
    copy = shutil.copytree(STEPS / step, tmp_path / step, ignore=shutil.ignore_patterns("__pycache__"))
    # -S: not even the virtualenv's site-packages; PYTHONPATH: the folder of Flask and flask-sock alone.
    running = start(StepRun("app", cwd=copy, log=tmp_path / "flask.log", python_options=["-S"],
                            env={"PYTHONPATH": str(only_flask_and_flask_sock), "PYTHONDONTWRITEBYTECODE": "1"}))
    chat_with(running.url, step)


def test_the_readmes_whole_app_snippet_runs_when_pasted_into_an_empty_folder(
        start, tmp_path, only_flask_and_flask_sock):
    """The README's first Python snippet calls itself a whole app: pasted into app.py, it must say Hello."""
    readme = (PROJECT / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "app.py").write_text(snippet)
    running = start(StepRun("app", cwd=tmp_path, log=tmp_path / "flask.log", python_options=["-S"],
                            env={"PYTHONPATH": str(only_flask_and_flask_sock), "PYTHONDONTWRITEBYTECODE": "1"}))
    assert "/hello/ws" in running.request("GET", "/").body.decode()
    chat_with(running.url, "1-hello")


# The tutorial, steps/README.md: its excerpts are the steps' code


TUTORIAL = STEPS / "README.md"
# A fenced block marked as coming from a step: ```python 2-polling/app.py, or ```diff 3-websocket for a part
# of `diff -ruN` from the step before to that one.
EXCERPT = re.compile(r"^```(\w+) ([\w./-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def tutorial_excerpts():
    """(kind, where, text) for each excerpt of the tutorial, in order."""
    return EXCERPT.findall(TUTORIAL.read_text())


def test_the_tutorial_quotes_every_step_and_a_diff():
    quoted = {where.split("/")[0] for kind, where, text in tutorial_excerpts()}
    assert quoted == set(ALL_STEPS)
    assert any(kind == "diff" for kind, where, text in tutorial_excerpts())


@pytest.mark.parametrize("kind, where, text", tutorial_excerpts(),
                         ids=[f"{where}-{n}" for n, (kind, where, text) in enumerate(tutorial_excerpts())])
def test_each_excerpt_in_the_tutorial_appears_verbatim_in_the_step_it_names(kind, where, text):
    if kind == "diff":
        before = ALL_STEPS[ALL_STEPS.index(where) - 1]
        found = subprocess.run(["diff", "-ruN", "-x", "__pycache__", before, where], cwd=STEPS,
                               capture_output=True, text=True).stdout
    else:
        found = (STEPS / where).read_text()
    assert text in found, f"{where} no longer holds this excerpt of steps/README.md:\n{text}"


def headings(markdown_file):
    """The anchors GitHub makes of a Markdown file's headings: lower case, punctuation gone, spaces as hyphens."""
    titles = re.findall(r"^#+ (.+)$", markdown_file.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("markdown_file, part", [(TUTORIAL, slice(None)), (PROJECT / "README.md", slice(0, 1))],
                         ids=["steps/README.md", "README.md, down to its first step"])
def test_the_tutorials_and_the_maps_links_lead_to_files_and_headings_that_exist(markdown_file, part):
    text = "".join(markdown_file.read_text().split("## First step")[part])
    links = re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text)
    assert links
    for link in (target or source for target, source in links):
        if link.startswith("http"):
            continue
        path, _, anchor = link.partition("#")
        target = (markdown_file.parent / path).resolve() if path else markdown_file
        assert target.exists(), link
        if anchor:
            assert anchor in headings(target), link


# Step 1: hello


@pytest.mark.parametrize("step", ["1-hello"])
def test_hello_socket_says_hello(chat, step):
    assert chat.connect("/hello/ws").recv(timeout=5) == "Hello"


# The chat over HTTP: steps 2, 3 and 4


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_a_posted_message_is_stored_with_the_next_id_and_a_utc_timestamp(chat, step):
    first, second = post(chat.url, "  Hello  ", user=" Azin "), post(chat.url, "Hi!", user="Bo")
    assert (first["id"], first["user"], first["text"]) == (1, "Azin", "Hello")  # trimmed
    assert second["id"] == 2
    timestamp = first["timestamp"]
    assert timestamp.endswith("Z") and len(timestamp) == len("2026-11-25T23:59:01.123Z")
    assert datetime.fromisoformat(timestamp.replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    if step == "4-likes":
        assert (first["likes"], first["dislikes"]) == (0, 0)
    assert call(chat.url + "/messages")[1] == answer_of([first, second], 2, epoch_of(chat))


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_since_answers_only_what_came_after_it(chat, step):
    for text in ("one", "two", "three"):
        post(chat.url, text)
    assert texts([call(chat.url + "/messages?since=1")[1]]) == ["two", "three"]
    assert call(chat.url + "/messages?since=3")[1] == answer_of([], 3, epoch_of(chat))


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_a_long_poll_waits_for_the_next_message_and_wakes_when_it_comes(chat, step):
    post(chat.url, "before")
    answers = []
    poll = threading.Thread(target=lambda: answers.append(call(chat.url + "/messages?since=1&wait=30", timeout=20)))
    poll.start()
    poll.join(timeout=1)
    assert poll.is_alive(), "the long poll answered at once, with nothing new to say"

    post(chat.url, "after")

    poll.join(timeout=20)  # well before its 30 s are up: it woke
    assert [(status, texts([answer]), answer["cursor"]) for status, answer in answers] == [(200, ["after"], 2)]


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_a_long_poll_with_nothing_new_answers_empty_when_its_wait_runs_out(chat, step):
    post(chat.url, "old news")
    assert call(chat.url + "/messages?since=1&wait=1") == (200, answer_of([], 1, epoch_of(chat)))


BAD_POSTS = [
    ({"data": b"not json"}, "JSON object"),
    ({"data": b'{"user": "Azin", "text": "Hi"}', "content_type": "text/plain"}, "JSON object"),
    ({"body": ["Azin", "Hi"]}, "JSON object"),
    ({"body": {"text": "Hi"}}, "user"),
    ({"body": {"user": "Azin"}}, "text"),
    ({"body": {"user": "", "text": "Hi"}}, "user"),
    ({"body": {"user": "Azin", "text": "   "}}, "text"),
    ({"body": {"user": "Azin", "text": 42}}, "text"),
    ({"body": {"user": None, "text": "Hi"}}, "user"),
]


@pytest.mark.parametrize("step", CHAT_STEPS)
@pytest.mark.parametrize("bad, complaint", BAD_POSTS)
def test_a_bad_post_gets_400_with_an_error_and_changes_nothing(chat, step, bad, complaint):
    post(chat.url, "already here")
    status, answer = call(chat.url + "/messages", "POST", **bad)
    assert status == 400
    assert complaint in answer["error"]
    assert call(chat.url + "/messages")[1]["cursor"] == 1


@pytest.mark.parametrize("step", CHAT_STEPS)
@pytest.mark.parametrize("query", ["since=-1", "since=abc", "since=2.5", "since=" + "9" * 5000, "since=%D9%A3",
                                   "wait=-1", "wait=x", "wait=31", "wait=1e9"])
def test_a_bad_since_or_wait_gets_400_with_an_error(chat, step, query):
    status, answer = call(chat.url + "/messages?" + query)
    assert status == 400
    assert query.split("=")[0] in answer["error"]


# The chat over a WebSocket: steps 3 and 4


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_the_first_frame_holds_everything_after_since_at_once(chat, step):
    assert receive_json(chat.connect("/ws")) == {"command": "messages", **answer_of([], 0, epoch_of(chat))}
    for text in ("one", "two", "three"):
        post(chat.url, text)
    first = receive_json(chat.connect("/ws?since=1"))
    assert (first["command"], texts([first]), first["cursor"]) == ("messages", ["two", "three"], 3)


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_a_posted_message_reaches_every_socket(chat, step):
    sockets = [chat.connect() for _ in range(3)]
    for ws in sockets:
        receive_json(ws)
    post(chat.url, "Hello sockets")
    for ws in sockets:
        assert receive_json(ws) == {"command": "messages",
                                    **answer_of(call(chat.url + "/messages")[1]["messages"], 1, epoch_of(chat))}


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_a_message_sent_over_a_socket_reaches_every_socket_get_and_long_polls(chat, step):
    sender, listener = chat.connect(), chat.connect()
    receive_json(sender), receive_json(listener)
    polls = []
    poll = threading.Thread(target=lambda: polls.append(call(chat.url + "/messages?since=0&wait=30", timeout=20)))
    poll.start()

    send_message(sender, "over the socket")

    assert texts([receive_json(listener)]) == ["over the socket"]
    assert texts([receive_json(sender)]) == ["over the socket"]
    poll.join(timeout=20)
    assert [(status, texts([answer])) for status, answer in polls] == [(200, ["over the socket"])]
    assert texts([call(chat.url + "/messages")[1]]) == ["over the socket"]


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_clients_connecting_while_others_post_get_every_message_exactly_once(chat, step):
    total = 300
    done = threading.Event()

    def post_continuously():
        for n in range(total):
            post(chat.url, f"m{n}", user="poster")
        done.set()

    poster = threading.Thread(target=post_continuously)
    poster.start()
    clients = []
    while not done.is_set() and len(clients) < 30:
        # What the polling page does first, then what the WebSocket page does, with the cursor it got.
        history = call(chat.url + "/messages")[1]
        clients.append((history, chat.connect(f"/ws?since={history['cursor']}")))
    poster.join()
    assert len(clients) >= 5
    for history, ws in clients:
        frames = receive_until(ws, lambda frames: frames and frames[-1]["cursor"] == total)
        assert texts([history]) + texts(frames) == [f"m{n}" for n in range(total)]


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_a_client_that_reconnects_with_its_cursor_gets_what_it_missed(chat, step):
    ws = chat.connect()
    receive_json(ws)
    post(chat.url, "before")
    cursor = receive_json(ws)["cursor"]
    ws.close()
    post(chat.url, "while away 1"), post(chat.url, "while away 2")
    assert texts([receive_json(chat.connect(f"/ws?since={cursor}"))]) == ["while away 1", "while away 2"]


BAD_FRAMES = [
    ("not json", "Unknown command"),
    ('"just a string"', "Unknown command"),
    ("[1, 2]", "Unknown command"),
    ("{}", "Unknown command"),
    ('{"command": "shout"}', "Unknown command"),
    ('{"command": "send-message"}', "JSON object"),
    ('{"command": "send-message", "message": "Hello"}', "JSON object"),
    ('{"command": "send-message", "message": {"user": "Azin"}}', "text"),
    ('{"command": "send-message", "message": {"user": " ", "text": "Hi"}}', "user"),
]
BAD_VOTES = [  # step 4 only
    ('{"command": "like"}', "no message with id None"),
    ('{"command": "like", "id": "1"}', "no message with id 1"),
    ('{"command": "like", "id": true}', "no message with id True"),
    ('{"command": "dislike", "id": 1.0}', "no message with id 1.0"),
    ('{"command": "like", "id": 99}', "no message with id 99"),
    ('{"command": "dislike", "id": 0}', "no message with id 0"),
]


@pytest.mark.parametrize("step, frame, complaint",
                         [(step, *bad) for step in SOCKET_STEPS for bad in BAD_FRAMES]
                         + [("4-likes", *bad) for bad in BAD_VOTES])
def test_bad_frames_get_an_error_frame_change_nothing_and_keep_the_connection(chat, step, frame, complaint):
    post(chat.url, "already here")
    ws = chat.connect()
    receive_json(ws)
    ws.send(frame)
    error = receive_json(ws)
    assert error["command"] == "error"
    assert complaint in error["error"]
    assert call(chat.url + "/messages")[1]["cursor"] == 1
    send_message(ws, "still connected")
    assert texts([receive_json(ws)]) == ["still connected"]


@pytest.mark.parametrize("step", SOCKET_STEPS)
@pytest.mark.parametrize("query", ["since=-1", "since=abc", "since=2.5"])
def test_an_invalid_since_is_refused_with_400_before_the_upgrade(chat, step, query):
    with pytest.raises(InvalidStatus) as refused:
        chat.connect(f"/ws?{query}")
    assert refused.value.response.status_code == 400
    assert b"since must be a whole number" in refused.value.response.body


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_a_frame_over_the_size_limit_closes_the_socket_with_1009(chat, step):
    raw = raw_websocket(chat.port)
    wait_until(lambda: b"messages" in raw.recv(4096))
    size = 70_000  # SOCK_SERVER_OPTIONS: max_message_size 65536
    raw.sendall(bytes([0x81, 0xFF]) + size.to_bytes(8, "big") + bytes(4) + b"x" * size)  # masked with zeros
    raw.settimeout(10)
    received = b""
    while len(received) < 4:
        received += raw.recv(4096)
    # A close frame with code 1009. (flask-sock then writes an HTTP response on the connection, flask-sock
    # #20: a browser notices, and the full app's connection.py prevents it. A step leaves it, for brevity.)
    assert received[:1] == b"\x88" and received[2:4] == (1009).to_bytes(2, "big")


@pytest.mark.parametrize("step, path", [(step, "/hello/ws") for step in ALL_STEPS]
                         + [(step, "/ws") for step in SOCKET_STEPS])
def test_each_steps_socket_pings_and_hangs_up_on_a_client_that_vanished_without_closing(step, path):
    module = load_step(step)
    options = module.app.config["SOCK_SERVER_OPTIONS"]
    assert (options["ping_interval"], options["max_message_size"]) == (25, 65536)
    module.app.config["SOCK_SERVER_OPTIONS"] = {**options, "ping_interval": 0.1}  # no 25 s wait in a test
    live = LiveServer(module.app)
    try:
        vanished = raw_websocket(live.port, path)  # a client that never answers a ping: a laptop shut
        vanished.settimeout(10)
        received = b""
        while chunk := vanished.recv(4096):  # until the server hangs up
            received += chunk
        assert b"\x88\x13\x03\xf0Ping/Pong timeout" in received  # its close frame: 1008, no pong came
    finally:
        live.stop()


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_a_client_of_an_earlier_run_gets_everything_at_once_with_reset_over_http(chat, step):
    for text in ("one", "two", "three"):
        post(chat.url, text)
    epoch = epoch_of(chat)
    assert call(chat.url + f"/messages?since=3&epoch={epoch}")[1] == answer_of([], 3, epoch)
    # A cursor from another run counted other messages: it gets them all, even asking to wait for news.
    status, answer = call(chat.url + "/messages?since=3&epoch=an-earlier-run&wait=30", timeout=10)
    assert (status, texts([answer]), answer["cursor"], answer["epoch"], answer["reset"]) == (
        200, ["one", "two", "three"], 3, epoch, True)


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_a_client_of_an_earlier_run_gets_everything_with_reset_in_its_first_frame(chat, step):
    for text in ("one", "two"):
        post(chat.url, text)
    epoch = epoch_of(chat)
    assert receive_json(chat.connect(f"/ws?since=2&epoch={epoch}")) == {"command": "messages",
                                                                        **answer_of([], 2, epoch)}
    ws = chat.connect("/ws?since=2&epoch=an-earlier-run")
    first = receive_json(ws)
    assert (texts([first]), first["cursor"], first["reset"]) == (["one", "two"], 2, True)
    post(chat.url, "three")
    assert (texts([next_frame := receive_json(ws)]), next_frame["reset"]) == (["three"], False)


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_a_step_refuses_bad_input_in_its_routes_and_turns_no_python_error_into_a_400(step):
    """Bad input is refused by the route that finds it (abort), never by catching ValueError app-wide."""
    handled = {error_class for handlers in load_step(step).app.error_handler_spec[None].values()
               for error_class in handlers}
    assert handled == {HTTPException}


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_closed_and_vanished_sockets_leave_no_threads_behind(chat, step):
    threads_before = threading.active_count()
    for _ in range(30):
        ws = chat.connect()
        receive_json(ws)
        ws.close()  # a polite close frame
        vanishing = raw_websocket(chat.port)
        wait_until(lambda: b"messages" in vanishing.recv(4096, socket.MSG_PEEK))
        vanishing.close()  # no close frame at all
    # Each socket had three threads here: werkzeug's, simple-websocket's and its follower.
    wait_until(lambda: threading.active_count() <= threads_before)
    post(chat.url, "anyone?")
    assert texts([receive_json(chat.connect())]) == ["anyone?"]


# Likes and dislikes: step 4


@pytest.mark.parametrize("step", ["4-likes"])
def test_likes_and_dislikes_over_http_and_frames_reach_everyone(chat, step):
    post(chat.url, "Tea or coffee?")
    voter, watcher = chat.connect(), chat.connect()
    receive_json(voter), receive_json(watcher)

    assert call(chat.url + "/messages/1/like", "POST")[1]["likes"] == 1
    voter.send(json.dumps({"command": "like", "id": 1}))
    voter.send(json.dumps({"command": "dislike", "id": 1}))

    frames = receive_until(watcher, lambda frames: frames and frames[-1]["cursor"] == 4)
    assert [(m["likes"], m["dislikes"]) for m in frames[-1]["messages"]] == [(2, 1)]
    assert [(m["likes"], m["dislikes"]) for m in call(chat.url + "/messages")[1]["messages"]] == [(2, 1)]


@pytest.mark.parametrize("step", ["4-likes"])
def test_the_cursor_counts_changes_and_since_answers_each_changed_message_once_in_id_order(chat, step):
    for text in ("one", "two", "three"):
        post(chat.url, text)
    for vote in ("3/like", "1/dislike", "3/like"):
        call(chat.url + f"/messages/{vote}", "POST")

    assert call(chat.url + "/messages")[1]["cursor"] == 6  # three messages, three votes
    since = call(chat.url + "/messages?since=3")[1]
    assert [(m["id"], m["likes"], m["dislikes"]) for m in since["messages"]] == [(1, 0, 1), (3, 2, 0)]
    assert since["cursor"] == 6
    first = receive_json(chat.connect("/ws?since=4"))  # after the first like
    assert [(m["id"], m["likes"], m["dislikes"]) for m in first["messages"]] == [(1, 0, 1), (3, 2, 0)]


@pytest.mark.parametrize("step", ["4-likes"])
@pytest.mark.parametrize("path", ["/messages/2/like", "/messages/0/dislike", "/messages/99/like"])
def test_a_vote_for_a_message_that_isnt_there_gets_404_with_an_error_and_changes_nothing(chat, step, path):
    post(chat.url, "the only one")
    status, answer = call(chat.url + path, "POST")
    assert status == 404
    assert "no message with id" in answer["error"]
    assert call(chat.url + "/messages")[1]["cursor"] == 1


# The pages, in Chromium


try:
    from playwright.sync_api import expect
except ImportError:
    if ON_CI:
        raise
    expect = None  # conftest's `browser` fixture skips the tests that need it


@pytest.fixture
def open_page(browser):
    """Open pages as separate people (a browser context each); at the end, fail on any JavaScript error."""
    opener = PageOpener(browser)

    def open_page(url, expected_errors=(), route_sockets=None, clock=False):
        """Open `url` as a new person; console errors holding one of `expected_errors` are no problem.

        With `clock`, the page's timers run on Playwright's clock, so that `retry_until` can skip a wait.
        """
        def route(page):  # the page's WebSockets go through the test's handler
            page.route_web_socket("**/ws*", route_sockets)

        return opener(url, expected_errors=expected_errors, before_goto=route if route_sockets else None,
                      clock=clock)

    yield open_page
    problems = list(opener.problems)
    opener.close()
    assert problems == []


def send(page, user, text):
    """Fill in the form as a person would, and press Enter in the message."""
    page.get_by_label("Name").fill(user)
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def retry_until(page, condition):
    """Skip the waits before the page's tries to reach the server (1 or 2 s) until `condition()` holds.

    The page must have been opened with `clock=True`. Its clock moves on a
    retry's wait at a time; the page still tries, and fails, as it would have.
    """
    wait_until(lambda: condition() or page.clock.fast_forward(2000))


@pytest.mark.parametrize("step", ["1-hello"])
def test_the_hello_page_shows_what_the_server_says(chat, open_page, step):
    page = open_page(chat.url + "/")
    expect(page.get_by_role("status")).to_have_text("connected")
    expect(page.get_by_role("heading")).to_have_text("The server says: Hello")


PAGE_PAIRS = [("2-polling", "/", "/"), ("3-websocket", "/", "/websocket"), ("3-websocket", "/websocket", "/"),
              ("4-likes", "/", "/websocket"), ("4-likes", "/websocket", "/")]


@pytest.mark.parametrize("step, sender_path, reader_path", PAGE_PAIRS)
def test_a_message_sent_on_one_page_appears_on_the_other(chat, open_page, step, sender_path, reader_path):
    sender, reader = open_page(chat.url + sender_path), open_page(chat.url + reader_path)
    for page in (sender, reader):
        expect(page.get_by_role("status")).to_have_text("connected")
        expect(page.get_by_role("button", name="Send")).to_be_visible()

    send(sender, "Azin", f"Hello from {sender_path}")

    for page in (sender, reader):
        expect(page.get_by_role("listitem")).to_have_count(1)
        expect(page.get_by_role("listitem")).to_contain_text("Azin")
        expect(page.get_by_role("listitem")).to_contain_text(f"Hello from {sender_path}")
    expect(sender.get_by_label("Message")).to_have_value("")


@pytest.mark.parametrize("step, path", [(step, "/") for step in CHAT_STEPS]
                         + [(step, "/websocket") for step in SOCKET_STEPS])
def test_a_page_shows_the_servers_error_in_its_words(chat, open_page, step, path):
    page = open_page(chat.url + path, expected_errors=["status of 400"])  # the browser logs a refusal
    expect(page.get_by_role("status")).to_have_text("connected")

    send(page, "   ", "Hello?")  # a name of spaces passes the browser's check, not the server's

    expect(page.get_by_role("alert")).to_contain_text("a user and a text")
    if path == "/":  # a POST has an answer to wait for; a frame has none, so that page doesn't wait
        expect(page.get_by_label("Message")).to_have_value("Hello?")
    assert call(chat.url + "/messages")[1]["cursor"] == 0


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_the_websocket_page_reconnects_from_its_cursor_and_misses_nothing(chat, open_page, step):
    post(chat.url, "before")
    sockets = []  # each connection the page opens, passed on to the server

    def pass_on(ws):
        sockets.append(ws)
        ws.connect_to_server()

    # flask-sock, left alone, writes an HTTP response after the closing handshake (flask-sock #20), which
    # Chromium reports when the page is still there to hear it. The app's connection.py prevents that.
    page = open_page(chat.url + "/websocket", route_sockets=pass_on, expected_errors=["Invalid frame header"],
                     clock=True)
    expect(page.get_by_role("listitem")).to_have_count(1)
    page.clock.pause_at(page.evaluate("Date.now()") + 10)  # its retry waits until the test moves the clock

    sockets[0].close()  # the connection drops
    expect(page.get_by_role("status")).to_have_text("reconnecting")
    post(chat.url, "while away")  # while the page is away, and nothing of it goes out on the old socket
    retry_until(page, lambda: len(sockets) == 2)  # it connects again

    expect(page.get_by_role("listitem")).to_have_count(2)
    expect(page.get_by_role("listitem").last).to_contain_text("while away")
    expect(page.get_by_role("status")).to_have_text("connected")
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(ws.url).query, keep_blank_values=True) for ws in sockets]
    assert queries == [{"since": ["0"], "epoch": [""]}, {"since": ["1"], "epoch": [epoch_of(chat)]}]


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_html_in_a_name_or_a_message_is_shown_as_text_and_never_run(chat, open_page, step):
    user, text = '<img src=x onerror="window.pwned=1">', "<script>window.pwned=1</script><b>bold?</b>"
    page = open_page(chat.url + "/")
    expect(page.get_by_role("status")).to_have_text("connected")

    post(chat.url, text, user=user)

    expect(page.get_by_role("listitem")).to_contain_text([user])
    expect(page.get_by_role("listitem")).to_contain_text([text])
    for tag in ("img", "script", "b"):
        expect(page.get_by_role("list").locator(tag)).to_have_count(0)
    assert page.evaluate("typeof window.pwned") == "undefined"


@pytest.mark.parametrize("step, voter_path, watcher_path", [("4-likes", "/", "/websocket"),
                                                            ("4-likes", "/websocket", "/")])
def test_a_like_clicked_on_one_page_shows_on_the_other(chat, open_page, step, voter_path, watcher_path):
    post(chat.url, "Tea or coffee?")
    voter, watcher = open_page(chat.url + voter_path), open_page(chat.url + watcher_path)
    for page in (voter, watcher):
        expect(page.get_by_role("button", name="Like 0", exact=True)).to_be_visible()

    voter.get_by_role("button", name="Like 0", exact=True).click()
    expect(voter.get_by_role("button", name="Like 1", exact=True)).to_be_visible()
    voter.get_by_role("button", name="Dislike 0", exact=True).click()

    for page in (voter, watcher):
        expect(page.get_by_role("button", name="Like 1", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Dislike 1", exact=True)).to_be_visible()
        expect(page.get_by_role("listitem")).to_have_count(1)  # replaced, not added again


@pytest.mark.parametrize("step", SOCKET_STEPS)
def test_a_step_page_ignores_a_frame_whose_command_it_does_not_know(chat, open_page, step):
    routes = []  # the page's sockets: the test speaks to the page through them, as the server would

    def pass_on(ws):
        ws.connect_to_server()
        routes.append(ws)

    page = open_page(chat.url + "/websocket", route_sockets=pass_on, expected_errors=["Invalid frame header"])
    expect(page.get_by_role("status")).to_have_text("connected")
    post(chat.url, "before")
    expect(page.get_by_role("listitem")).to_have_count(1)

    routes[0].send(json.dumps({"command": "typing", "user": "Bo"}))  # a command from a newer server, say
    post(chat.url, "after")

    expect(page.get_by_role("listitem")).to_have_count(2)  # the next frame is applied as ever
    expect(page.get_by_role("listitem").last).to_contain_text("after")
    expect(page.get_by_role("status")).to_have_text("connected")
    expect(page.get_by_role("alert")).to_have_text("")
    # open_page fails the test on any uncaught error: the old page threw "answer.messages is not iterable".


@pytest.mark.parametrize("step", CHAT_STEPS)
def test_after_a_restart_each_open_page_shows_exactly_the_new_servers_messages(start, tmp_path, open_page, step):
    """What `flask --debug run` does at every save: a new process, an empty chat, ids from 1 again."""
    old = start(StepRun(f"steps/{step}/app", cwd=PROJECT, log=tmp_path / "old.log"))
    paths = ["/", "/websocket"] if step in SOCKET_STEPS else ["/"]
    # While the server is away, the browser logs each failed attempt to reach it.
    away = ["ERR_CONNECTION_REFUSED", "ERR_EMPTY_RESPONSE", "ERR_CONNECTION_RESET", "WebSocket connection to",
            "Invalid frame header"]
    pages = [open_page(old.url + path, expected_errors=away, clock=True) for path in paths]
    for text in ("old one", "old two", "old three"):
        post(old.url, text)
    for page in pages:
        expect(page.get_by_role("listitem")).to_have_count(3)
    old.stop()
    new = start(StepRun(f"steps/{step}/app", cwd=PROJECT, log=tmp_path / "new.log", port=old.port))
    post(new.url, "new one")  # id 1 again, and the new cursor (1) is below what the pages hold (3)
    for page in pages:
        retry_until(page, lambda: page.get_by_role("listitem").count() == 1)
        expect(page.get_by_role("listitem")).to_have_count(1, timeout=20_000)
        expect(page.get_by_role("listitem")).to_contain_text(["new one"])
        expect(page.get_by_role("status")).to_have_text("connected")
    post(new.url, "new two")  # and the pages follow the new server from there
    for page in pages:
        expect(page.get_by_role("listitem")).to_have_count(2, timeout=20_000)
        expect(page.get_by_role("listitem")).to_contain_text(["new one", "new two"])
