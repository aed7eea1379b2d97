"""The OpenAPI description and the Swagger UI page."""
