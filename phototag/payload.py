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

An OIP request is recognised by its content, not by its Content-Type: standard clients (tritonclient's HTTP
client) send the JSON without `Content-Type: application/json`, so TorchServe hands it over as raw bytes, and
`read_oip` parses it. A body with the `Inference-Header-Content-Length` request header uses OIP's binary tensor
extension: that many bytes of JSON inference request, then the raw data of each input that declares
`parameters.binary_data_size`, in input order (BYTES elements each behind a 4-byte little-endian length).
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREFERRED_FIELDS = ("data", "file", "image", "body")
OIP_DATATYPE = "BYTES"  # an encoded image file is one BYTES element
INFERENCE_HEADER = "Inference-Header-Content-Length"  # OIP binary tensor extension: length of the JSON part
# One image is one element; splitting further would only let a body of empty elements cost memory and time.
MAX_BYTES_ELEMENTS = 16
# Named in every refusal of a BYTES element, so that a client sees both ways it may send the image.
OIP_ENCODINGS = ("send the image file base64-encoded as the element's JSON string, or as raw bytes with the binary "
                 "tensor extension (" + INFERENCE_HEADER + " header, binary_data_size parameter)")


# A request's own say on the big-photo mode (`requested_big_photos`).
BIG_PHOTOS_PARAMETER = "big_photos"
BIG_PHOTOS_HEADER = "X-Big-Photos"  # the same for a raw REST body: TorchServe 0.12 drops the query string
BIG_PHOTOS_CHOICES = ("auto", "off")


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
        raise PayloadError("bad_json", f"expected a JSON object {{\"data\": \"<base64>\"}}, got "
                                       f"{type(document).__name__}")
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
    names = [n for n in PREFERRED_FIELDS if n in request] + [
        n for n in request if n not in PREFERRED_FIELDS and n != BIG_PHOTOS_PARAMETER]
    return request[names[0]] if names else None  # None: nothing but the parameter


@dataclass
class OipRequest:
    """One Open Inference Protocol inference request, read once by `read_oip`.

    `document` is the JSON inference request; with the binary extension, each binary input's elements are put
    into its "data" as bytes, so that the rest of the handler reads both forms alike. `problem` is set when the
    request is OIP by its form but cannot be read (a bad binary header): it is still answered in OIP terms.
    """
    document: dict
    binary: bool = False  # it came with the binary tensor extension
    problem: PayloadError | None = None

    def image_bytes(self) -> bytes:
        """The image file this request carries, or PayloadError naming what is wrong with it."""
        if self.problem is not None:
            raise self.problem
        return _from_oip(self.document)

    def binary_output(self, name: str) -> bool:
        """Whether output `name` is answered as binary data.

        Only a request that used the binary extension is answered in it: KServe's wrapper forwards a JSON
        request's `binary_data_output` parameter (tritonclient sets it whenever no outputs are named) to TorchServe
        but reads TorchServe's answer as JSON only, so a binary answer there would become its HTTP 500. Every OIP
        client reads JSON outputs whatever it asked for. Otherwise the output's own `binary_data` parameter
        decides, then the request's `binary_data_output`, as in the extension.
        """
        if not self.binary:
            return False
        outputs = self.document.get("outputs")
        for output in outputs if isinstance(outputs, list) else ():
            if not isinstance(output, Mapping) or output.get("name") != name:
                continue
            parameters = output.get("parameters")
            if isinstance(parameters, Mapping) and "binary_data" in parameters:
                return parameters["binary_data"] is True
        parameters = self.document.get("parameters")
        return isinstance(parameters, Mapping) and parameters.get("binary_data_output") is True


