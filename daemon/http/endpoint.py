"""One route of the API and what the OpenAPI document says about it (`openapi.py` builds the
document from the same list of these that `app.Api` builds its routes from)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["Endpoint", "Handler"]

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One route and what the OpenAPI document says about it."""

    path: str
    method: str  # GET (HEAD too) or POST
    name: str
    summary: str
    handler: Handler
    ok: dict[int, str] = field(default_factory=lambda: {200: "application/json"})
    errors: dict[int, tuple[str, ...]] = field(default_factory=dict)
    auth: bool = False  # needs an API key when keys are set
    probe: bool = False  # open, any Host
    aliases: tuple[str, ...] = ()  # unversioned paths answering the same
    body: str | None = None  # "search", "batch": request body kinds (openapi.py)
    schema: str | None = None  # response schema name for 200
