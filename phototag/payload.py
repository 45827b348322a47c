"""Pulling the image bytes out of one TorchServe request, whichever way the client sent them.

TorchServe hands the handler one dict per request: raw bodies arrive under "body", multipart form fields under
their field names, and a JSON body already parsed (when its content type is application/json). Accepted:

- raw image bytes as the body (`curl -T photo.jpg`, `--data-binary @photo.jpg`);
- a multipart form upload with the image in one field (any name; "data", "file" and "image" are looked at first);
- JSON `{"data": "<base64>"}` (a `data:image/...;base64,` prefix is allowed).
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

PREFERRED_FIELDS = ("data", "file", "image", "body")


class PayloadError(ValueError):
    """The request carries no usable image bytes; `reason` is a short slug, str() a message naming the problem."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _from_json(document: Any) -> bytes:
    if isinstance(document, list):
        raise PayloadError("bad_json", f"expected one JSON object {{\"data\": \"<base64>\"}}, got a list of "
                                       f"{len(document)} items; send one image per request")
    if not isinstance(document, dict):
        raise PayloadError("bad_json", f"expected a JSON object {{\"data\": \"<base64>\"}}, got {type(document).__name__}")
    if "data" not in document:
        raise PayloadError("bad_json", f"JSON body has no 'data' field (fields: {sorted(document)[:10]})")
    encoded = document["data"]
    if not isinstance(encoded, str):
        raise PayloadError("bad_json", f"JSON 'data' must be a base64 string, got {type(encoded).__name__}")
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError("bad_base64", f"JSON 'data' is not valid base64: {exc}") from None


def extract_image_bytes(request: Mapping[str, Any], content_type: str | None = None) -> bytes:
    """One TorchServe request dict -> the image bytes it carries, or PayloadError."""
    if not isinstance(request, Mapping) or not request:
        raise PayloadError("empty", "the request has no body")
    names = [n for n in PREFERRED_FIELDS if n in request] + [n for n in request if n not in PREFERRED_FIELDS]
    value = request[names[0]]
    if isinstance(value, (dict, list)):
        return _from_json(value)
    if isinstance(value, str):
        raise PayloadError("text_body", "the body is text; send the image bytes, a multipart upload or "
                                        "JSON {\"data\": \"<base64>\"}")
    if not isinstance(value, (bytes, bytearray)):
        raise PayloadError("empty", "the request has no body")
    if content_type and content_type.split(";")[0].strip().lower() == "application/json":
        # TorchServe forwards JSON it could not parse as raw bytes.
        raise PayloadError("bad_json", "the body is declared application/json but is not valid JSON")
    if not value:
        raise PayloadError("empty", "the body is empty (0 bytes)")
    return bytes(value)
