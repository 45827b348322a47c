"""REST inference and management calls with the bearer token, retried once after re-reading the key file on 401."""
from __future__ import annotations

from pathlib import Path

import requests

from client.auth import DEFAULT_KEY_FILE, bearer
from phototag.payload import BIG_PHOTOS_CHOICES, BIG_PHOTOS_HEADER

DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"


class ServiceError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


def _auth_refused(response: requests.Response) -> bool:
    # TorchServe 0.12 answers a wrong or expired token with 400 InvalidKeyException, not 401.
    return response.status_code == 401 or (response.status_code == 400 and "InvalidKeyException" in response.text)


def call(method: str, url: str, kind: str, key_file: str | Path = DEFAULT_KEY_FILE, *,
         session: requests.Session | None = None, timeout: float = 120, **kwargs) -> requests.Response:
    """One authorised request; a refused key (expired or rotated) re-reads the key file and retries once."""
    send = (session or requests).request
    extra_headers = kwargs.pop("headers", {})
    response = None
    for _ in range(2):
        response = send(method, url, headers={**extra_headers, **bearer(kind, key_file)}, timeout=timeout, **kwargs)
        if not _auth_refused(response):
            break
    return response


def tag_image(data: bytes, *, model: str = "tagger", version: str | None = None,
              url: str = DEFAULT_INFERENCE_URL, key_file: str | Path = DEFAULT_KEY_FILE,
              session: requests.Session | None = None, verify: str | bool = True,
              big_photos: str = BIG_PHOTOS_CHOICES[0]) -> dict:
    """POST the image bytes to /predictions/MODEL[/VERSION] and return the tag JSON; ServiceError otherwise.
    `verify`: for an https URL, the CA bundle (or the server's own certificate) to trust. `big_photos`: "off"
    asks the server not to read this photo's objects closer (`phototag.payload.requested_big_photos`)."""
    path = f"{url}/predictions/{model}" + (f"/{version}" if version else "")
    headers = {"Content-Type": "application/octet-stream"}
    if big_photos != BIG_PHOTOS_CHOICES[0]:
        headers[BIG_PHOTOS_HEADER] = big_photos
    response = call("POST", path, "inference", key_file, session=session, data=data, verify=verify, headers=headers)
    if response.status_code != 200:
        raise ServiceError(response.status_code, response.text)
    return response.json()
