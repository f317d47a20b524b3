// The WebSocket page's transport: one socket to /ws, for receiving and sending.
import { startChat } from "./chat.js";

let socket;
// A frame gets no answer: what we send comes back in a `messages` frame, or an `error` frame says why not.
const chat = startChat({
  send: async (message) => sendFrame({ command: "send-message", message }),
  vote: async (id, vote) => sendFrame({ command: vote, id }),
});

function sendFrame(frame) {
  // A socket that isn't open would drop the frame without a word.
  if (socket.readyState !== WebSocket.OPEN) throw new Error("Not connected, so nothing was sent.");
  socket.send(JSON.stringify(frame));
}

// To the page's own host (wss: for an https: page), from our cursor: the first frame holds all that
// changed after it, so after a reconnection we get what we missed, and nothing twice.
function connect() {
  socket = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws?since=${chat.cursor}`);
  socket.onopen = () => chat.setStatus("connected");
  socket.onclose = () => { chat.setStatus("reconnecting"); setTimeout(connect, 1000); };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    switch (frame.command) {
      case "messages": chat.apply(frame); break;
      case "error": chat.showError(frame.error); break;
      default: throw new Error(`Unknown command: ${frame.command}`);
    }
  };
}
connect();
