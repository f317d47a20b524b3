// The polling page's transport: long polling GET /messages, sending with POST.
import { backoff, sleep, startChat } from "./chat.js";
import { getJSON, postJSON } from "./http.js";

const chat = startChat({
  send: (message) => postJSON("/messages", message),
  vote: (id, kind) => postJSON(`/messages/${id}/${kind}`),
  older: (before, epoch) => getJSON(`/messages?${new URLSearchParams({ before, epoch })}`),
});

// Long polling: each request is held by the server until something changes
// (or 25 s pass), then answered with just what changed. Then we ask again at
// once, from the new cursor. The first request doesn't wait: it fetches the
// history, which may be empty.
// Plain polling (/polling?interval=2): ask every 2 s, and the server answers at once.
const interval = JSON.parse(document.getElementById("interval").textContent);
let retryMs = 0;
while (true) {
  const wait = chat.epoch && !interval ? 25 : 0;
  const params = new URLSearchParams({ since: chat.cursor, wait });
  if (chat.epoch) params.set("epoch", chat.epoch);
  try {
    chat.apply(await getJSON(`/messages?${params}`));
    chat.setStatus("connected");
    retryMs = 0;
    if (interval) await sleep(interval * 1000);
  } catch {
    chat.setStatus(navigator.onLine ? "reconnecting" : "offline");
    retryMs = backoff(retryMs);
    await sleep(retryMs);
  }
}
