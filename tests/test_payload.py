import base64

import pytest

from phototag.payload import PayloadError, extract_image_bytes

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
