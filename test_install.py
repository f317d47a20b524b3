"""A clean install: the README's commands, word for word, in a copy of the project with a fresh .venv.

The fresh virtual environment gets `requirements.txt` alone, by the README's own
install command, so a package that only the test requirements bring in (as
`packaging` was for gunicorn's gevent worker) can't hide a missing one. pip's
cache makes it take seconds to a minute. Ports are the only words changed:
through FLASK_RUN_PORT and GUNICORN_CMD_ARGS where the README names none.
"""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import ON_CI, PROJECT, free_port, receive_json, receive_until, request, texts, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the README's commands are for a Unix shell")

README = (PROJECT / "README.md").read_text()


def readme_command(*words):
    """The first command line in the README's shell blocks that holds every one of `words`."""
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if all(word in line for word in words):
                return line
    raise AssertionError(f"the README gives no command with {words}")


class Command:
    """A README command line run by the shell in the project's copy, as its own process group."""

    def __init__(self, line, folder, port, env=None):
        self.line = line
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder.parent / f"{port}.log"
        # As from a terminal: no trace of the tests' own virtual environment.
        clean = {key: value for key, value in os.environ.items()
                 if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not key.startswith("FLASK_")}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(["sh", "-c", line], cwd=folder, env={**clean, **(env or {})},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_the_page(self, timeout):
        """Wait until GET / answers; fail, with the log, if the command ends first or takes too long."""

        def answers():
            assert self.process.poll() is None, f"`{self.line}` ended:\n{self.log.read_text()}"
            try:
                return request("GET", self.url + "/", timeout=5).status == 200
            except OSError:
                return False

        wait_until(answers, timeout=timeout)
        return self

    def stop(self):
        """SIGTERM to every process of the command, as `kill` on them would; kill them if they linger."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"`{self.line}` did not stop within 20 s of SIGTERM")


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """A copy of the project without its .venv, and a fresh one made by the README's install command."""
    folder = tmp_path_factory.mktemp("clean") / "chat"
    shutil.copytree(PROJECT, folder, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", "*.log", "node_modules"))
    return folder


def check_serving_then_stopping(command):
    """Load a page, open a WebSocket, post a message it receives, then SIGTERM: the socket hears 1001."""
    assert b"<form" in request("GET", command.url + "/websocket").body
    with connect(f"ws://127.0.0.1:{command.port}/ws", open_timeout=10) as ws:
        receive_json(ws)
        post(command.url, "from a clean install")
        assert "from a clean install" in texts(receive_until(ws, lambda frames: texts(frames)))
        command.stop()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def post(url, text):
    """POST a message to the chat at `url`."""
    assert request("POST", url + "/messages", {"user": "install", "text": text}).status == 201


def test_the_readme_install_command_then_its_production_command_serve_and_stop_with_1001(project_copy):
    # The first command of the README: make .venv from requirements.txt alone, then flask run.
    install_and_run = readme_command("python3 -m venv .venv", "requirements.txt", "flask run")
    assert "requirements-dev" not in install_and_run
    port = free_port()
    command = Command(install_and_run, project_copy, port, {"FLASK_RUN_PORT": str(port)})
    try:
        # pip fetches from its cache, or the network: minutes at most.
        command.wait_for_the_page(timeout=600)
        check_serving_then_stopping(command)
    finally:
        command.stop()
    installed = subprocess.run([str(project_copy / ".venv/bin/pip"), "freeze"], capture_output=True, text=True)
    for test_only in ("pytest", "playwright", "websockets"):
        assert f"{test_only}==" not in installed.stdout.lower()

    production = readme_command(".venv/bin/gunicorn 'app:create_app()'")
    assert production == ".venv/bin/gunicorn 'app:create_app()'"
    port = free_port()
    command = Command(production, project_copy, port, {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"})
    try:
        command.wait_for_the_page(timeout=60)
        check_serving_then_stopping(command)
    finally:
        command.stop()


def test_the_readme_redis_commands_serve_one_chat_from_a_clean_install(project_copy, tmp_path):
    if not shutil.which("redis-server"):
        if ON_CI:
            pytest.fail("redis-server is not installed", pytrace=False)
        pytest.skip("redis-server is not installed")
    if not (project_copy / ".venv/bin/gunicorn").exists():
        pytest.skip("needs the .venv of the test before")  # run alone with -k: nothing to test on
    redis_port, flask_port, gunicorn_port = free_port(), free_port(), free_port()
    redis_line = readme_command("redis-server --port 6379").replace("6379", str(redis_port)).replace(
        "--dir /tmp", f"--dir {tmp_path}")
    flask_line = readme_command("FLASK_REDIS_URL=redis://localhost:6379/0", "flask run --port 5000").replace(
        "6379", str(redis_port)).replace("5000", str(flask_port))
    gunicorn_line = readme_command("FLASK_REDIS_URL=redis://localhost:6379/0", "gunicorn -w 4").replace(
        "6379", str(redis_port)).replace("0.0.0.0:8000", f"127.0.0.1:{gunicorn_port}")
    commands = [Command(redis_line, project_copy, redis_port)]
    try:
        # Each is in `commands` before it is waited for, so that `finally` stops it whatever fails.
        commands.append(Command(flask_line, project_copy, flask_port))
        commands.append(Command(gunicorn_line, project_copy, gunicorn_port))
        flask_run, gunicorn = commands[1:]
        for command in (flask_run, gunicorn):
            command.wait_for_the_page(timeout=60)
        with connect(f"ws://127.0.0.1:{gunicorn_port}/ws", open_timeout=10) as ws:
            receive_json(ws)
            post(flask_run.url, "one chat")  # posted to flask run, seen through gunicorn's workers
            assert "one chat" in texts(receive_until(ws, lambda frames: texts(frames)))
            gunicorn.stop()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    finally:
        for command in reversed(commands):
            command.stop()
