// The polling page's transport: long polling GET /messages, sending with POST.
import { backoff, sleep, startChat } from "./chat.js";

const chat = startChat({
  send: (message) => post("/messages", message),
  vote: (id, kind) => post(`/messages/${id}/${kind}`),
});

// POST some JSON; reject with the server's own explanation if it refuses.
async function post(url, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body ?? {}),
    });
  } catch {
    throw new Error("The server can't be reached; nothing was sent. Try again in a moment.");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `The server answered ${response.status}.`);
  return answer;
}

// Each request is held by the server until something changes (or 25 s pass),
// then answered with just what changed. Then we ask again, from the new cursor.
// The first request doesn't wait: it fetches the history, which may be empty.
let retryMs = 0;
while (true) {
  const params = new URLSearchParams({ since: chat.cursor, wait: chat.epoch ? 25 : 0 });
  if (chat.epoch) params.set("epoch", chat.epoch);
  try {
    const response = await fetch(`/messages?${params}`);
    if (!response.ok) throw new Error(`GET /messages answered ${response.status}`);
    chat.apply(await response.json());
    chat.setStatus("connected");
    retryMs = 0;
  } catch {
    chat.setStatus(navigator.onLine ? "reconnecting" : "offline");
    retryMs = backoff(retryMs);
    await sleep(retryMs);
  }
}
