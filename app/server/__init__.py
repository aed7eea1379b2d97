"""How requests reach the app: gunicorn's worker, and the caller's address behind trusted proxies."""
