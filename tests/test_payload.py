import base64

import pytest

from phototag.payload import PayloadError, extract_image_bytes, oip_request

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
    (oip([5]), "bad_oip", "must be a base64 string"),
    (oip(["###"]), "bad_base64", "OIP input 'image' is not valid base64"),
    (oip([""]), "empty", "0 bytes"),
])
def test_bad_oip_requests_name_the_problem(request_, reason, text):
    with pytest.raises(PayloadError, match=text) as info:
        extract_image_bytes(request_, "application/json")
    assert info.value.reason == reason
