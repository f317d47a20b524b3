// What both chat pages share: showing messages, the form and the buttons.
// This module knows nothing about the network. A page's own script is its
// transport: it calls startChat() with functions that talk to the server,
// and feeds the answers it receives to chat.apply().

const limits = JSON.parse(document.getElementById("limits").textContent);

/**
 * Wire up the page. `transport.send(message)`, `transport.vote(id, kind)` and
 * `transport.older(beforeId, epoch)` return promises that reject with an Error
 * whose message a person can read; `older` resolves to a page of messages.
 */
export function startChat(transport) {
  const list = document.getElementById("messages");
  const status = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const form = document.getElementById("send-form");
  const olderButton = document.getElementById("load-older");
  const empty = document.getElementById("empty");
  const notice = document.getElementById("notice");
  const known = new Map(); // message id -> the latest state heard of, shown or not
  const shown = new Map(); // message id -> its <li>
  let cursor = 0;
  let epoch = null;
  let oldestLoaded = 0; // messages with a lower id exist but aren't loaded yet (0: none)

  form.user.value = localStorage.getItem("chat-name") || "";

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = { user: form.user.value.trim(), text: form.text.value.trim() };
    showError(""); // a new try: the last error is old news
    try {
      checkLength("Name", message.user, limits.user);
      checkLength("Message", message.text, limits.text);
      await transport.send(message);
    } catch (error) {
      showError(error.message); // what the person typed stays in the form
      return;
    }
    localStorage.setItem("chat-name", message.user);
    // Sending takes a moment: don't wipe out a next message typed meanwhile.
    if (form.text.value.trim() === message.text) form.text.value = "";
  });

  list.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-vote]");
    if (!button) return;
    try {
      await transport.vote(Number(button.closest("li").dataset.id), button.dataset.vote);
    } catch (error) {
      showError(error.message);
    }
  });

  olderButton.addEventListener("click", async () => {
    olderButton.disabled = true;
    try {
      const page = await transport.older(oldestLoaded, epoch);
      if (page.reset) {
        chat.apply(page); // the server started afresh meanwhile
        return;
      }
      // Keep what the reader is looking at in place while the list grows above it.
      const heightBefore = list.scrollHeight;
      list.prepend(...page.messages.map((message) => {
        const item = renderMessage(remember(message));
        shown.set(message.id, item);
        return item;
      }));
      list.scrollTop += list.scrollHeight - heightBefore;
      empty.hidden = shown.size > 0;
      oldestLoaded = page.more ? page.messages[0].id : 0;
      olderButton.hidden = !oldestLoaded;
    } catch (error) {
      showError(error.message);
    } finally {
      olderButton.disabled = false;
    }
  });

  // Keep the newest state of a message. Its counts only ever grow, so of two
  // answers that disagree (one may have been on its way longer), the larger
  // count is the newer one.
  function remember(message) {
    const before = known.get(message.id);
    const latest = before ? {
      ...message,
      likes: Math.max(before.likes, message.likes),
      dislikes: Math.max(before.dislikes, message.dislikes),
    } : message;
    known.set(message.id, latest);
    return latest;
  }

  function show(message) {
    const latest = remember(message);
    if (latest.id < oldestLoaded) return; // not on the pages loaded; kept for when it is
    const item = renderMessage(latest);
    const old = shown.get(latest.id);
    if (old) old.replaceWith(item);
    else placeById(item, latest.id);
    shown.set(latest.id, item);
  }

  // New messages go last. One that arrives late (a client catching up gets
  // messages in the order they changed) goes where its id says.
  function placeById(item, id) {
    const last = list.lastElementChild;
    if (!last || Number(last.dataset.id) < id) {
      list.append(item);
      return;
    }
    const next = [...list.children].find((other) => Number(other.dataset.id) > id);
    list.insertBefore(item, next);
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  // Say for a few seconds why the messages shown before have gone.
  let noticeTimer;
  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, 8000);
  }

  const chat = {
    get cursor() { return cursor; },
    get epoch() { return epoch; },

    /** Show a `messages` answer: each message replaces the one with its id. */
    apply(answer) {
      const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      const firstLoad = answer.reset || epoch === null;
      if (answer.reset) {
        list.replaceChildren();
        shown.clear();
        known.clear();
        showNotice("The server restarted, so the chat started again.");
      }
      if (firstLoad) {
        // A first load holds the newest page; older ones come with "Load older".
        oldestLoaded = answer.more ? answer.messages[0].id : 0;
        olderButton.hidden = !oldestLoaded;
      }
      for (const message of answer.messages) show(message);
      empty.hidden = shown.size > 0;
      cursor = answer.cursor;
      epoch = answer.epoch;
      if (atBottom) list.scrollTop = list.scrollHeight;
    },

    /** Show "connected", "reconnecting" or "offline". */
    setStatus(state) {
      status.textContent = state;
      status.dataset.state = state;
    },

    showError,
  };
  return chat;
}

function checkLength(name, value, limit) {
  if (!value) throw new Error(`${name} must not be empty.`);
  // Count characters as the server does. JavaScript's .length counts UTF-16
  // units, two for an emoji such as 🙂; spreading a string counts characters.
  const length = [...value].length;
  if (length > limit) {
    throw new Error(`${name} is too long: ${length} characters, the limit is ${limit}.`);
  }
}

/** Build a message's <li>. User text goes in with textContent, so it is never run as HTML. */
export function renderMessage(message) {
  const item = element("li", "message");
  item.dataset.id = message.id;
  const meta = element("p", "meta");
  meta.append(element("strong", "user", message.user), " ");
  const time = element("time", "", new Date(message.timestamp).toLocaleTimeString());
  time.dateTime = message.timestamp;
  time.title = new Date(message.timestamp).toLocaleString();
  meta.append(time);
  item.append(meta, element("p", "text", message.text), voteButton("like", "Like", message.likes),
              voteButton("dislike", "Dislike", message.dislikes));
  return item;
}

// Words rather than 👍 and 👎, which many lab machines, lacking an emoji
// font, show as two identical boxes. What a button shows is also its name.
function voteButton(kind, word, count) {
  const button = element("button", `vote ${kind}`, `${word} ${count}`);
  button.type = "button";
  button.dataset.vote = kind;
  return button;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Wait `ms` milliseconds. */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The next wait before retrying: double the last, up to 5 s, with some jitter. */
export function backoff(lastMs) {
  return Math.min(Math.max(lastMs * 2, 500), 5000) * (0.75 + Math.random() / 2);
}
