"""`multipart/form-data` bodies (RFC 7578) parsed from bytes, for POST /search uploads.

The body is read whole (its size is capped before reading), then split on the boundary. The
standard library's `cgi` is gone from Python 3.13 and `email` rewrites line endings of text
parts, so this small parser keeps every part's bytes exactly as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

__all__ = ["FormPart", "MultipartError", "boundary_of", "parse_form"]

MAX_PARTS = 64
MAX_HEADER_BYTES = 8192


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


@dataclass(frozen=True)
class FormPart:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MultipartError(f"form field {self.name!r} is not UTF-8 text") from exc


def boundary_of(content_type: str) -> str | None:
    """The boundary of a `multipart/form-data` content type, or None for other types."""
    message = Message()
    message["content-type"] = content_type
    if message.get_content_type() != "multipart/form-data":
        return None
    boundary = message.get_param("boundary")
    return boundary if isinstance(boundary, str) and 0 < len(boundary) <= 200 else None


def _part_headers(raw: bytes) -> Message:
    if len(raw) > MAX_HEADER_BYTES:
        raise MultipartError("part headers too long")
    message = Message()
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if not sep:
            raise MultipartError(f"bad part header line {line[:80]!r}")
        message[name.strip()] = value.strip()
    return message


def parse_form(body: bytes, boundary: str) -> list[FormPart]:
    """Every part of the form, in order; raises MultipartError when the body is malformed."""
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    # chunks[0] is the preamble; the last chunk starts with "--" (the close delimiter).
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise MultipartError("no closing boundary (truncated upload?)")
    parts: list[FormPart] = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise MultipartError("a part is not framed by CRLF")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("a part has no blank line after its headers")
        headers = _part_headers(head)
        if headers.get_content_disposition() != "form-data":
            raise MultipartError("a part is not Content-Disposition: form-data")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise MultipartError("a part has no name")
        filename = headers.get_param("filename", header="content-disposition")
        content_type = headers.get("content-type")
        parts.append(FormPart(name, data, filename if isinstance(filename, str) else None,
                              content_type))
        if len(parts) > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} form fields")
    return parts
