import base64
import json
import struct

import pytest

from phototag.payload import (
    INFERENCE_HEADER,
    PayloadError,
    extract_image_bytes,
    oip_request,
    read_oip,
    requested_big_photos,
)

JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes"


def test_raw_body():
    assert extract_image_bytes({"body": bytearray(JPEG)}) == JPEG


def test_multipart_field_with_any_name():
    assert extract_image_bytes({"photo": JPEG}) == JPEG
    assert extract_image_bytes({"note": b"x", "file": JPEG}) == JPEG


def test_json_base64_with_and_without_data_url_prefix():
    encoded = base64.b64encode(JPEG).decode()
    assert extract_image_bytes({"body": {"data": encoded}}) == JPEG
    assert extract_image_bytes({"body": {"data": "data:image/jpeg;base64," + encoded}}) == JPEG
    assert extract_image_bytes({"body": {"data": encoded[:8] + "\n" + encoded[8:]}}) == JPEG


@pytest.mark.parametrize("request_, content_type, reason, text", [
    ({"body": {"data": "not base64!!"}}, "application/json", "bad_base64", "not valid base64"),
    ({"body": {"image": "abc"}}, "application/json", "bad_json", "no 'data' field"),
    ({"body": [{"data": "abc"}]}, "application/json", "bad_json", "got a list of 1"),
    ({"body": {"data": 5}}, "application/json", "bad_json", "base64 string"),
    ({"body": b"{not json"}, "application/json", "bad_json", "not valid JSON"),
    ({"body": "some text"}, "text/plain", "text_body", "body is text"),
    ({"body": b""}, None, "empty", "0 bytes"),
    ({}, None, "empty", "no body"),
])
def test_bad_payloads_name_the_problem(request_, content_type, reason, text):
    with pytest.raises(PayloadError, match=text) as info:
        extract_image_bytes(request_, content_type)
    assert info.value.reason == reason


# ---- Open Inference Protocol (KServe v2) requests ---------------------------------------------------------------
def oip(data, datatype="BYTES"):
    return {"body": {"id": "r1", "inputs": [{"name": "image", "shape": [1], "datatype": datatype, "data": data}]}}


def test_oip_request_with_base64_bytes_or_a_bare_string():
    encoded = base64.b64encode(JPEG).decode()
    assert extract_image_bytes(oip([encoded]), "application/json") == JPEG
    assert extract_image_bytes(oip(["data:image/jpeg;base64," + encoded])) == JPEG
    assert extract_image_bytes(oip([JPEG])) == JPEG  # raw bytes (in process, or a client that sends them so)
    assert extract_image_bytes(oip(encoded)) == JPEG
    # other tensors may ride along; the one BYTES tensor is the image
    request = oip([encoded])
    request["body"]["inputs"].append({"name": "threshold", "shape": [1], "datatype": "FP32", "data": [0.5]})
    assert extract_image_bytes(request) == JPEG


def test_oip_request_is_told_apart_from_plain_requests():
    assert oip_request(oip(["AAAA"])) == oip(["AAAA"])["body"]
    grpc_style = {"body": {"id": "", "model_name": "tagger", "inputs": []}}  # what TorchServe's ModelInfer builds
    assert oip_request(grpc_style) is grpc_style["body"]
    for plain in ({"body": JPEG}, {"body": {"data": "AAAA"}}, {"data": {"data": "AAAA"}}, {"file": JPEG}, {},
                  {"body": [{"inputs": []}]}, {"body": "inputs"}, None):
        assert oip_request(plain) is None


@pytest.mark.parametrize("request_, reason, text", [
    ({"body": {"inputs": []}}, "bad_oip", "non-empty list"),
    ({"body": {"inputs": {"name": "x"}}}, "bad_oip", "non-empty list"),
    (oip([[1, 2, 3]], datatype="UINT8"), "bad_oip", "exactly one input tensor with datatype BYTES"),
    ({"body": {"inputs": [{"datatype": "BYTES", "data": ["AAAA"]}] * 2}}, "bad_oip", "exactly one input tensor"),
    (oip(None), "bad_oip", "ignores raw_input_contents"),
    (oip([]), "bad_oip", "has no data"),
    (oip(["AAAA", "AAAA"]), "bad_oip", "one image per request"),
    (oip([5]), "bad_oip", "must be a base64 string.*binary tensor extension"),
    (oip(["###"]), "bad_base64", "OIP input 'image' is not valid base64.*or as raw bytes with the binary tensor"),
    (oip([""]), "empty", "0 bytes"),
])
def test_bad_oip_requests_name_the_problem(request_, reason, text):
    with pytest.raises(PayloadError, match=text) as info:
        extract_image_bytes(request_, "application/json")
    assert info.value.reason == reason


