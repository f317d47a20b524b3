"""HTTP tests with Flask's test client: pages, the JSON API, and its errors."""

import json
import threading
import time
import urllib.request

import pytest

from app import create_app
from helpers import close_app, flask_env, on_both_stores

def post_message(client, user="Azin", text="Hello!"):
    response = client.post("/messages", json={"user": user, "text": text})
    assert response.status_code == 201
    return response.get_json()


@pytest.mark.parametrize("path", ["/", "/polling", "/websocket", "/hello"])
def test_every_page_is_served_as_html(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"


def test_landing_page_links_to_the_three_pages(client):
    html = client.get("/").get_data(as_text=True)
    for path in ("/hello", "/polling", "/websocket"):
        assert f'href="{path}"' in html


@pytest.mark.parametrize("path, script", [("/polling", "polling.js"), ("/websocket", "websocket.js")])
def test_chat_pages_share_the_chat_and_add_only_their_transport(client, path, script):
    html = client.get(path).get_data(as_text=True)
    assert script in html
    assert '<label>Name <input name="user"' in html
    assert '<label>Message <textarea name="text"' in html  # a textarea: text may hold lines
    assert 'role="status"' in html
    assert '{"text": 1000, "user": 50}' in html


@on_both_stores
def test_posted_message_is_stored_and_returned_with_201(client):
    message = post_message(client, "  Azin ", " Hello! ")
    assert message["id"] == 1
    assert (message["user"], message["text"], message["likes"], message["dislikes"]) == (
        "Azin", "Hello!", 0, 0)
    answer = client.get("/messages").get_json()
    assert answer["messages"] == [message]
    assert answer["cursor"] == 1
    assert answer["reset"] is False


@on_both_stores
def test_get_messages_since_a_cursor_returns_only_later_changes(client):
    for n in range(3):
        post_message(client, text=f"message {n}")
    client.post("/messages/1/like")
    answer = client.get("/messages?since=3").get_json()
    assert [m["id"] for m in answer["messages"]] == [1]
    assert answer["messages"][0]["likes"] == 1
    assert answer["cursor"] == 4


@on_both_stores
def test_like_and_dislike_return_the_updated_message(client):
    post_message(client)
    assert client.post("/messages/1/like").get_json()["likes"] == 1
    assert client.post("/messages/1/like").get_json()["likes"] == 2
    disliked = client.post("/messages/1/dislike")
    assert disliked.status_code == 200
    assert (disliked.get_json()["likes"], disliked.get_json()["dislikes"]) == (2, 1)


@on_both_stores
def test_a_stale_epoch_gets_everything_with_reset(client):
    post_message(client)
    answer = client.get("/messages?since=1&epoch=from-before-a-restart").get_json()
    assert answer["reset"] is True
    assert len(answer["messages"]) == 1
    current = answer["epoch"]
    assert client.get(f"/messages?since=1&epoch={current}").get_json()["reset"] is False


@on_both_stores
def test_an_app_restart_starts_a_new_epoch_in_memory_but_not_on_redis(store_settings, store_kind):
    apps = [create_app(store_settings) for _ in range(2)]  # the same app started twice
    epochs = [app.test_client().get("/messages").get_json()["epoch"] for app in apps]
    for app in apps:
        close_app(app)
    assert (epochs[0] != epochs[1]) == (store_kind == "memory")


@on_both_stores
def test_long_poll_is_answered_when_another_client_posts(app, client):
    poster = threading.Timer(0.3, lambda: app.test_client().post(
        "/messages", json={"user": "Bo", "text": "wake up"}))
    poster.start()
    started = time.monotonic()
    answer = client.get("/messages?since=0&wait=20").get_json()
    elapsed = time.monotonic() - started
    poster.join()
    assert [m["text"] for m in answer["messages"]] == ["wake up"]
    assert elapsed < 10  # answered by the change, not by the 20 s timeout


@on_both_stores
def test_long_poll_with_nothing_new_answers_empty_when_wait_runs_out(client):
    started = time.monotonic()
    answer = client.get("/messages?since=0&wait=1").get_json()
    assert answer["messages"] == []
    assert time.monotonic() - started >= 0.9


@on_both_stores
def test_long_poll_with_changes_already_waiting_answers_at_once(client):
    post_message(client)
    started = time.monotonic()
    assert len(client.get("/messages?since=0&wait=20").get_json()["messages"]) == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "query, complaint",
    [
        ("since=-1", "since must be a whole number"),
        ("since=abc", "since must be a whole number"),
        ("since=1.5", "since must be a whole number"),
        ("since=%D9%A3", "since must be a whole number"),  # an Arabic-Indic digit
        ("wait=-1", "wait must be a whole number"),
        ("wait=x", "wait must be a whole number"),
        ("wait=31", "wait must be at most 30"),
    ],
)
def test_bad_query_arguments_get_400_with_a_reason(client, query, complaint):
    response = client.get(f"/messages?{query}")
    assert response.status_code == 400
    assert complaint in response.get_json()["error"]


