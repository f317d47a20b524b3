// What both chat pages share: showing messages, the form and the buttons.
// This module knows nothing about the network. A page's own script is its
// transport: it calls startChat() with functions that talk to the server,
// and feeds the answers it receives to chat.apply().

const limits = JSON.parse(document.getElementById("limits").textContent);

/**
 * Wire up the page. `transport.send(message)`, `transport.vote(id, kind)` and
 * `transport.older(beforeId, epoch)` return promises that reject with an Error
 * a person can read (with `aboutConnection` if it passes once connected again);
 * `older` resolves to a page of messages.
 */
export function startChat(transport) {
  const [list, status, errorBox, form, olderButton, empty, notice] = ["messages", "status", "error",
    "send-form", "load-older", "empty", "notice"].map((id) => document.getElementById(id));
  const known = new Map(); // message id -> the latest state heard of, shown or not
  const shown = new Map(); // message id -> its <li>
  let cursor = 0;
  let epoch = null;
  let oldestLoaded = 0; // messages with a lower id exist but aren't loaded yet (0: none)
  let errorAboutConnection = false;

  form.user.value = localStorage.getItem("chat-name") || "";

  // Enter sends, Shift+Enter adds a line; Enter in an input method (Chinese, say) is its own.
  form.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showError(""); // a new try: the last error is old news
    attempt(async () => {
      const message = { user: form.user.value.trim(), text: form.text.value.trim() };
      checkLength("Name (user)", message.user, limits.user);
      checkLength("Message (text)", message.text, limits.text);
      await transport.send(message); // if it fails, what the person typed stays in the form
      localStorage.setItem("chat-name", message.user);
      // Sending takes a moment: don't wipe out a next message typed meanwhile.
      if (form.text.value.trim() === message.text) form.text.value = "";
    });
  });

  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-vote]");
    if (!button) return;
    attempt(() => transport.vote(Number(button.closest("li").dataset.id), button.dataset.vote));
  });

  olderButton.addEventListener("click", () => attempt(async () => {
    const page = await transport.older(oldestLoaded, epoch);
    if (page.reset) return chat.apply(page); // the server started afresh meanwhile
    // Keep what the reader is looking at in place while the list grows above it.
    const heightBefore = list.scrollHeight;
    oldestLoaded = page.more ? page.messages[0].id : 0;
    for (const message of page.messages) show(message);
    list.scrollTop += list.scrollHeight - heightBefore;
    olderButton.hidden = !oldestLoaded;
  }));

  // Do what a person asked for; if it fails, say why.
  function attempt(action) {
    return action().catch((error) => showError(error.message, error.aboutConnection));
  }

  // Keep the newest message in view when the list gets shorter (an error appeared, say).
  let listHeight = list.clientHeight;
  new ResizeObserver(() => {
    const wasAtBottom = list.scrollHeight - list.scrollTop - listHeight < 40;
    listHeight = list.clientHeight;
    if (wasAtBottom) list.scrollTop = list.scrollHeight;
  }).observe(list);

  // Keep the newest state of a message. Counts only ever grow: of two answers that
  // disagree (one may have been on its way longer), the larger count is the newer.
  function remember(message) {
    const before = known.get(message.id) ?? message;
    const latest = { ...message, likes: Math.max(before.likes, message.likes),
                     dislikes: Math.max(before.dislikes, message.dislikes) };
    known.set(message.id, latest);
    return latest;
  }

  // Show a message where its id says: before the first with a higher id, or last. (A page
  // catching up gets messages in the order they changed, so a message may come late.)
  function show(message) {
    const latest = remember(message);
    if (latest.id < oldestLoaded) return; // not on the pages loaded; kept for when it is
    const item = renderMessage(latest);
    const old = shown.get(latest.id);
    if (old) old.replaceWith(item);
    else list.insertBefore(item, [...list.children].find((li) => Number(li.dataset.id) > latest.id));
    shown.set(latest.id, item);
  }

  // Errors about what the person did stay until they try again; errors about
  // the connection (or the server, or Redis) go once the page is connected again.
  function showError(text, aboutConnection = false) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
    errorAboutConnection = aboutConnection;
  }

  // A reset tells apart a store that started empty (a restarted server) from
  // one that kept its data (a restarted Redis): the messages we showed come back.
  function startedAgain(answer) {
    const kept = ({ id, timestamp }) => known.get(id)?.timestamp === timestamp;
    return shown.size > 0 && !answer.messages.some(kept);
  }

  let noticeTimer;
  const chat = {
    get cursor() { return cursor; },
    get epoch() { return epoch; },

    /** Show a `messages` answer: each message replaces the one with its id. */
    apply(answer) {
      const wasAtBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      if (answer.reset) {
        // Say for a few seconds why the messages shown before have gone, if they have.
        notice.hidden = !startedAgain(answer);
        notice.textContent = "The server restarted, so the chat started again.";
        clearTimeout(noticeTimer);
        noticeTimer = setTimeout(() => { notice.hidden = true; }, 8000);
        list.replaceChildren();
        shown.clear();
        known.clear();
        showError(""); // whatever went wrong, it was in the chat shown before
      }
      if (answer.reset || epoch === null) {
        // A first load holds the newest page; older ones come with "Load older".
        oldestLoaded = answer.more ? answer.messages[0].id : 0;
        olderButton.hidden = !oldestLoaded;
      }
      for (const message of answer.messages) show(message);
      empty.hidden = shown.size > 0;
      cursor = answer.cursor;
      epoch = answer.epoch;
      if (wasAtBottom) list.scrollTop = list.scrollHeight;
    },

    /** Show "connected", "reconnecting", "offline" or "unavailable" (no chat behind the server), and why. */
    setStatus(state, reason = "") {
      status.textContent = status.dataset.state = state;
      if (reason) showError(reason, true);
      else if (state === "connected" && errorAboutConnection) showError("");
    },
    showError,
  };
  return chat;
}

// Check as the server does, and say it in the same words.
function checkLength(name, value, limit) {
  // Count characters: .length counts UTF-16 units, two for an emoji such as 🙂.
  const length = [...value].length;
  if (!length) throw new Error(`${name} must not be empty.`);
  if (length > limit) {
    throw new Error(`${name} is too long: ${length} characters, the limit is ${limit}.`);
  }
}

/**
 * Build a message's <li>. User text goes in with textContent, so it is never run as HTML,
 * into elements of its own, isolated (<bdi>, dir) and clipped (style.css), so it can't
 * reorder or cover anything around it.
 */
export function renderMessage(message) {
  const item = element("li", "message");
  item.dataset.id = message.id;
  const time = element("time", "", new Date(message.timestamp).toLocaleTimeString());
  time.dateTime = message.timestamp;
  time.title = new Date(message.timestamp).toLocaleString();
  const meta = element("p", "meta");
  meta.append(element("bdi", "user", message.user), " ", time);
  // Tabs, or lines indented by two spaces or more: pasted code, best read in monospace.
  const text = element("p", /\t|^ {2,}\S/m.test(message.text) ? "text code" : "text", message.text);
  text.dir = "auto"; // Arabic or Hebrew reads right to left
  item.append(meta, text, voteButton("like", "Like", message.likes),
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

function element(tag, className, text = "") {
  return Object.assign(document.createElement(tag), { className, textContent: text });
}