def _parse_json_object(text: bytes | str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: a hostile, deeply nested document
        raise PayloadError("bad_oip", f"{what} is not valid JSON: {str(exc)[:120]}") from None


def _looks_like_json_object(value: Any) -> bool:
    """Whether a raw body could be a JSON object; decoding anything else (image bytes) as JSON would be wasted."""
    if isinstance(value, (bytes, bytearray)):
        return value.lstrip(b" \t\r\n")[:1] == b"{"
    return isinstance(value, str) and value.lstrip()[:1] == "{"


def _split_bytes_elements(raw: bytes, name: Any) -> list[bytes]:
    """A BYTES tensor's binary data -> its elements: each is a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if len(elements) == MAX_BYTES_ELEMENTS:
            raise PayloadError("bad_oip", f"OIP input {name!r} holds more than {MAX_BYTES_ELEMENTS} elements; send "
                                          f"one image per request (shape [1])")
        if len(raw) - offset < 4:
            raise PayloadError("bad_oip", f"OIP input {name!r}: BYTES binary data ends inside an element's 4-byte "
                                          f"length prefix (at byte {offset} of {len(raw)}); {OIP_ENCODINGS}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if size > len(raw) - offset:
            raise PayloadError("bad_oip", f"OIP input {name!r}: a BYTES element declares {size} bytes but only "
                                          f"{len(raw) - offset} follow; each element must be preceded by its "
                                          f"4-byte little-endian length ({OIP_ENCODINGS})")
        elements.append(raw[offset:offset + size])
        offset += size
    return elements


def _binary_size(tensor: Any) -> int | None:
    parameters = tensor.get("parameters") if isinstance(tensor, Mapping) else None
    if not isinstance(parameters, Mapping) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PayloadError("bad_oip", f"OIP input {tensor.get('name')!r}: binary_data_size must be a whole number "
                                      f"of bytes, got {size!r}")
    return size


def read_binary_request(body: bytes, header_length: Any) -> dict:
    """A binary-extension body -> the inference request document, each binary input's data put in its "data".

    `header_length` is the Inference-Header-Content-Length header as received. Refuses, naming the problem, a
    header length that is not a whole number or exceeds the body, a JSON part that is not an inference request,
    binary sizes that do not add up to the bytes after the JSON part, and an input with neither "data" nor
    binary_data_size.
    """
    text = str(header_length).strip()
    if not (text.isascii() and text.isdigit()):  # no sign, fraction, exponent, or other scripts' digits
        raise PayloadError("bad_oip", f"{INFERENCE_HEADER} must be the byte length of the JSON part, a whole "
                                      f"number, got {text[:40]!r}")
    length = int(text)
    if length > len(body):
        raise PayloadError("bad_oip", f"{INFERENCE_HEADER} is {length} but the body has only {len(body)} bytes")
    document = _parse_json_object(bytes(body[:length]), f"the first {length} bytes ({INFERENCE_HEADER})")
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise PayloadError("bad_oip", f"the JSON part ({INFERENCE_HEADER}: {length} bytes) is not an OIP inference "
                                      f"request: expected an object with an 'inputs' list")
    binary = memoryview(body)[length:]
    sizes = [_binary_size(tensor) for tensor in document["inputs"]]
    declared = sum(size for size in sizes if size is not None)
    if declared != len(binary):
        raise PayloadError("bad_oip", f"the inputs' binary_data_size parameters add up to {declared} bytes, but "
                                      f"{len(binary)} bytes follow the {length}-byte JSON part")
    offset = 0
    for tensor, size in zip(document["inputs"], sizes):
        if size is None:
            if not (isinstance(tensor, Mapping) and "data" in tensor):
                name = tensor.get("name") if isinstance(tensor, Mapping) else None
                raise PayloadError("bad_oip", f"OIP input {name!r} has neither 'data' nor a binary_data_size "
                                              f"parameter saying how many of the bytes after the JSON part are its")
            continue
        raw = bytes(binary[offset:offset + size])
        offset += size
        # Other datatypes keep their raw bytes: the handler reads only the BYTES tensor.
        tensor["data"] = _split_bytes_elements(raw, tensor.get("name")) if tensor.get("datatype") == OIP_DATATYPE \
            else raw
    return document


def read_oip(request: Any, header_length: Any = None) -> OipRequest | None:
    """The Open Inference Protocol request one TorchServe request carries, or None for a plain request.

    OIP by content, whatever the Content-Type: a JSON object with an "inputs" field (parsed by TorchServe when
    declared application/json, else read here from the raw body), or any body sent with the binary extension's
    header (`header_length`, the Inference-Header-Content-Length value). Never raises: a binary-extension request
    that cannot be read comes back with its `problem`, so that its batch is tagged as usual.
    """
    if not isinstance(request, Mapping) or not request:
        return None
    body = _body(request)
    if header_length is not None:
        if isinstance(body, (dict, list)):
            # Declared application/json, and TorchServe parsed the whole body: there is no binary part, and the
            # header's length was that of the original text, not of this re-encoding.
            body = json.dumps(body).encode()
            header_length = len(body)
        elif isinstance(body, str):  # text/*: TorchServe decoded it, and encoding gives back the same bytes
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            body = b""
        try:
            return OipRequest(read_binary_request(body, header_length), binary=True)
        except PayloadError as exc:
            return OipRequest({}, binary=True, problem=exc)
    if _looks_like_json_object(body):
        try:
            body = _parse_json_object(body, "the body")
        except PayloadError:
            return None  # not JSON after all: the plain path answers it
    return OipRequest(body) if isinstance(body, dict) and "inputs" in body else None


def oip_request(request: Any, header_length: Any = None) -> dict | None:
    """The OIP inference request document one TorchServe request carries (see `read_oip`), or None."""
    parsed = read_oip(request, header_length)
    return None if parsed is None else parsed.document


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
        try:
            image = _decode_base64(element, f"OIP input {tensor.get('name')!r}")
        except PayloadError as exc:
            raise PayloadError(exc.reason, f"{exc}; {OIP_ENCODINGS}") from None
    else:
        raise PayloadError("bad_oip", f"OIP input {tensor.get('name')!r}: a BYTES element must be a base64 "
                                      f"string, got {type(element).__name__}; {OIP_ENCODINGS}")
    if not image:
        raise PayloadError("empty", f"OIP input {tensor.get('name')!r} is empty (0 bytes)")
    return image


def extract_image_bytes(request: Mapping[str, Any] | OipRequest, content_type: str | None = None) -> bytes:
    """One TorchServe request dict (or the OipRequest `read_oip` made of it) -> the image bytes, or PayloadError."""
    if isinstance(request, OipRequest):
        return request.image_bytes()
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


def requested_big_photos(request: Mapping[str, Any] | OipRequest) -> str:
    """What one request asks of the big-photo mode: "auto" (the default: the archive's model-config.yaml decides
    by the photo's size) or "off" (objects read at the ordinary size only, a quick first pass over a search's drone
    photos). Sent as a `big_photos` multipart field or the X-Big-Photos header (REST; the handler puts the header
    beside the fields), an entry of the input map (gRPC Predictions), a field beside "data" in a base64 JSON body,
    or a request parameter (OIP). PayloadError naming the parameter for any other value."""
    if isinstance(request, OipRequest):
        parameters = request.document.get("parameters")
        value = parameters.get(BIG_PHOTOS_PARAMETER) if isinstance(parameters, Mapping) else None
    elif isinstance(request, Mapping):
        value = request.get(BIG_PHOTOS_PARAMETER)
        body = _body(request)
        if value is None and isinstance(body, Mapping) and "inputs" not in body:
            value = body.get(BIG_PHOTOS_PARAMETER)
    else:
        value = None
    if value is None:
        return BIG_PHOTOS_CHOICES[0]
    text = bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    choice = text.strip().lower()
    if choice not in BIG_PHOTOS_CHOICES:
        raise PayloadError("bad_parameter", f"{BIG_PHOTOS_PARAMETER} must be one of "
                                            f"{', '.join(BIG_PHOTOS_CHOICES)}, not {text[:40]!r}")
    return choice
