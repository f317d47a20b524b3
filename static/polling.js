// The polling page's transport: long polling GET /messages, sending with POST.
import { backoff, sleep, startChat } from "./chat.js";
import { getJSON, postJSON } from "./http.js";

const chat = startChat({
  send: (message) => postJSON("/messages", message),
  vote: (id, kind) => postJSON(`/messages/${id}/${kind}`),
  older: (before, epoch) => getJSON(`/messages?${new URLSearchParams({ before, epoch })}`),
});

// Each request is held by the server until something changes (or 25 s pass),
// then answered with just what changed. Then we ask again, from the new cursor.
// The first request doesn't wait: it fetches the history, which may be empty.
let retryMs = 0;
while (true) {
  const params = new URLSearchParams({ since: chat.cursor, wait: chat.epoch ? 25 : 0 });
  if (chat.epoch) params.set("epoch", chat.epoch);
  try {
    chat.apply(await getJSON(`/messages?${params}`));
    chat.setStatus("connected");
    retryMs = 0;
  } catch {
    chat.setStatus(navigator.onLine ? "reconnecting" : "offline");
    retryMs = backoff(retryMs);
    await sleep(retryMs);
  }
}