# ---- OIP recognised by content: no Content-Type, and the binary tensor extension ----------------------------------
def oip_json(data, **extra) -> dict:
    return {"id": "r1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": data}], **extra}


def binary_body(elements: list[bytes], **extra) -> tuple[bytes, str]:
    """(body, Inference-Header-Content-Length) of a binary-extension request, built by the extension's text: the
    JSON part, then the BYTES tensor's elements, each behind its 4-byte little-endian length."""
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps({"inputs": [{"name": "image", "shape": [len(elements)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}], **extra}).encode()
    return header + raw, str(len(header))


def test_oip_json_without_content_type_is_recognised_by_content():
    encoded = base64.b64encode(JPEG).decode()
    for body in (json.dumps(oip_json([encoded])).encode(), bytearray(b" \n" + json.dumps(oip_json([encoded])).encode()),
                 json.dumps(oip_json([encoded])),  # text/*: TorchServe hands it over decoded
                 oip_json([encoded])):  # application/json: parsed by TorchServe
        parsed = read_oip({"body": body})
        assert parsed is not None and not parsed.binary and parsed.problem is None
        assert parsed.document["id"] == "r1" and extract_image_bytes(parsed) == JPEG
        assert oip_request({"body": body})["id"] == "r1"
    # Still plain requests: image bytes, the plain JSON form, JSON-looking bytes that are not JSON, nesting too deep
    # for the parser (a refusal of that one request, not an exception through the whole batch).
    for body in (JPEG, b"\x89PNG\r\n", json.dumps({"data": encoded}).encode(), b"{not json", b"{}",
                 b"[" + json.dumps(oip_json([encoded])).encode() + b"]",
                 b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        assert read_oip({"body": body}) is None, body[:20]


def test_binary_extension_request_gives_the_image():
    body, length = binary_body([JPEG], id="b-1")
    parsed = read_oip({"body": bytearray(body)}, length)
    assert parsed.binary and parsed.problem is None and parsed.document["id"] == "b-1"
    assert extract_image_bytes(parsed) == JPEG
    assert oip_request({"body": body}, length)["inputs"][0]["data"] == [JPEG]
    # An empty element is a refused photo, not a parse error; JSON-data inputs and other datatypes ride along.
    assert read_oip({"body": binary_body([b""])[0]}, binary_body([b""])[1]).problem is None
    with pytest.raises(PayloadError, match="0 bytes"):
        extract_image_bytes(read_oip({"body": binary_body([b""])[0]}, binary_body([b""])[1]))
    raw = struct.pack("<I", len(JPEG)) + JPEG
    header = json.dumps({"inputs": [
        {"name": "threshold", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
        {"name": "note", "shape": [1], "datatype": "INT32", "data": [7]},
        {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}).encode()
    parsed = read_oip({"body": header + struct.pack("<f", 0.5) + raw}, f" {len(header)} ")
    assert extract_image_bytes(parsed) == JPEG and parsed.document["inputs"][0]["data"] == struct.pack("<f", 0.5)
    # With application/json, TorchServe parses a body that has no binary part: the header still marks it binary.
    parsed = read_oip({"body": json.loads(binary_body([])[0])}, "999")
    assert parsed.binary and parsed.problem is None and parsed.document["inputs"][0]["data"] == []


def test_the_answer_follows_the_requests_choice_of_encoding():
    body, length = binary_body([JPEG])
    assert not read_oip({"body": body}, length).binary_output("tags")  # the extension's default: JSON
    for extra, binary in (({"parameters": {"binary_data_output": True}}, True),
                          ({"parameters": {"binary_data_output": False}}, False),
                          ({"outputs": [{"name": "tags", "parameters": {"binary_data": True}}]}, True),
                          ({"outputs": [{"name": "tags", "parameters": {"binary_data": False}}],
                            "parameters": {"binary_data_output": True}}, False),  # the output's own choice wins
                          ({"outputs": [{"name": "other", "parameters": {"binary_data": True}}]}, False),
                          ({"outputs": ["tags", 5], "parameters": {"binary_data_output": True}}, True)):
        body, length = binary_body([JPEG], **extra)
        assert read_oip({"body": body}, length).binary_output("tags") is binary, extra
        # A JSON request may ask for binary outputs too (tritonclient does whenever it names none), but is always
        # answered in JSON: KServe's wrapper forwards the parameter and then reads the answer as JSON only.
        assert read_oip({"body": oip_json(["AAAA"], **extra)}).binary_output("tags") is False


def _with_header(document: dict, tail: bytes = b"") -> tuple[bytes, str]:
    header = json.dumps(document).encode()
    return header + tail, str(len(header))


_PREFIXED = struct.pack("<I", len(JPEG)) + JPEG


@pytest.mark.parametrize("body_and_length, text", [
    ((binary_body([JPEG])[0], "abc"), f"{INFERENCE_HEADER} must be the byte length of the JSON part, a whole number"),
    ((binary_body([JPEG])[0], "-5"), "a whole number, got '-5'"),
    ((binary_body([JPEG])[0], "12.0"), "a whole number"),
    ((binary_body([JPEG])[0], ""), "a whole number, got ''"),
    ((binary_body([JPEG])[0], "\u00b2"), "a whole number"),  # a digit to str.isdigit, not to int()
    ((b'{"inputs": []}', "4000"), f"{INFERENCE_HEADER} is 4000 but the body has only 14 bytes"),
    ((binary_body([JPEG])[0], "10"), "the first 10 bytes .* is not valid JSON"),
    (_with_header({"id": "x"}), "not an OIP inference request: expected an object with an 'inputs' list"),
    (_with_header({"inputs": "image"}), "'inputs' list"),
    # sizes that do not add up, either way
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": 10}}]},
                  _PREFIXED), f"add up to 10 bytes, but {len(_PREFIXED)} bytes follow"),
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": 999}}]},
                  _PREFIXED), f"add up to 999 bytes, but {len(_PREFIXED)} bytes follow"),
    # missing binary_data_size: the bytes belong to no input, or the input has no data at all
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}, _PREFIXED),
     f"add up to 0 bytes, but {len(_PREFIXED)} bytes follow"),
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}),
     "input 'image' has neither 'data' nor a binary_data_size parameter"),
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": "12"}}]}),
     "binary_data_size must be a whole number of bytes, got '12'"),
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": True}}]}),
     "binary_data_size must be a whole number of bytes, got True"),
    # BYTES elements without their length prefix (the raw file), or cut inside one
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": len(JPEG)}}]},
                  JPEG), "a BYTES element declares \\d+ bytes but only \\d+ follow; each element must be preceded"),
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": 2}}]},
                  b"\x05\x00"), "ends inside an element's 4-byte length prefix"),
    # a body of empty elements is refused before it is split into millions
    (_with_header({"inputs": [{"name": "image", "datatype": "BYTES", "parameters": {"binary_data_size": 4 << 20}}]},
                  bytes(4 << 20)), "holds more than 16 elements; send one image per request"),
])
def test_bad_binary_requests_name_the_problem_and_stay_oip(body_and_length, text):
    body, length = body_and_length
    parsed = read_oip({"body": body}, length)  # never raises: the rest of the batch must go on
    assert parsed is not None and parsed.binary and parsed.problem is not None
    with pytest.raises(PayloadError, match=text) as info:
        extract_image_bytes(parsed)
    assert info.value.reason == "bad_oip"


