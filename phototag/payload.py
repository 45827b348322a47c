"""Pulling the image bytes out of one TorchServe request, whichever way the client sent them.

TorchServe hands the handler one dict per request: raw bodies arrive under "body", multipart form fields under
their field names, and a JSON body already parsed (when its content type is application/json). Accepted:

- raw image bytes as the body (`curl -T photo.jpg`, `--data-binary @photo.jpg`);
- a multipart form upload with the image in one field (any name; "data", "file" and "image" are looked at first);
- JSON `{"data": "<base64>"}` (a `data:image/...;base64,` prefix is allowed);
- an Open Inference Protocol (KServe v2) inference request: `{"id": ..., "inputs": [{"name": ..., "shape": [1],
  "datatype": "BYTES", "data": ["<base64>"]}]}`. TorchServe 0.12 delivers it as the parsed JSON body both for
  REST (`POST /v2/models/tagger/infer`, where KServe's wrapper posts it too, or `/predictions/tagger`) and for gRPC
  `GRPCInferenceService/ModelInfer`, whose `bytes_contents` the frontend base64-encodes into that same JSON (it
  ignores `raw_input_contents`). `oip_request` tells such a request apart; the handler then answers in OIP form.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

PREFERRED_FIELDS = ("data", "file", "image", "body")
OIP_DATATYPE = "BYTES"  # an encoded image file is one BYTES element


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
    return _decode_base64(encoded, "JSON 'data'")


def _decode_base64(encoded: str, where: str) -> bytes:
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError("bad_base64", f"{where} is not valid base64: {exc}") from None


def _body(request: Mapping[str, Any]) -> Any:
    names = [n for n in PREFERRED_FIELDS if n in request] + [n for n in request if n not in PREFERRED_FIELDS]
    return request[names[0]]


def oip_request(request: Any) -> dict | None:
    """The Open Inference Protocol request document one TorchServe request carries, or None for a plain request.

    Only a parsed JSON object with an "inputs" field counts: TorchServe parses the body when it is declared
    application/json, which the OIP endpoints, KServe's wrapper and every OIP client do.
    """
    if not isinstance(request, Mapping) or not request:
        return None
    body = _body(request)
    return body if isinstance(body, dict) and "inputs" in body else None


def _from_oip(document: Mapping[str, Any]) -> bytes:
    inputs = document["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise PayloadError("bad_oip", "OIP request: 'inputs' must be a non-empty list of tensors")
    tensors = [t for t in inputs if isinstance(t, Mapping) and t.get("datatype") == OIP_DATATYPE]
    if len(tensors) != 1:
        found = [t.get("datatype") if isinstance(t, Mapping) else type(t).__name__ for t in inputs]
        raise PayloadError("bad_oip", f"OIP request: expected exactly one input tensor with datatype "
                                      f"{OIP_DATATYPE} holding the image file, got datatypes {found[:10]}")
    tensor = tensors[0]
    data = tensor.get("data")
    if isinstance(data, (str, bytes, bytearray)):
        data = [data]
    if not isinstance(data, list) or not data:
        raise PayloadError("bad_oip", f"OIP input {tensor.get('name')!r} has no data (gRPC: send the image in "
                                      f"contents.bytes_contents; TorchServe 0.12 ignores raw_input_contents)")
    if len(data) != 1:
        raise PayloadError("bad_oip", f"OIP input {tensor.get('name')!r} holds {len(data)} elements; send one "
                                      f"image per request (shape [1])")
    element = data[0]
    if isinstance(element, (bytes, bytearray)):
        image = bytes(element)
    elif isinstance(element, str):
        image = _decode_base64(element, f"OIP input {tensor.get('name')!r}")
    else:
        raise PayloadError("bad_oip", f"OIP input {tensor.get('name')!r}: a BYTES element must be a base64 "
                                      f"string, got {type(element).__name__}")
    if not image:
        raise PayloadError("empty", f"OIP input {tensor.get('name')!r} is empty (0 bytes)")
    return image


def extract_image_bytes(request: Mapping[str, Any], content_type: str | None = None) -> bytes:
    """One TorchServe request dict -> the image bytes it carries, or PayloadError."""
    if not isinstance(request, Mapping) or not request:
        raise PayloadError("empty", "the request has no body")
    value = _body(request)
    if isinstance(value, dict) and "inputs" in value:
        return _from_oip(value)
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
