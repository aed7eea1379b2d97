"""JSON responses serialised with orjson."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response


def json_response(body: Any, status: int = 200) -> Response:
    """Serialise body once with orjson into a JSON response."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")
