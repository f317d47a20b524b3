// Talking to the server, for both pages: the polling page does all its talking
// over HTTP, the WebSocket page only fetches older pages of history this way.
// And how long to wait before trying again, when the server can't be reached.
import { wiredFetch } from "./wire.js"; // fetch(), listed in the page's wire panel

/** What a page says while the server can't be reached: it asks nothing, since the page reconnects by itself. */
export const SERVER_AWAY = "The server is away; reconnecting by itself…";

/** GET a JSON answer; reject with the server's own explanation if it refuses. */
export async function getJSON(url) {
  return answerOf(wiredFetch(url));
}

/** POST some JSON; reject with the server's own explanation if it refuses. */
export async function postJSON(url, body) {
  return answerOf(wiredFetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  }));
}

async function answerOf(request) {
  let response;
  try {
    response = await request;
  } catch {
    throw connectionError("The server can't be reached. Try again in a moment.");
  }
  const answer = await response.json().catch(() => ({}));
  if (response.ok) return answer;
  const error = new Error(answer.error || `The server answered ${response.status}.`);
  error.fromServer = true;
  // 503: the server can't serve anyone just now (Redis is down, say), and says why.
  error.aboutConnection = response.status === 503;
  throw error;
}

/** An Error about the connection: the page shows it until it is connected again. */
export function connectionError(text) {
  return Object.assign(new Error(text), { aboutConnection: true });
}

/** Wait `ms` milliseconds. */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The next wait before retrying: double the last, up to 5 s, with some jitter. */
export function backoff(lastMs) {
  return Math.min(Math.max(lastMs * 2, 500), 5000) * (0.75 + Math.random() / 2);
}
