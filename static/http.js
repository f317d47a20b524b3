// Asking the server over HTTP, for both pages: the polling page does all its
// talking this way, the WebSocket page only fetches older pages of history.

/** GET a JSON answer; reject with the server's own explanation if it refuses. */
export async function getJSON(url) {
  return answerOf(fetch(url));
}

/** POST some JSON; reject with the server's own explanation if it refuses. */
export async function postJSON(url, body) {
  return answerOf(fetch(url, {
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
    throw new Error("The server can't be reached. Try again in a moment.");
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `The server answered ${response.status}.`);
  return answer;
}
