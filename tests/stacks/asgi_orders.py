"""An order service on a real ASGI stack (Starlette under uvicorn) for
tests/bypass.rs.

Every request it answers is appended to ORDERS_LOG as a JSON line ("seen",
with the path as Starlette routed it and the status); every order its order
endpoint takes is appended as an "order" line with the X-Flashgate-Ticket it
came with. With ORDERS_CASE_INSENSITIVE=1 it routes ignoring case, as IIS
and ASP.NET do.
"""

import json
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

LOG = os.environ["ORDERS_LOG"]
STACK = "starlette+uvicorn"
CASE_INSENSITIVE = os.environ.get("ORDERS_CASE_INSENSITIVE") == "1"


def record(event, **fields):
    line = json.dumps({"stack": STACK, "event": event, **fields})
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def checkout(request):
    record(
        "order",
        path=request.url.path,
        query=request.url.query,
        ticket=request.headers.get("x-flashgate-ticket"),
        attempt=request.headers.get("x-flashgate-attempt"),
        probe=request.headers.get("x-probe"),
    )
    return JSONResponse({"order": "placed"}, status_code=201)


orders = Starlette(routes=[Route("/checkout", checkout, methods=["POST"])])


async def app(scope, receive, send):
    """Records what the router saw and answered."""
    if scope["type"] != "http":
        return await orders(scope, receive, send)
    if CASE_INSENSITIVE:
        scope = dict(scope, path=scope["path"].lower())
    answered = {}

    async def sending(message):
        if message["type"] == "http.response.start":
            answered["status"] = message["status"]
        await send(message)

    await orders(scope, receive, sending)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    record(
        "seen",
        path=scope["path"],
        raw=scope.get("raw_path", b"").decode("latin-1"),
        status=answered.get("status"),
        ticket=headers.get("x-flashgate-ticket"),
        probe=headers.get("x-probe"),
    )
