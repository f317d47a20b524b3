// The WebSocket page's transport: one socket to /ws, for receiving and sending.
import * as chat from "./chat.js";

let socket;
// A frame gets no answer: it comes back in a `messages` or `error` frame. A closed socket drops it silently.
const sendFrame = async (frame) => {
  if (socket.readyState !== WebSocket.OPEN) throw new Error("Not connected, so nothing was sent.");
  socket.send(JSON.stringify(frame));
};
chat.start({
  send: (message) => sendFrame({ command: "send-message", message }),
});

// ws: or wss: as the page is http: or https:, from our cursor and epoch: the first frame holds all we missed.
function connect() {
  socket = new WebSocket(`${location.origin.replace("http", "ws")}/ws?since=${chat.cursor}&epoch=${chat.epoch}`);
  socket.onclose = () => { chat.setStatus("reconnecting"); setTimeout(connect, 1000); };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    switch (frame.command) { // each frame says what it is; one this page doesn't know, it skips
      case "messages": chat.apply(frame); break;
      case "error": chat.showError(frame.error); break;
    }
  };
}
connect();
