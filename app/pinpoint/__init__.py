"""Amazon Pinpoint's recommender models, replaced: the configuration API, its stores, serving them, the transformer
Lambda. `app.pinpoint.lambda_handler` stays the Lambda handler's name (README, "Moving from Amazon Pinpoint")."""
from app.pinpoint.handler import lambda_handler

__all__ = ["lambda_handler"]
