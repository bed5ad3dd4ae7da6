"""An order service on a real ASGI stack that compresses when asked:
Starlette's GZipMiddleware under uvicorn (tests/answers.rs).

Each answer says which Accept-Encoding the request carried, and is padded
past the middleware's minimum size, so it is gzipped whenever gzip is asked.
"""

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route

PADDING = "sneakers " * 200


async def checkout(request):
    body = await request.body()
    return JSONResponse(
        {
            "order": request.headers.get("idempotency-key"),
            "accept_encoding": request.headers.get("accept-encoding"),
            "received": body.decode("utf-8"),
            "note": "café",
            "padding": PADDING,
        },
        status_code=201,
    )


async def catalog(request):
    return JSONResponse(
        {
            "accept_encoding": request.headers.get("accept-encoding"),
            "padding": PADDING,
        }
    )


app = Starlette(
    routes=[
        Route("/checkout", checkout, methods=["POST"]),
        Route("/catalog", catalog, methods=["GET"]),
    ],
    middleware=[Middleware(GZipMiddleware, minimum_size=500)],
)
