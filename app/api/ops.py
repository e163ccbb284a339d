"""Operations routes: readiness and Prometheus metrics (liveness is /healthz)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from app.errors import RETRY_AFTER_SECONDS
from app.metrics import readiness, refresh_metrics
from app.runtime import server_state

router = APIRouter()


class ReadyAnswer(BaseModel):
    status: str = Field(description='"ready" or "not ready"')
    checks: dict[str, str] = Field(
        description="database, chain, indexer, background (a loop not running), writer: "
        '"ok" or why not'
    )
    head_block: int | None = Field(description="The chain node's latest block, if it answered.")
    indexer_lag: int = Field(description="Blocks the indexer is behind (0 without an indexer).")


@router.get(
    "/readyz",
    response_model=ReadyAnswer,
    responses={503: {"model": ReadyAnswer, "description": "A check failed"}},
    summary="Readiness: database, chain node with the right chain id, indexer lag",
)
async def readyz(request: Request) -> JSONResponse:
    state = server_state(request.app)
    found = await readiness(state.started(), state.metrics)
    if found.ready:
        return JSONResponse(found.body())
    return JSONResponse(
        found.body(), status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    state = server_state(request.app)
    await refresh_metrics(state.started(), state.metrics)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
