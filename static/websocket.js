// The WebSocket page's transport: one socket to /ws for receiving and sending.
import { startChat } from "./chat.js";
import { SERVER_AWAY, backoff, connectionError, getJSON } from "./http.js";
import { sent, watchSocket } from "./wire.js"; // lists what travels, in the page's wire panel

// Close codes that say the page did something wrong: flooding (1008), too big a
// frame (1009). Their reason stays in view after reconnecting; other closes are
// about the connection, and their reason goes once it is back.
const PAGE_AT_FAULT = [1008, 1009];

let socket = null;
let retryMs = 0;
let lastRef = 0;
let chatAvailable = true; // false while the server says it can't serve the chat (a `status` frame)
// Messages on their way, by the "ref" sent with them: { resolve, reject }.
const sending = new Map();

const chat = startChat({
  // The server answers a frame that carries a "ref": a `sent` frame with that ref
  // when it was carried out, an `error` frame with it when not. So a send is
  // confirmed by its own ref, never by a message that merely looks like ours.
  send: (message) => new Promise((resolve, reject) => {
    const ref = `m-${++lastRef}`;
    sendFrame({ command: "send-message", message, ref });
    sending.set(ref, { resolve, reject });
  }),
  // A vote shows when its count changes; an error frame with its ref says why not.
  vote: async (id, kind) => sendFrame({ command: kind, id, ref: `v-${++lastRef}` }),
  older: (before, epoch) => getJSON(`/messages?${new URLSearchParams({ before, epoch })}`),
});

function sendFrame(frame) {
  if (socket?.readyState !== WebSocket.OPEN) {
    throw connectionError("Not connected, so nothing was sent. Try again in a moment.");
  }
  socket.send(sent(JSON.stringify(frame)));
}

function rejectSends(error) {
  for (const send of sending.values()) send.reject(error);
  sending.clear();
}

function connect() {
  // Same host as the page; wss: when the page came over https:.
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // Resume where we left off: the server sends what we missed, or a reset if it restarted.
  url.searchParams.set("since", chat.cursor);
  if (chat.epoch) url.searchParams.set("epoch", chat.epoch);
  socket = new WebSocket(url);
  watchSocket(socket);

  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    switch (frame.command) {
      case "messages":
        chat.apply(frame);
        if (chatAvailable) chat.setStatus("connected");
        retryMs = 0;
        break;
      case "sent": // one of our frames was carried out (a vote's ref is not waited for)
        sending.get(frame.ref)?.resolve();
        sending.delete(frame.ref);
        break;
      case "error":
        if (sending.has(frame.ref)) {
          sending.get(frame.ref).reject(new Error(frame.error));
          sending.delete(frame.ref);
        } else {
          // A vote that failed, say. Without a ref, it is about no frame of
          // ours: the server can't serve us (Redis is down, say).
          chat.showError(frame.error, frame.ref === undefined);
        }
        break;
      case "status":
        // The server is there, but the chat behind it (Redis) can't be read or
        // changed, or can again: say so in place of "connected".
        // What went wrong while it couldn't (a refused send, say) is old news once it can.
        if (frame.available && !chatAvailable) chat.showError("");
        chatAvailable = frame.available;
        if (chatAvailable) chat.setStatus("connected");
        else chat.setStatus("unavailable", frame.error);
        break;
      default:
        // A newer server may send kinds of frames this page doesn't know yet.
        console.warn("Ignoring a frame with an unknown command:", frame.command);
    }
  });

  socket.addEventListener("close", (event) => {
    // A server that hangs up on purpose says why ("Too many frames: slow down.", say).
    const reason = event.reason || "The connection dropped before the server confirmed your " +
                   "message. If it doesn't appear, send it again.";
    const aboutConnection = !PAGE_AT_FAULT.includes(event.code);
    rejectSends(Object.assign(new Error(reason), { aboutConnection }));
    chat.setStatus(navigator.onLine ? "reconnecting" : "offline");
    chatAvailable = true; // the next connection says otherwise if it must
    // Going away (1001: stopping, restarting) or gone without a word: the page
    // reconnects by itself, and says so. Any other reason is the server's own.
    const away = event.code === 1001 || !event.reason;
    chat.showError(away ? SERVER_AWAY : event.reason, aboutConnection);
    retryMs = backoff(retryMs);
    setTimeout(connect, retryMs);
  });
}

connect();
