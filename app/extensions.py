"""Flask extension singletons, bound to an app in create_app()."""
from flask_caching import Cache

cache = Cache()