@pytest.mark.config(MAX_WAIT=2)
def test_max_wait_is_configurable(client):
    assert client.get("/messages?wait=3").status_code == 400


BAD_BODIES = [
    ("not json", "not valid JSON"),
    ('"a string"', "JSON object"),
    ("[1, 2]", "JSON object"),
    ("[" * 50000, "not valid JSON"),
    ("{}", "is missing"),
    ('{"user": "Azin"}', "Message (text) is missing"),
    ('{"text": "Hello"}', "Name (user) is missing"),
    ('{"user": "", "text": "Hello"}', "must not be empty"),
    ('{"user": "   ", "text": "Hello"}', "must not be empty"),
    ('{"user": "Azin", "text": "  "}', "must not be empty"),
    ('{"user": 7, "text": "Hello"}', "must be text"),
    ('{"user": "Azin", "text": ["Hello"]}', "must be text"),
    ('{"user": "%s", "text": "Hello"}' % ("x" * 51), "too long"),
    ('{"user": "Azin", "text": "%s"}' % ("x" * 1001), "too long"),
    ('{"user": "\\udc00", "text": "Hello"}', "invalid character"),
]


@pytest.mark.parametrize("body, complaint", BAD_BODIES)
def test_bad_post_bodies_get_400_with_a_reason_and_change_nothing(client, store, body, complaint):
    response = client.post("/messages", data=body, content_type="application/json")
    assert response.status_code == 400
    assert complaint in response.get_json()["error"]
    assert store.cursor == 0


def test_a_body_over_the_size_limit_gets_413_and_changes_nothing(client, store):
    text = "x" * 70000
    response = client.post("/messages", json={"user": "Azin", "text": text})
    assert response.status_code == 413
    assert "error" in response.get_json()
    assert store.cursor == 0


@pytest.mark.parametrize("vote", ["like", "dislike"])
def test_voting_on_an_unknown_message_gets_404_and_changes_nothing(client, store, vote):
    post_message(client)
    response = client.post(f"/messages/2/{vote}")
    assert response.status_code == 404
    assert "no message with id 2" in response.get_json()["error"]
    assert store.cursor == 1


@pytest.mark.parametrize("path", ["/messages/abc/like", "/messages/-1/like", "/messages/1/love"])
def test_malformed_vote_urls_get_a_json_404(client, path):
    post_message(client)
    response = client.post(path)
    assert response.status_code == 404
    assert "error" in response.get_json()


@on_both_stores
@pytest.mark.config(MAX_MESSAGES=2)
def test_max_messages_caps_history(client):
    for n in range(4):
        client.post("/messages", json={"user": "Azin", "text": f"message {n}"})
    assert [m["id"] for m in client.get("/messages").get_json()["messages"]] == [3, 4]


@on_both_stores
def test_configuration_comes_from_flask_environment_variables(monkeypatch, store_settings):
    for key, value in flask_env(store_settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLASK_MAX_MESSAGES", "1")
    monkeypatch.setenv("FLASK_MAX_WAIT", "5")
    app = create_app()
    client = app.test_client()
    client.post("/messages", json={"user": "Azin", "text": "one"})
    client.post("/messages", json={"user": "Azin", "text": "two"})
    assert [m["text"] for m in client.get("/messages").get_json()["messages"]] == ["two"]
    assert client.get("/messages?wait=6").status_code == 400
    close_app(app)


def test_answers_over_http_and_websocket_never_pass_max_answer_bytes_and_long_messages_lose_nothing(
        server, store):
    # 200 messages of 1,000 emoji: 2.5 MB of JSON escaped, about 0.8 MB as UTF-8.
    for n in range(200):
        store.add("Azin", f"{n:03} " + "😀" * 996)
    limit = server.app.config["MAX_ANSWER_BYTES"]

    def get(path):
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            body = response.read()
        assert len(body) <= limit
        return json.loads(body)

    first = get("/messages")
    pages = [first]
    while pages[-1]["more"]:  # "Load older", down to the first message
        pages.append(get(f"/messages?before={pages[-1]['messages'][0]['id']}"))
    catching_up = [get(f"/messages?since=0&epoch={first['epoch']}")]
    while catching_up[-1]["cursor"] < store.cursor:  # a polling client that was away
        catching_up.append(get(f"/messages?since={catching_up[-1]['cursor']}&epoch={first['epoch']}"))
    ws = server.connect(f"/ws?since=0&epoch={first['epoch']}")  # a socket that was away
    frames = []
    while not frames or frames[-1]["cursor"] < store.cursor:
        frame = ws.recv(timeout=10)
        assert len(frame.encode()) <= limit
        frames.append(json.loads(frame))

    for answers in (pages, catching_up, frames):
        assert len(answers) > 2  # several answers, each holding fewer than a page...
        ids = [message["id"] for answer in answers for message in answer["messages"]]
        assert sorted(ids) == list(range(1, 201))  # ...and together every message, once
    assert [frame["cursor"] for frame in frames] == [answer["cursor"] for answer in catching_up]
