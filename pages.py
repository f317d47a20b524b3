"""The pages: a landing page, the two chat pages, and /hello."""

from flask import Blueprint, render_template, request

from text_rules import MAX_TEXT, MAX_USER

bp = Blueprint("pages", __name__)

# What the chat pages check before sending, so a person hears about it at once.
LIMITS = {"user": MAX_USER, "text": MAX_TEXT}


@bp.get("/")
def index():
    """The landing page: what this is, and links to the other pages."""
    return render_template("index.html")


@bp.get("/hello")
def hello():
    """The smallest WebSocket example."""
    return render_template("hello.html")


@bp.get("/polling")
def polling():
    """The chat, kept up to date by long polling GET /messages, or with ?interval=2 by asking every 2 s."""
    interval = request.args.get("interval", type=int)
    if interval is not None:
        interval = min(max(interval, 1), 60)
    return render_template("polling.html", limits=LIMITS, interval=interval)


@bp.get("/websocket")
def websocket():
    """The same chat, kept up to date over the WebSocket /ws."""
    return render_template("websocket.html", limits=LIMITS)
