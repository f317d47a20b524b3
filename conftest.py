"""Fixtures shared by the tests: the app, Flask's test client, real servers, Redis and Chromium.

The helpers they use, and that tests import, are in helpers.py.
"""

import signal
from contextlib import ExitStack
from pathlib import Path

import pytest

from app import create_app
from helpers import (CHROMIUM, CHROMIUM_ARGS, ON_CI, FlaskRun, Gunicorn, LiveServer, close_app, flask_env,
                     redis_settings, start_redis_server)
from store import Store


def pytest_configure(config):
    config.addinivalue_line("markers", "config(**settings): settings for the test's app")
    # A shell starts a background job with SIGINT ignored, and the servers the tests start would
    # inherit that. With a handler here instead, they start with Ctrl+C's default, as from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def store_kind():
    """The store the test's app uses: the in-memory one, unless the test is parametrized."""
    return "memory"


@pytest.fixture
def store_settings(request, store_kind):
    """The settings that choose the store: for Redis, the tests' own redis-server, emptied."""
    if store_kind == "memory":
        return {}
    redis_server = request.getfixturevalue("redis_server")
    redis_server.client().flushall()
    return redis_settings(redis_server.url)


@pytest.fixture
def make_store(store_kind, store_settings):
    """A function that makes an empty store of the kind the test runs with, without an app."""
    made = []

    def make(**settings):
        if store_kind == "memory":
            made.append(Store(**settings))
        else:
            from redis_store import RedisStore

            made.append(RedisStore(store_settings["REDIS_URL"], **settings))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def app(request, store_settings):
    """A fresh app with an empty store; a test changes its settings with @pytest.mark.config(KEY=value)."""
    settings = request.node.get_closest_marker("config")
    app = create_app({"TESTING": True, **store_settings, **(settings.kwargs if settings else {})})
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    """Flask's test client, for HTTP requests without a network."""
    return app.test_client()


@pytest.fixture
def store(app):
    """The app's store, to look at what requests changed."""
    return app.extensions["chat"].store


@pytest.fixture
def server(app):
    """A live server running the `app` fixture."""
    live = LiveServer(app)
    yield live
    live.stop()


@pytest.fixture
def flask_run(store_settings):
    """A live `flask run` subprocess on a free port, stopped after the test."""
    running = FlaskRun(env=flask_env(store_settings)).start()
    yield running
    running.stop()


@pytest.fixture
def start():
    """A function that starts servers (FlaskRun, Gunicorn, RedisServer); all stop after the test.

    `start(server)` returns the server; `start(a, b)` starts both side by side.
    Each is stopped whatever failed, the test or the stopping of another.
    """
    with ExitStack() as started:

        def start(*servers):
            for server in servers:
                started.callback(server.stop)
            if len(servers) > 1:
                for server in servers:
                    if hasattr(server, "launch"):  # processes import and bind at once, not in turn
                        server.launch()
            for server in servers:
                server.start()
            return servers[0] if len(servers) == 1 else None

        yield start


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole test session; tests that use it empty it first."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def broadcaster(app):
    """The app's broadcaster, to look at its registry of sockets."""
    return app.extensions["chat"].broadcaster


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole test session, for test_browser.py and test_steps.py alike.

    Playwright's sync API runs one instance at a time, so the browser tests of
    every module share this one. Without Playwright or Chromium the test is
    skipped, except on CI (CI=true), where that is an error.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ON_CI:
            raise
        pytest.skip("Playwright is not installed: pip install -r requirements-dev.txt")
    executable = CHROMIUM if Path(CHROMIUM).exists() else None
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except PlaywrightError as error:
            first_line = str(error).splitlines()[0]
            reason = f"Chromium would not start ({CHROMIUM} or Playwright's own): {first_line}"
            if ON_CI:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        yield chromium
        chromium.close()


@pytest.fixture
def gunicorn(request, tmp_path):
    """The production server (`Gunicorn`) on a free port; settings from @pytest.mark.config."""
    marker = request.node.get_closest_marker("config")
    running = Gunicorn(flask_env(marker.kwargs if marker else {}), log=tmp_path / "gunicorn.log").start()
    yield running
    running.stop()
