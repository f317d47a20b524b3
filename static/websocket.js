// The WebSocket page's transport: one socket to /ws for receiving and sending.
import { backoff, startChat } from "./chat.js";

let socket = null;
let retryMs = 0;

const chat = startChat({
  send: async (message) => sendFrame({ command: "send-message", message }),
  vote: async (id, kind) => sendFrame({ command: kind, id }),
});

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
        break;
      case "error":
        chat.showError(frame.error);
        break;
      default:
        // A newer server may send kinds of frames this page doesn't know yet.
        console.warn("Ignoring a frame with an unknown command:", frame.command);
    }
  });

  socket.addEventListener("close", () => {
    chat.setStatus(navigator.onLine ? "reconnecting" : "offline");
    retryMs = backoff(retryMs);
    setTimeout(connect, retryMs);
  });
}

connect();
