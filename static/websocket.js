// The WebSocket page's transport: one socket to /ws for receiving and sending.
import { backoff, startChat } from "./chat.js";

let socket = null;
let retryMs = 0;
let newestId = 0; // the highest message id received, so our own new message can be told apart
let sending = null; // the message on its way: { message, after, resolve, reject }

const chat = startChat({
  // Frames have no replies. A send has worked when our message comes back as
  // a new message, and has failed when the server answers with an error frame.
  send: (message) => new Promise((resolve, reject) => {
    sendFrame({ command: "send-message", message });
    settleSending();
    sending = { message, after: newestId, resolve, reject };
  }),
  vote: async (id, kind) => sendFrame({ command: kind, id }),
});

// Settle the send on its way, if any: rejected with `error`, or else done.
function settleSending(error) {
  if (!sending) return false;
  if (error) sending.reject(error);
  else sending.resolve();
  sending = null;
  return true;
}

function isOurs(message) {
  return sending && message.id > sending.after &&
    message.user === sending.message.user && message.text === sending.message.text;
}

function sendFrame(frame) {
  if (socket?.readyState !== WebSocket.OPEN) {
    throw new Error("Not connected, so nothing was sent. Try again in a moment.");
  }
  socket.send(JSON.stringify(frame));
}

function connect() {
  // Same host as the page; wss: when the page came over https:.
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // Resume where we left off: the server sends what we missed, or a reset if it restarted.
  url.searchParams.set("since", chat.cursor);
  if (chat.epoch) url.searchParams.set("epoch", chat.epoch);
  socket = new WebSocket(url);

  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    switch (frame.command) {
      case "messages":
        chat.apply(frame);
        chat.setStatus("connected");
        retryMs = 0;
        if (frame.messages.some(isOurs)) settleSending();
        if (frame.reset) newestId = 0;
        for (const message of frame.messages) newestId = Math.max(newestId, message.id);
        break;
      case "error":
        if (!settleSending(new Error(frame.error))) chat.showError(frame.error);
        break;
      default:
        // A newer server may send kinds of frames this page doesn't know yet.
        console.warn("Ignoring a frame with an unknown command:", frame.command);
    }
  });

  socket.addEventListener("close", () => {
    settleSending(new Error("The connection dropped before the server confirmed your message. " +
                            "If it doesn't appear, send it again."));
    chat.setStatus(navigator.onLine ? "reconnecting" : "offline");
    retryMs = backoff(retryMs);
    setTimeout(connect, retryMs);
  });
}

connect();
