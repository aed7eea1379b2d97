"""Request parameters, validated with marshmallow."""
from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from werkzeug.datastructures import MultiDict

from .errors import InvalidParameterError
from .settings import MAX_NUM_RESULTS

# Personalize's own limit for userId.
MAX_USER_ID_LENGTH = 256


class RecommendationQuery(Schema):
    """GET /recommendations?user_id=U[&num_results=N]."""

    class Meta:
        unknown = EXCLUDE  # Braze URLs often carry extra tracking parameters

    user_id = fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_USER_ID_LENGTH),
        metadata={"description": "The Braze user id known to Personalize; URL-encode it (url_param_escape)."},
    )
    num_results = fields.Integer(
        strict=False,
        validate=validate.Range(min=1, max=MAX_NUM_RESULTS),
        metadata={"description": f"How many items to return, 1-{MAX_NUM_RESULTS}."},
    )


def load_query(schema: Schema, args: MultiDict[str, str]) -> dict[str, Any]:
    """Validate query parameters, raising InvalidParameterError that names each bad parameter."""
    errors: dict[str, Any] = {
        name: ["Give this parameter once."] for name in schema.fields if len(args.getlist(name)) > 1
    }
    try:
        values = schema.load(args)
    except ValidationError as exc:
        errors.update(exc.normalized_messages())
    if errors:
        detail = "; ".join(f"{name}: {' '.join(map(str, problems))}" for name, problems in sorted(errors.items()))
        raise InvalidParameterError(f"Invalid request parameters. {detail}", errors=errors)
    return values
