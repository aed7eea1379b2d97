"""GET /recommendations: the route, its query, who may call, the service, the body."""
