// ws: for an http: page, wss: for https:, on whatever host served the page.
const socket = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/hello/ws`);
const status = document.getElementById("status");
socket.onopen = () => { status.textContent = "connected"; };
socket.onmessage = (event) => { document.getElementById("said").textContent = event.data; };
socket.onclose = () => { status.textContent = "The server went away. Reload the page to connect again."; };