@pytest.mark.parametrize("request_, choice", [
    ({"body": b"jpeg"}, "auto"),
    ({"body": b"jpeg", "big_photos": b"off"}, "off"),  # a gRPC input-map entry: bytes
    ({"photo": b"jpeg", "big_photos": "Off "}, "off"),  # a multipart field: text
    ({"body": {"data": "anBlZw==", "big_photos": "off"}}, "off"),  # beside "data" in a base64 JSON body
    ({"body": b"jpeg", "big_photos": "auto"}, "auto"),
])
def test_a_request_says_what_it_wants_of_the_big_photo_mode(request_, choice):
    assert requested_big_photos(request_) == choice
    assert extract_image_bytes(request_) == b"jpeg"  # the parameter is never taken for the image


def test_an_oip_request_asks_in_its_parameters_and_a_bad_value_is_named():
    oip = read_oip({"body": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["anBlZw=="]}],
                             "parameters": {"big_photos": "off"}}})
    assert requested_big_photos(oip) == "off"
    with pytest.raises(PayloadError, match="big_photos must be one of auto, off, not 'closer'") as info:
        requested_big_photos({"body": b"jpeg", "big_photos": b"closer"})
    assert info.value.reason == "bad_parameter"
    with pytest.raises(PayloadError, match="no body"):
        extract_image_bytes({"big_photos": "off"})
