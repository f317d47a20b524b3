// The wire: what travels between this page and the server, listed on the page
// itself, so a class can watch polling, long polling and a WebSocket side by
// side without developer tools. The button opens it; ?wire=1 opens it at load.
// The transports call it where they already send and receive: http.js fetches
// through wiredFetch(), websocket.js hands each socket to watchSocket() and each
// frame it sends through sent(). It only watches: what the chat sends is
// unchanged, and the chat waits for nothing it wouldn't wait for anyway.

const MOST_ROWS = 300; // older rows go, so a page left open for a day stays light
const utf8 = new TextEncoder();
const totals = { requests: 0, requestBytes: 0, answers: 0, answerBytes: 0,
                 framesSent: 0, sentBytes: 0, framesReceived: 0, receivedBytes: 0 };

const panel = element("section", "", { id: "wire", className: "wire", hidden: true });
panel.setAttribute("role", "log");
panel.setAttribute("aria-label", "Wire");
const totalsLine = element("p", "", { className: "wire-totals" });
const rows = element("div", "", { className: "wire-rows" });
panel.append(element("p", "Payloads only: the sizes count what the page sent and received, " +
  "not HTTP headers or WebSocket framing.", { className: "wire-note" }), totalsLine, rows);

const toggle = element("button", "", { type: "button", className: "wire-toggle" });
toggle.setAttribute("aria-controls", "wire");
toggle.addEventListener("click", () => show(panel.hidden));
// The button goes with the page's title and status, the panel below the chat (or at the end of a page without).
(document.querySelector("header") ?? document.body).append(toggle);
const footer = document.querySelector("footer");
if (footer) footer.before(panel); else document.body.append(panel);
show(new URLSearchParams(location.search).get("wire") === "1");
showTotals();

/** fetch(), listed: `↑` when sent, then `↓` with the status, the body's size and how long the server held it. */
export async function wiredFetch(url, options = {}) {
  const method = options.method ?? "GET";
  const where = `${method} ${pathOf(url)}`;
  const sentBytes = typeof options.body === "string" ? bytes(options.body) : 0;
  totals.requests += 1;
  totals.requestBytes += sentBytes;
  add("↑", `${where}${sentBytes ? ` · ${size(sentBytes)}` : ""}`);
  const started = performance.now();
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    add("↓", `${where} · no answer (${error.message})`);
    throw error;
  }
  const held = performance.now() - started; // until the answer began: a long poll's wait shows here
  // Measure a copy of the body. The chat reads the original itself, as it would without us; it needs
  // the whole body anyway, so waiting for it here costs nothing, and puts this row before what follows.
  const body = await response.clone().arrayBuffer().catch(() => null);
  totals.answers += 1;
  totals.answerBytes += body?.byteLength ?? 0;
  add("↓", `${response.status} ${where} · ${body ? size(body.byteLength) : "body cut short"} · held ${duration(held)}`);
  return response;
}

/** List a WebSocket's open, each frame it receives, and its close: each a moment later, after the chat's turn. */
export function watchSocket(socket) {
  socket.addEventListener("open", () => setTimeout(add, 0, "", `open ${socket.url}`));
  socket.addEventListener("message", (event) => setTimeout(frame, 0, "↓", event.data));
  socket.addEventListener("close", (event) => setTimeout(add, 0, "", `close ${event.code}` +
    (event.reason ? ` “${event.reason}”` : "")));
}

/** List a frame about to be sent, and hand it back unchanged: socket.send(sent(text)). */
export function sent(text) {
  frame("↑", text);
  return text;
}

function frame(arrow, text) {
  const length = typeof text === "string" ? bytes(text) : text.byteLength ?? text.size;
  if (arrow === "↑") { totals.framesSent += 1; totals.sentBytes += length; }
  else { totals.framesReceived += 1; totals.receivedBytes += length; }
  let command = "(binary)";
  if (typeof text === "string") {
    try { command = JSON.parse(text).command ?? "(no command)"; } catch { command = `“${text.slice(0, 40)}”`; }
  }
  add(arrow, `${command} · ${size(length)}`);
}

function add(arrow, text) {
  const time = new Date().toLocaleTimeString([], { hour12: false }) +
    `.${String(new Date().getMilliseconds()).padStart(3, "0")}`;
  rows.append(element("div", `${time} ${arrow ? `${arrow} ` : ""}${text}`, { className: "wire-row" }));
  if (rows.children.length > MOST_ROWS) rows.firstElementChild.remove();
  showTotals();
  rows.scrollTop = rows.scrollHeight; // newest last, in view
}

function showTotals() {
  const t = totals;
  totalsLine.textContent = `HTTP: ${count(t.requests, "request")} ↑ ${size(t.requestBytes)}, ` +
    `${count(t.answers, "answer")} ↓ ${size(t.answerBytes)} · WebSocket: ${count(t.framesSent, "frame")} ↑ ` +
    `${size(t.sentBytes)}, ${count(t.framesReceived, "frame")} ↓ ${size(t.receivedBytes)}`;
}

function show(open) {
  panel.hidden = !open;
  toggle.textContent = open ? "Hide the wire" : "Show the wire";
  toggle.setAttribute("aria-expanded", String(open));
}

// (Declared as functions, not constants: the panel above uses them while the module loads.)
function bytes(text) { return utf8.encode(text).length; } // UTF-8, as it travels
function size(n) { return n < 1000 ? `${n} B` : `${n} B (${(n / 1000).toFixed(1)} kB)`; }
function count(n, noun) { return `${n} ${noun}${n === 1 ? "" : "s"}`; }
function duration(ms) { return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`; }
function pathOf(url) { const { pathname, search } = new URL(url, location.href); return pathname + search; }
function element(tag, text, properties) {
  return Object.assign(document.createElement(tag), { textContent: text }, properties);
}
