"""The client of a stand-in's /_control/ routes when it runs in another process (bench, e2e)."""
from __future__ import annotations

import json
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen


class ControlClient:
    """Calls, faults and reset of a stand-in at url; each stand-in's own Control adds what only it has."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urlopen(request, timeout=5) as response:  # noqa: S310 - a local URL
                return json.loads(response.read())
        except HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise RuntimeError(f"stand-in control {path} failed: HTTP {exc.code} {detail}") from None

    def calls(self) -> dict[str, Any]:
        return self._call("GET", "/_control/calls")

    def set_fault(self, mode: str, latency_ms: int = 0, status: int = 500, times: int | None = None) -> None:
        self._call("POST", "/_control/fault", {"mode": mode, "latency_ms": latency_ms, "status": status,
                                                "times": times})

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})
