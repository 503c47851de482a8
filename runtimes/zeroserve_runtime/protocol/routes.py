"""The Open Inference Protocol v2 REST routes, as one table that the server's REST transport and the
functions both dispatch on, so the two cannot answer different paths. Standard library only: a function
imports it on every cold start."""

from __future__ import annotations

import re
from typing import NamedTuple

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_REPOSITORY_MODEL = r"/v2/repository/models/(?P<name>[^/]+)"

# (method, path pattern, endpoint). An endpoint a surface does not implement (a function has no
# /metrics) is answered as if the route did not exist.
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), endpoint)
    for method, pattern, endpoint in (
        ("GET", r"/v2/health/live", "live"),
        ("GET", r"/v2/health/ready", "ready"),
        ("GET", r"/v2", "server_metadata"),
        ("GET", r"/metrics", "metrics"),
        ("GET", _MODEL, "model_metadata"),
        ("GET", _MODEL + "/ready", "model_ready"),
        ("POST", _MODEL + "/infer", "infer"),
        # OIP's model repository extension; the repository name is optional in the path.
        ("POST", r"/v2/repository(?:/(?P<repository>[^/]+))?/index", "repository_index"),
        ("POST", _REPOSITORY_MODEL + "/load", "repository_load"),
        ("POST", _REPOSITORY_MODEL + "/unload", "repository_unload"),
    )
)


class Route(NamedTuple):
    endpoint: str
    params: dict[str, str | None]


def match(method: str, path: str) -> Route | None:
    for route_method, pattern, endpoint in ROUTES:
        if method == route_method and (found := pattern.fullmatch(path)):
            return Route(endpoint, found.groupdict())
    return None


def no_route(method: str, path: str) -> str:
    return f"no route for {method} {path}"
