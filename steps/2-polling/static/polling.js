// The polling page's transport: long polling GET /messages for what is new, POST to send.
import * as chat from "./chat.js";

const headers = { "Content-Type": "application/json" }; // what POST /messages takes
chat.start({
  send: (message) => request("/messages", { method: "POST", headers, body: JSON.stringify(message) }),
});

/** Fetch `url`; return the JSON answer, or throw the server's explanation. */
async function request(url, options) {
  const answer = await (await fetch(url, options)).json();
  if (answer.error) throw new Error(answer.error);
  return answer;
}

// Long polling: each request waits until there is something new (or 25 s), then we ask again.
for (let wait = 0; ; wait = 25) { // the first request doesn't wait: it fetches the history
  try {
    chat.apply(await request(`/messages?since=${chat.cursor}&epoch=${chat.epoch}&wait=${wait}`));
  } catch {
    chat.setStatus("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, 2000)); // give the server time to come back
  }
}
