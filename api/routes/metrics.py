"""GET /metrics for Prometheus; with DEPLOY_METRICS_TOKEN set, only for a scraper that sends it."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.metrics import Metrics
from api.settings import Settings

router = APIRouter(tags=["metrics"])
bearer = HTTPBearer(auto_error=False, description="DEPLOY_METRICS_TOKEN, when it is set")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format (or OpenMetrics if asked for)"},
        401: {"description": "DEPLOY_METRICS_TOKEN is set and was not sent"},
    },
)
def get_metrics(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Response:
    settings: Settings = request.app.state.settings
    if settings.deploy_metrics_token is not None:
        expected = settings.deploy_metrics_token.get_secret_value().encode()
        sent = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(expected, sent):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="Metrics need DEPLOY_METRICS_TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
    metrics: Metrics = request.app.state.metrics
    content, content_type = metrics.exposition(request.headers.get("accept"))
    return Response(content, media_type=content_type)
