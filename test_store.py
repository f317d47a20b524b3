"""Unit tests of the store alone: no Flask, no sockets."""

import json
import threading
import time
from datetime import datetime, timezone

import pytest

from helpers import BOTH_STORES

pytestmark = pytest.mark.parametrize("store_kind", BOTH_STORES)


def test_new_store_is_empty_at_cursor_zero(make_store):
    store = make_store()
    assert store.since(0) == {"messages": [], "cursor": 0, "epoch": store.epoch, "reset": False, "more": False}


def test_messages_get_ids_in_order_and_each_change_moves_the_cursor_by_one(make_store):
    store = make_store()
    first = store.add("Azin", "Hello!")
    second = store.add("Bo", "Hi")
    assert (first["id"], second["id"]) == (1, 2)
    assert store.cursor == 2
    store.like(1)
    store.dislike(2)
    assert store.cursor == 4


def test_a_message_has_the_contracts_fields_and_a_utc_timestamp(make_store):
    message = make_store().add("  Azin ", " Hello! ")
    assert set(message) == {"id", "user", "text", "timestamp", "likes", "dislikes"}
    assert (message["user"], message["text"], message["likes"], message["dislikes"]) == (
        "Azin", "Hello!", 0, 0)
    stored_at = datetime.fromisoformat(message["timestamp"])
    assert stored_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - stored_at).total_seconds()) < 5


def test_since_returns_only_what_changed_after_the_cursor_in_id_order(make_store):
    store = make_store()
    for n in range(5):
        store.add("Azin", f"message {n}")
    store.like(4)
    store.like(2)  # changed after 4, but still listed after it by id
    answer = store.since(5)
    assert [m["id"] for m in answer["messages"]] == [2, 4]
    assert answer["cursor"] == 7


def test_since_lists_a_message_changed_many_times_once_in_its_current_state(make_store):
    store = make_store()
    store.add("Azin", "Hello!")
    for _ in range(3):
        store.like(1)
    store.dislike(1)
    assert store.since(0)["messages"] == [store.since(4)["messages"][0]]
    assert store.since(0)["messages"][0]["likes"] == 3
    assert store.since(0)["messages"][0]["dislikes"] == 1


def test_since_at_the_latest_cursor_is_empty(make_store):
    store = make_store()
    store.add("Azin", "Hello!")
    assert store.since(store.cursor)["messages"] == []


def test_answers_are_copies_that_later_changes_do_not_alter(make_store):
    store = make_store()
    store.add("Azin", "Hello!")
    before = store.since(0)["messages"][0]
    store.like(1)
    assert before["likes"] == 0


def test_another_epoch_gets_everything_with_reset(make_store):
    store = make_store()
    store.add("Azin", "Hello!")
    store.add("Bo", "Hi")
    answer = store.since(2, epoch="an-old-epoch")
    assert answer["reset"] is True
    assert [m["id"] for m in answer["messages"]] == [1, 2]
    assert store.since(2, epoch=store.epoch)["reset"] is False


def test_a_cursor_the_store_never_gave_out_gets_everything_with_reset(make_store):
    store = make_store()
    store.add("Azin", "Hello!")
    answer = store.since(99)
    assert answer["reset"] is True
    assert len(answer["messages"]) == 1


def test_a_second_store_is_a_new_chat_in_memory_and_the_same_chat_on_redis(make_store, store_kind):
    first = make_store()
    first.add("Azin", "Hello!")
    second = make_store()
    if store_kind == "memory":
        assert second.epoch != first.epoch
        assert second.since(0)["messages"] == []
    else:  # a second process on the same Redis: same epoch, same messages
        assert second.epoch == first.epoch
        assert [m["text"] for m in second.since(0)["messages"]] == ["Hello!"]


def test_history_is_capped_and_the_oldest_messages_are_dropped(make_store):
    store = make_store(max_messages=3)
    for n in range(5):
        store.add("Azin", f"message {n}")
    assert [m["id"] for m in store.since(0)["messages"]] == [3, 4, 5]
    with pytest.raises(KeyError):
        store.like(1)
    assert store.add("Azin", "more")["id"] == 6  # ids are never reused


def test_liking_an_unknown_message_raises_key_error_and_changes_nothing(make_store):
    store = make_store()
    with pytest.raises(KeyError):
        store.like(1)
    with pytest.raises(KeyError):
        store.dislike(1)
    assert store.cursor == 0


@pytest.mark.parametrize(
    "user, text, complaint",
    [
        ("", "Hello", "must not be empty"),
        ("   ", "Hello", "must not be empty"),
        ("Azin", "", "must not be empty"),
        ("Azin", " \n ", "must not be empty"),
        ("x" * 51, "Hello", "too long"),
        ("Azin", "x" * 1001, "too long"),
        (None, "Hello", "is missing"),
        (["Azin"], "Hello", "must be text"),
        ("Azin", 42, "must be text"),
        ("Azin", "half a character: \ud800", "invalid character"),
        ("Azin", "two\u2028lines", "line or paragraph separators"),
        ("Azin", "two\u2029paragraphs", "line or paragraph separators"),
        ("Azin", "Z" + "\u0301" * 31, "combining marks"),
        ("Azin\nBo", "Hello", "control characters"),  # a name is one line
        ("Azin\tBo", "Hello", "control characters"),
        ("Azin", "bell \x07", "control characters"),
        ("Azin", "carriage \r return", "control characters"),
        ("Azin", "escape \x1b[2J", "control characters"),
    ],
)
def test_invalid_messages_raise_value_error_and_change_nothing(make_store, user, text, complaint):
    store = make_store()
    with pytest.raises(ValueError, match=complaint):
        store.add(user, text)
    assert store.cursor == 0
    assert store.since(0)["messages"] == []


