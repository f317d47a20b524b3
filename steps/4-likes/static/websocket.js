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
  vote: (id, vote) => sendFrame({ command: vote, id }),
});

// ws: or wss: as the page is http: or https:, from our cursor: the first frame holds all that we missed.
function connect() {
  socket = new WebSocket(`${location.origin.replace("http", "ws")}/ws?since=${chat.cursor}`);
  socket.onclose = () => { chat.setStatus("reconnecting"); setTimeout(connect, 1000); };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.command === "error") chat.showError(frame.error);
    else chat.apply(frame); // a `messages` frame
  };
}
connect();
