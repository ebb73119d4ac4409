"""The one error shape of every endpoint: `{"error": code, "message": text}`."""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["ApiError", "error_response"]


class ApiError(Exception):
    """A request the API answers with a 4xx/5xx; `code` is the stable label clients match on."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, dict(headers or {})


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, *, close: bool = False) -> JSONResponse:
    """`close`: the request body was not read to its end, so the connection cannot carry
    another request (its unread bytes would be taken for one)."""
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": code, "message": message}, status, headers)
