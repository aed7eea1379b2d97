"""The yardstick for cache misses: a bare Flask route that asks Personalize through boto3 on every request.

    GET /recommendations?user_id=U[&num_results=N]  ->  ["item id", ...]  (Personalize's order)

No cache, no catalog join, no fallback: what the service's miss path would cost if it did nothing but the
boto3 call. loadtest.bench serves it under the same gunicorn worker settings as the service
(gunicorn.conf.py's workers / threads / worker class) and points it at the Personalize stand-in.

Environment: AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME (the stand-in), PERSONALIZE_CAMPAIGN_ARN, AWS_REGION and
dummy AWS credentials, WEB_THREADS (botocore's connection pool, as the service sizes it), and the service's
PERSONALIZE_CONNECT_TIMEOUT / PERSONALIZE_READ_TIMEOUT / PERSONALIZE_MAX_ATTEMPTS (same defaults).
"""
from __future__ import annotations

import os

import boto3
import orjson
from botocore.config import Config
from flask import Flask, Response, request

ARN = os.environ.get("PERSONALIZE_CAMPAIGN_ARN", "arn:aws:personalize:us-east-1:123456789012:campaign/bench")
POOL = int(os.environ.get("PERSONALIZE_MAX_CONCURRENCY") or os.environ.get("WEB_THREADS") or "8")

# gunicorn imports this module in each worker (no preload), so every process builds its own client, once,
# before it serves: boto3 client creation is not thread-safe, calls on a built client are.
CLIENT = boto3.session.Session().client(
    "personalize-runtime",
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    config=Config(
        connect_timeout=float(os.environ.get("PERSONALIZE_CONNECT_TIMEOUT", "0.3")),
        read_timeout=float(os.environ.get("PERSONALIZE_READ_TIMEOUT", "0.5")),
        retries={"mode": "standard", "total_max_attempts": int(os.environ.get("PERSONALIZE_MAX_ATTEMPTS", "2"))},
        max_pool_connections=POOL,
    ),
)

app = Flask(__name__)


@app.get("/recommendations")
def recommendations() -> Response:
    """Call GetRecommendations for the user and return the item ids as a JSON array."""
    answer = CLIENT.get_recommendations(
        campaignArn=ARN,
        userId=request.args.get("user_id", "anonymous"),
        numResults=int(request.args.get("num_results", "10")),
    )
    return Response(orjson.dumps([entry["itemId"] for entry in answer.get("itemList", [])]),
                    mimetype="application/json")
