"""Request bodies: declared size checked before a byte is read, a total deadline on receiving
them, and multipart/form-data parsed while it streams in.

The deadline covers the whole body, not each read, so a client dripping a byte a second is cut
off like one that stops. Multipart is parsed by python-multipart's streaming parser as chunks
arrive, and its limits (parts, header sizes, one file) stop a hostile body at the chunk that
breaks them, not after the whole body was buffered and split.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from avindex.daemon.http.errors import ApiError

__all__ = ["MAX_PARTS", "Form", "FormPart", "FormReader", "boundary_of", "declared_length",
           "read_body"]

MAX_PARTS = 64
MAX_PART_HEADER_BYTES = 8192
MAX_TEXT_FIELD_BYTES = 65536
DIGITS = re.compile(r"[0-9]{1,15}")
BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{1,70}")  # RFC 2046 bchars


def declared_length(request: Request, limit: int) -> int:
    """Content-Length, checked before reading: 411 without one, 413 over `limit`."""
    values = request.headers.getlist("content-length")
    if not values:
        raise ApiError(411, "length_required", "Content-Length is required (no chunked uploads)")
    if len(set(values)) != 1 or not DIGITS.fullmatch(values[0]):
        raise ApiError(400, "bad_request", "Content-Length must be one decimal number")
    length = int(values[0])
    if length > limit:
        raise ApiError(413, "too_large", f"the body is {length} bytes, the limit is {limit}")
    return length


async def read_body(request: Request, length: int, timeout_s: float,
                    feed: Callable[[bytes], None] | None = None) -> bytes:
    """The whole body within `timeout_s` in all (408 `timeout` otherwise); each chunk also goes
    to `feed` as it arrives (a streaming parser that may refuse the body early)."""
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > length:  # the server enforces Content-Length; never trust twice
                    raise ApiError(400, "bad_request", "body longer than Content-Length")
                if feed is not None:
                    feed(chunk)
                chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(408, "timeout", f"the body did not arrive within {timeout_s:g} s") from exc
    except ClientDisconnect as exc:
        raise ApiError(400, "bad_request", "the client went away before the body ended") from exc
    if received != length:
        raise ApiError(400, "bad_request", "the body ended before Content-Length")
    return b"".join(chunks)


def boundary_of(content_type: str | None) -> bytes | None:
    """The boundary of a `multipart/form-data` content type; None for other types (415)."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        return None
    boundary = params.get(b"boundary", b"")
    try:
        text = boundary.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", "the multipart boundary is not ASCII") from exc
    if not BOUNDARY.fullmatch(text) or text.endswith(" "):
        raise ApiError(400, "bad_request", "the multipart boundary is missing or malformed")
    return boundary


@dataclass
class FormPart:
    name: str
    data: bytearray = field(default_factory=bytearray)
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_request", f"form field {self.name[:40]!r} is not UTF-8 "
                           "text") from exc


@dataclass
class Form:
    """Parsed fields: the part named `file` and text fields by name, in order."""

    parts: list[FormPart]

    @property
    def file(self) -> FormPart | None:
        return next((p for p in self.parts if p.name == "file"), None)

    def get(self, name: str) -> str | None:
        return next((p.text for p in self.parts if p.name == name), None)

    def getall(self, name: str) -> list[str]:
        return [t for p in self.parts if p.name == name and (t := p.text)]


class FormReader:
    """Feeds chunks to python-multipart and enforces the limits while it parses."""

    def __init__(self, boundary: bytes) -> None:
        self.parts: list[FormPart] = []
        self._field = self._value = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_end": self._end}, max_header_size=MAX_PART_HEADER_BYTES)

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except (MultipartParseError, FormParserError) as exc:
            raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from exc

    def form(self) -> Form:
        if not self._ended:
            raise ApiError(400, "bad_request", "malformed multipart body: no closing boundary")
        return Form(self.parts)

    # python-multipart callbacks -------------------------------------------------------------
    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise ApiError(400, "bad_request", f"more than {MAX_PARTS} form fields")
        self._headers, self._header_bytes = {}, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._count(end - start)

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._count(end - start)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError(400, "bad_request", "malformed multipart body: part headers too long")

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _headers_done(self) -> None:
        kind, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise ApiError(400, "bad_request", "malformed multipart body: each part needs "
                           "Content-Disposition: form-data with a name")
        if name == "file" and any(p.name == "file" for p in self.parts):
            raise ApiError(400, "bad_request", "more than one file in the form")
        filename = params.get(b"filename")
        self.parts.append(FormPart(
            name, filename=filename.decode("utf-8", "replace") if filename is not None else None,
            content_type=self._headers.get("content-type") or None))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self.parts:
            raise ApiError(400, "bad_request", "malformed multipart body: data before headers")
        part = self.parts[-1]
        part.data += data[start:end]
        if part.name != "file" and len(part.data) > MAX_TEXT_FIELD_BYTES:
            raise ApiError(400, "bad_request", f"form field {part.name[:40]!r} is over "
                           f"{MAX_TEXT_FIELD_BYTES} bytes")

    def _end(self) -> None:
        self._ended = True
