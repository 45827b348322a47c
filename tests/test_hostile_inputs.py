"""Hostile and odd uploads against a real server and through the handler: every one gets tags or a JSON 400,
never a 500, a hang or a crashed worker, and the good photos batched with them are tagged as if sent alone."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.grpc_client import GrpcTagger
from client.rest import call
from handler.tagger_handler import PhotoTaggerHandler
from phototag.decoding import ImageDecodeError, decode_image
from tests.hostile_corpus import REFUSED, TAGS, hostile_uploads
from tests.test_handler import make_context, with_requests

CORPUS = hostile_uploads()


def post(server, body, content_type):
    return call("POST", f"{server.inference_url}/predictions/tagger", "inference", server.key_file, data=body,
                headers={"Content-Type": content_type}, timeout=60)


def worker_identity(server) -> list[tuple]:
    described = call("GET", f"{server.management_url}/models/tagger", "management", server.key_file).json()
    return sorted((w["id"], w["startTime"], w.get("pid")) for v in described for w in v["workers"])


@pytest.mark.server
def test_hostile_uploads_mixed_into_a_burst_over_rest(server, sample_images):
    workers_before = worker_identity(server)
    alone = {i: post(server, img, "image/jpeg").json()["tags"] for i, img in enumerate(sample_images[:8])}
    jobs = [(name, body, ct, expected) for name, (body, ct, expected) in CORPUS.items()]
    jobs += [(f"good_{i}", sample_images[i], "image/jpeg", i) for i in alone for _ in range(2)]
    random.Random(3).shuffle(jobs)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda job: post(server, job[1], job[2]), jobs))
    for (name, _, _, expected), response in zip(jobs, responses):
        payload = response.json()  # every answer is JSON, refusals included
        if expected == REFUSED:
            assert response.status_code == 400, (name, response.status_code, response.text[:300])
            assert payload["code"] == 400 and payload["error"] and payload["reason"], name
        elif expected == TAGS:
            assert response.status_code == 200, (name, response.text[:300])
            assert payload["tags"] is not None and "time_of_day" in payload, name
        else:
            assert response.status_code == 200 and payload["tags"] == alone[expected], name
    assert worker_identity(server) == workers_before  # no worker died or restarted


@pytest.mark.server
def test_bad_inputs_inside_a_grpc_burst_fail_alone(server, sample_images):
    bad = [CORPUS[name][0] for name in ("zero_bytes", "pdf", "jpeg_truncated_mid_scan", "png_bomb_30000")]
    good = sample_images[:10]
    with GrpcTagger(server.grpc_target, server.key_file) as tagger:
        alone = [tagger.tag(img)["tags"] for img in good]
        bodies = [(True, b) for b in bad] + [(False, g) for g in good]
        random.Random(5).shuffle(bodies)
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda item: tagger.tag(item[1]), bodies))
    for (is_bad, body), answer in zip(bodies, answers):
        if is_bad:
            assert answer["code"] == 400 and answer["error"]
        else:
            assert answer["tags"] == alone[good.index(body)]


def _mutations(seed_images: list[bytes]):
    flips = st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), max_size=12)
    return st.one_of(
        st.binary(max_size=4096),
        st.tuples(st.sampled_from(seed_images), flips, st.floats(0.0, 1.0)).map(
            lambda t: _mutate(*t)),
    )


def _mutate(data: bytes, flips, keep: float) -> bytes:
    mutated = bytearray(data[: max(1, int(len(data) * keep))] if keep < 0.98 else data)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    return bytes(mutated)


FUZZ_SEEDS = [CORPUS[name][0] for name in ("jpeg_progressive", "png_palette_transparent", "gif_animated",
                                           "tiff_16bit", "webp_animated", "one_pixel")]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_mutations(FUZZ_SEEDS))
def test_fuzz_decode_only_raises_decode_errors(data):
    try:
        image = decode_image(data)
    except ImageDecodeError as exc:
        assert exc.reason and str(exc)
    else:
        assert image.mode == "RGB" and image.width > 0 and image.height > 0


@pytest.fixture(scope="module")
def handler(tiny_run):
    h = PhotoTaggerHandler()
    h.initialize(make_context(tiny_run))
    return h


def test_fuzz_handle_answers_every_request(handler, tiny_run, sample_images):
    """Random and mutated bodies (raw, JSON, multipart-like) in batches: one 200-or-400 JSON answer per request."""

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(_mutations(FUZZ_SEEDS + sample_images[:2]), st.sampled_from(["body", "data", "file"]),
                              st.booleans()), min_size=1, max_size=6))
    def run(items):
        rows = [{field: ({"data": body.hex()} if as_json else body)} for body, field, as_json in items]
        headers = [{"Content-Type": "application/json"} if as_json else {} for _, _, as_json in items]
        context = with_requests(make_context(tiny_run), headers)
        answers = handler.handle(rows, context)
        assert len(answers) == len(rows)
        for index, answer in enumerate(answers):
            payload = json.loads(answer)
            status = context.get_response_status(index)[0]
            if "error" in payload:
                assert status == 400 and payload["code"] == 400
            else:
                assert status == 200 and "tags" in payload

    run()
