"""The yardstick: a bare Flask route returning a constant 10-item array, served by the same gunicorn settings."""
import orjson
from flask import Flask, Response

ITEMS = orjson.dumps([
    {"id": str(1000 + i), "name": f"Item {i}", "url": f"https://shop.example.com/p/{1000 + i}", "price": 19.99,
     "image": f"https://cdn.example.com/img/{1000 + i}.jpg"}
    for i in range(10)
])

app = Flask(__name__)


@app.get("/recommendations")
def recommendations() -> Response:
    """Return the same array for everyone."""
    return Response(ITEMS, mimetype="application/json")
