"""Step 1: the smallest WebSocket. The page at / connects to /hello/ws, and the server says Hello."""

from flask import Flask, render_template
from flask_sock import Sock

app = Flask(__name__)
# Ping every 25 s: a client that vanished without closing (a laptop shut) then frees its thread.
app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": 65536}
sock = Sock(app)


@app.get("/")
def hello_page():
    """The page that opens the WebSocket and shows what it receives."""
    return render_template("hello.html")


@sock.route("/hello/ws")
def hello(ws):
    """Say Hello, then keep the connection open until the page leaves."""
    ws.send("Hello")
    while True:  # when the route returns, flask-sock closes the socket
        ws.receive()  # raises ConnectionClosed when the page leaves, which ends the route
