// The polling page's transport: long polling GET /messages, sending with POST.
import { startChat } from "./chat.js";
import { SERVER_AWAY, backoff, getJSON, postJSON, sleep } from "./http.js";

const chat = startChat({
  send: (message) => postJSON("/messages", message),
  vote: (id, kind) => postJSON(`/messages/${id}/${kind}`),
  older: (before, epoch) => getJSON(`/messages?${new URLSearchParams({ before, epoch })}`),
});

// Long polling: each request is held by the server until something changes
// (or 25 s pass), then answered with just what changed. Then we ask again at
// once, from the new cursor. The first request doesn't wait: it fetches the
// history, which may be empty. Nor does the first after a failure: we want to
// know at once that the server is back.
// Plain polling (/polling?interval=2): ask every 2 s, and the server answers at once.
const interval = JSON.parse(document.getElementById("interval").textContent);
let retryMs = 0;
while (true) {
  const wait = chat.epoch && !interval && !retryMs ? 25 : 0;
  const params = new URLSearchParams({ since: chat.cursor, wait });
  if (chat.epoch) params.set("epoch", chat.epoch);
  try {
    chat.apply(await getJSON(`/messages?${params}`));
    chat.setStatus("connected");
    retryMs = 0;
    if (interval) await sleep(interval * 1000);
  } catch (error) {
    // The server may say why it can't answer (503: Redis is down, say), or
    // not be there at all (stopped, restarting): then the page says so.
    if (error.fromServer && error.aboutConnection) chat.setStatus("unavailable", error.message);
    else chat.setStatus(navigator.onLine ? "reconnecting" : "offline", error.fromServer ? error.message : SERVER_AWAY);
    retryMs = backoff(retryMs);
    await sleep(retryMs);
  }
}