@pytest.mark.parametrize("text, stored", [
    ("def f():\n\treturn 1", "def f():\n\treturn 1"),  # code pasted in class keeps its lines and tabs
    ("Windows\r\nlines\r\n", "Windows\nlines"),
    ("Z" + "\u0301" * 30 + " and é", "Z" + "\u0301" * 30 + " and é"),  # 30 marks in a row: still text
])
def test_text_keeps_its_line_breaks_and_tabs(make_store, text, stored):
    store = make_store()
    assert store.add("Azin", text)["text"] == stored
    assert store.since(0)["messages"][0]["text"] == stored


def test_a_page_before_an_id_past_the_newest_is_the_newest_page_and_never_an_empty_one_with_more(
        make_store):
    store = make_store()
    empty = store.before(10**6, 5)
    assert (empty["messages"], empty["more"]) == ([], False)
    for n in range(1, 8):
        store.add("Azin", f"m{n}")
    page = store.before(10**6, 5)
    assert [m["id"] for m in page["messages"]] == [3, 4, 5, 6, 7]
    assert page["more"] is True
    assert store.before(8, 5) == page


def test_limits_are_counted_after_trimming(make_store):
    store = make_store()
    assert store.add(" " + "x" * 50 + " ", " " + "y" * 1000 + " ")["id"] == 1


def test_wait_returns_as_soon_as_something_changes(make_store):
    store = make_store()
    threading.Timer(0.2, store.add, ("Azin", "Hello!")).start()
    started = time.monotonic()
    assert store.wait(0, timeout=10) is True
    assert time.monotonic() - started < 5


def test_wait_gives_up_after_the_timeout_when_nothing_changes(make_store):
    assert make_store().wait(0, timeout=0.1) is False


def test_concurrent_adds_from_many_threads_lose_nothing(make_store):
    store = make_store(page_size=10000)  # one page holds them all
    threads_count, per_thread = 8, 250

    def add_many(name):
        for n in range(per_thread):
            store.add(name, f"{name} {n}")

    threads = [threading.Thread(target=add_many, args=(f"user{t}",)) for t in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    messages = store.since(0)["messages"]
    total = threads_count * per_thread
    assert store.cursor == total
    assert [m["id"] for m in messages] == list(range(1, total + 1))
    assert len({m["text"] for m in messages}) == total


def answer_bytes(answer):
    """The size of an answer as the app sends it: compact UTF-8 JSON, as a WebSocket frame (the larger)."""
    return len(json.dumps({"command": "messages", **answer}, ensure_ascii=False, separators=(",", ":")).encode())


def test_long_messages_make_pages_of_fewer_messages_none_over_max_answer_bytes_and_nothing_lost_or_doubled(
        make_store):
    store = make_store(max_answer_bytes=20_000)
    for n in range(40):
        store.add("Azin", f"{n:02} " + "😀" * 997)  # about 4 KB of JSON each
    store.like(3)
    store.like(1)

    first = store.since(0)
    assert 1 < len(first["messages"]) < 40 and first["more"] is True
    pages = [first]
    while pages[-1]["more"]:  # "Load older", down to the first message
        pages.append(store.before(pages[-1]["messages"][0]["id"], 200))
    catching_up = [store.since(0, store.epoch)]  # a client that has nothing, catching up change by change
    while catching_up[-1]["cursor"] < store.cursor:
        catching_up.append(store.since(catching_up[-1]["cursor"], store.epoch))

    for answers in (pages, catching_up):
        assert all(answer_bytes(answer) <= 20_000 for answer in answers)
        assert all(answer["messages"] for answer in answers)
        ids = [message["id"] for answer in answers for message in answer["messages"]]
        assert sorted(ids) == list(range(1, 41))  # every message, once
    # Catching up goes in the order of the latest changes: 1 and 3 come last, liked.
    last = {m["id"]: m for m in catching_up[-1]["messages"]}
    assert last[1]["likes"] == last[3]["likes"] == 1
    cursors = [answer["cursor"] for answer in catching_up]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


def test_an_answer_holds_at_least_one_message_however_small_max_answer_bytes_is(make_store):
    store = make_store(max_answer_bytes=300)
    for n in range(3):
        store.add("Azin", "x" * 1000)
    assert [m["id"] for m in store.since(0)["messages"]] == [3]
    assert [m["id"] for m in store.before(3, 200)["messages"]] == [2]
    assert [m["id"] for m in store.since(1, store.epoch)["messages"]] == [2]
    assert store.since(1, store.epoch)["cursor"] == 2
