// The polling page's transport: long polling GET /messages for what is new, POST to send.
import { startChat } from "./chat.js";

const headers = { "Content-Type": "application/json" }; // what POST /messages takes
const chat = startChat({
  send: (message) => request("/messages", { method: "POST", headers, body: JSON.stringify(message) }),
});

/** Fetch `url`; return the JSON answer, or throw the server's explanation. */
async function request(url, options) {
  const answer = await (await fetch(url, options)).json();
  if (answer.error) throw new Error(answer.error);
  return answer;
}

// Long polling: the server holds each request until there is something new (or 25 s pass); then
// we ask again from the new cursor. The first request doesn't wait: it fetches the history.
for (let wait = 0; ; wait = 25) {
  try {
    chat.apply(await request(`/messages?since=${chat.cursor}&wait=${wait}`));
    chat.setStatus("connected");
  } catch {
    chat.setStatus("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, 2000)); // give the server time to come back
  }
}
