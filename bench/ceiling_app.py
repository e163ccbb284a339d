"""The ceilings of the server stack: constant bytes from a raw ASGI app (THE ceiling: nothing
between uvicorn and the answer), and from one bare FastAPI route (the framework's share).

Run by bench/lookups.py as its own process. It goes through `jamins serve` itself with
`uvicorn.run` intercepted, so it is served with exactly the uvicorn options of
`jamins serve` (whatever app/cli.py passes: the HTTP protocol class, keep-alive, proxy
headers...), in one worker, without jamins' routes, middleware and database. Uvicorn's own
access log is off (a ceiling logs nothing); the options served are written to
`--options-out` for the results file.

    python bench/ceiling_app.py --kind raw --port 8099 --body answer.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.types import Receive, Scope, Send  # noqa: E402

CEILING_PATH = "/ceiling"
CONTENT_TYPE = b"application/json"


def fastapi_ceiling(body: bytes) -> FastAPI:
    """One bare FastAPI route returning the answer's JSON object, as the earlier rounds of
    BENCHMARKS.md measured it (FastAPI encodes it per request)."""
    app = FastAPI(redirect_slashes=False)
    answer = json.loads(body)

    @app.get(CEILING_PATH)
    async def constant() -> dict[str, Any]:
        return answer  # type: ignore[no-any-return]

    return app


class RawCeiling:
    """The least an ASGI app can do per request: two messages, prebuilt headers."""

    def __init__(self, body: bytes) -> None:
        self.start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        self.body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send(self.start)
        await send(self.body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["raw", "fastapi"], default="raw")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="the bytes to answer")
    parser.add_argument("--options-out", type=Path, help="write the uvicorn options here")
    args = parser.parse_args()
    body = args.body.read_bytes()
    app: Any = RawCeiling(body) if args.kind == "raw" else fastapi_ceiling(body)
    real_run = uvicorn.run

    def run_ceiling(_jamins_app: Any, **options: Any) -> None:
        # Same options as `jamins serve`, but our app, one worker, no factory or reload.
        for option in ("workers", "factory", "reload"):
            options.pop(option, None)
        options["access_log"] = False
        if args.options_out is not None:
            args.options_out.write_text(json.dumps(options, default=repr, indent=2) + "\n")
        real_run(app, **options)

    uvicorn.run = run_ceiling  # type: ignore[assignment]
    from app.cli import cli

    cli(["serve", "--host", "127.0.0.1", "--port", str(args.port)])


if __name__ == "__main__":
    main()
