"""An order service on a real WSGI stack (Flask under gunicorn) for
tests/bypass.rs.

Every request it answers is appended to ORDERS_LOG as a JSON line ("seen",
with the path as Flask routed it and the status); every order its order
endpoint takes is appended as an "order" line with the X-Flashgate-Ticket it
came with. With ORDERS_CASE_INSENSITIVE=1 it routes ignoring case, as IIS
and ASP.NET do.
"""

import json
import os

from flask import Flask, request

LOG = os.environ["ORDERS_LOG"]
STACK = "flask+gunicorn"


def record(event, **fields):
    line = json.dumps({"stack": STACK, "event": event, **fields})
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")


app = Flask(__name__)


@app.post("/checkout")
def checkout():
    record(
        "order",
        path=request.path,
        query=request.query_string.decode("latin-1"),
        ticket=request.headers.get("X-Flashgate-Ticket"),
        attempt=request.headers.get("X-Flashgate-Attempt"),
        probe=request.headers.get("X-Probe"),
    )
    return {"order": "placed"}, 201


@app.after_request
def seen(response):
    record(
        "seen",
        path=request.path,
        raw=request.environ.get("RAW_URI"),
        status=response.status_code,
        endpoint=request.endpoint,
        ticket=request.headers.get("X-Flashgate-Ticket"),
        probe=request.headers.get("X-Probe"),
    )
    return response


if os.environ.get("ORDERS_CASE_INSENSITIVE") == "1":
    routed = app.wsgi_app

    def case_insensitive(environ, start_response):
        environ["PATH_INFO"] = environ.get("PATH_INFO", "").lower()
        return routed(environ, start_response)

    app.wsgi_app = case_insensitive
