"""The ceiling of the server stack: one bare FastAPI route returning a constant JSON body.

Run by bench/lookups.py as its own process. It goes through `jamins serve` itself with
`uvicorn.run` intercepted, so it is served with exactly the uvicorn options of
`jamins serve` (whatever app/cli.py passes), in one worker, without jamins' routes,
middleware and database.

    python bench/ceiling_app.py --port 8099 --body answer.json
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

CEILING_PATH = "/ceiling"


def ceiling_app(body: dict[str, Any]) -> FastAPI:
    app = FastAPI(redirect_slashes=False)

    @app.get(CEILING_PATH)
    async def constant() -> dict[str, Any]:
        return body

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="JSON object to answer")
    args = parser.parse_args()
    app = ceiling_app(json.loads(args.body.read_text()))
    served: list[dict[str, Any]] = []
    real_run = uvicorn.run

    def run_ceiling(_jamins_app: Any, **options: Any) -> None:
        # Same options as `jamins serve`, but our app, one worker, no factory or reload.
        for option in ("workers", "factory", "reload"):
            options.pop(option, None)
        served.append(options)
        real_run(app, **options)

    uvicorn.run = run_ceiling  # type: ignore[assignment]
    from app.cli import cli

    cli(["serve", "--host", "127.0.0.1", "--port", str(args.port)])


if __name__ == "__main__":
    main()
